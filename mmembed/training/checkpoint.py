"""Training checkpoints: written atomically, read with safe loaders, kept to the last K.

A checkpoint ``OUT/checkpoints/step-00000100/`` holds everything a resumed run needs to continue
on the same loss curve:

- ``trainable.safetensors``: every trainable tensor (LoRA, projector, pooler, unfrozen layers);
- ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict`` (read back with ``weights_only=True``);
- ``rng.json`` + ``rng.safetensors``: the Python, NumPy and torch (CPU and CUDA) generator states of
  every process;
- ``trainer_state.json``: step, epoch, the sampler state (where the *next* batch starts) and the
  names of the trainable tensors;
- ``config.yaml`` (the resolved run configuration) and ``meta.json`` (package version, git revision,
  library versions, time);
- ``model/``: the encoder in ``save_pretrained`` format, so any checkpoint loads with ``load_encoder``;
- ``engine/``: under DeepSpeed or FSDP only, ``accelerator.save_state`` output (sharded optimizer).

The directory is staged and renamed into place (:func:`mmembed.fileio.atomic_directory`), so a
process killed while saving leaves the previous checkpoints intact and no partial one.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmembed.dependencies import package_version
from mmembed.errors import ConfigError
from mmembed.fileio import write_json
from mmembed.version import __version__

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint is incomplete or unreadable (a resume falls back to an older one)."""


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, as ``(step, path)``."""
    folder = Path(output_dir) / CHECKPOINTS
    found = []
    for path in folder.iterdir() if folder.is_dir() else []:
        m = _STEP_RE.match(path.name)
        if m and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for _, path in list_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def git_revision(start: Path | None = None) -> str | None:
    """``HEAD`` of the git checkout holding the package (``+dirty`` when it has changes), if any."""
    where = start or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_GIT: list[str | None] = []


def run_metadata() -> dict[str, Any]:
    """What produced a checkpoint: mmembed version, git revision and library versions."""
    if not _GIT:
        _GIT.append(git_revision())
    return {"mmembed_version": __version__, "git_revision": _GIT[0], "python": sys.version.split()[0],
            "torch": torch.__version__, "transformers": package_version("transformers"),
            "accelerate": package_version("accelerate"), "peft": package_version("peft"),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- RNG state


def capture_rng() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's generator states as (JSON part, tensor part)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    json_part = {"python": [py_state[0], list(py_state[1]), py_state[2]],
                 "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return json_part, tensors


def restore_rng(json_part: Mapping, tensors: Mapping[str, torch.Tensor]) -> None:
    py = json_part["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write_rng(directory: Path, states: list[tuple[dict, dict[str, torch.Tensor]]]) -> None:
    """Every rank's RNG state (gathered on the main process) into ``rng.json`` / ``rng.safetensors``."""
    from safetensors.torch import save_file

    write_json(directory / "rng.json", {"world_size": len(states), "ranks": [s[0] for s in states]})
    save_file({f"rank{r}.{k}": v.contiguous() for r, s in enumerate(states) for k, v in s[1].items()},
              str(directory / "rng.safetensors"))


# ----------------------------------------------------------------------------- tensors and states


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def save_state_dict(path: Path, state: Mapping) -> None:
    """An optimizer or scheduler ``state_dict`` (tensors and plain values only)."""
    torch.save(dict(state), path)


def load_state_dict(path: Path) -> dict:
    """Read what :func:`save_state_dict` wrote without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise ConfigError(f"{path}: cannot read the saved training state: {e}") from None


def read_trainer_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a training checkpoint (no {STATE_FILE})")
    state = _read_json(path)
    step, next_batch = state.get("step"), state.get("next_batch")
    if not isinstance(step, int) or not isinstance(state.get("sampler"), dict) or not (
            isinstance(next_batch, list) and len(next_batch) == 2 and all(isinstance(v, int) for v in next_batch)):
        raise CheckpointError(f"{path}: incomplete training state (needs step, next_batch and sampler)")
    return state


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt): {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except Exception as e:  # safetensors raises its own error type (and OSError) for truncated files
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt): {e}") from None


def _read_config(directory: Path) -> dict:
    """The run configuration saved in a checkpoint: required, so that a resume can be checked against it."""
    import yaml

    path = directory / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, so resuming could not check that the run's configuration "
                              "(learning rate, data, model) is the one this checkpoint was trained with")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt): {e}") from None
    if not isinstance(data, dict) or "optim" not in data:
        raise CheckpointError(f"{path}: not a complete run configuration")
    return data


def _read_rng(directory: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]] | None:
    meta = _read_json(directory / "rng.json")
    ranks = meta.get("ranks")
    if not isinstance(meta.get("world_size"), int) or not isinstance(ranks, list) or len(ranks) != meta["world_size"]:
        raise CheckpointError(f"{directory / 'rng.json'}: incomplete RNG state")
    tensors = _read_safetensors(directory / "rng.safetensors")
    if rank >= meta["world_size"]:
        return None
    prefix = f"rank{rank}."
    mine = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if "torch_cpu" not in mine or not {"python", "numpy"} <= set(ranks[rank]):
        raise CheckpointError(f"{directory}: no complete RNG state for process {rank}")
    return ranks[rank], mine


@dataclass
class LoadedCheckpoint:
    """Everything a resume restores, read (and checked) before any of it is applied."""

    path: Path
    state: dict
    config: dict
    scheduler: dict
    rng: tuple[dict, dict[str, torch.Tensor]] | None
    #: ``None`` under DeepSpeed / FSDP, whose engine state lives in ``engine/``.
    trainable: dict[str, torch.Tensor] | None = None
    optimizer: dict | None = None


def read_checkpoint(directory: str | Path, rank: int = 0, sharded: bool = False) -> LoadedCheckpoint:
    """Read every file of a checkpoint; :class:`CheckpointError` names the first one that is damaged."""
    path = Path(directory)
    state = read_trainer_state(path)
    config = _read_config(path)
    loaded = LoadedCheckpoint(path, state, config, _load_state(path / "scheduler.pt"), _read_rng(path, rank))
    if sharded:
        if not (path / "engine").is_dir():
            raise CheckpointError(f"{path / 'engine'}: missing (the DeepSpeed / FSDP engine state)")
    else:
        loaded.trainable = _read_safetensors(path / "trainable.safetensors")
        loaded.optimizer = _load_state(path / "optimizer.pt")
    return loaded


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_state_dict(path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def newest_readable_checkpoint(output_dir: str | Path, rank: int = 0, sharded: bool = False) -> LoadedCheckpoint | None:
    """The newest checkpoint whose files all read back; damaged newer ones are skipped with a warning.

    A run killed while saving leaves no partial checkpoint (they are staged), but a disk that filled
    up, a copy cut short or a hand edit can damage one: resuming from the previous complete
    checkpoint loses a few steps, while failing would lose the run. :class:`CheckpointError` when
    checkpoints exist and none is readable.
    """
    found = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(found):
        try:
            return read_checkpoint(path, rank, sharded)
        except CheckpointError as e:
            problems.append(str(e))
            logger.warning("skipping damaged checkpoint: %s; falling back to the previous one", e)
    if problems:
        raise CheckpointError(f"{output_dir}: no complete checkpoint to resume from ({'; '.join(problems)}); "
                              "delete the checkpoints directory to start again")
    return None


def config_differences(saved: Mapping, current: Mapping, sections: tuple[str, ...]) -> list[str]:
    """Dotted keys under ``sections`` whose values differ between two resolved configurations."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            out.append(prefix)

    for section in sections:
        walk(saved.get(section), current.get(section), section)
    return out
