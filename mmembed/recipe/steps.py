"""A recipe's steps: training and mining runs, each skipped when done, and what each one cost.

- a training step is skipped when ``<step>/final`` holds a model trained with the same resolved
  configuration, resumed from its last checkpoint when it was interrupted, and refused when its
  directory holds a run of another configuration;
- a mining step is skipped when its ``mining.json`` records the same settings and encoder (an
  encoder retrained since then means mining again), and resumes its finished chunks otherwise.

Every step's wall-clock and CPU time (and a training step's optimizer steps) go to
``OUTPUT_DIR/timings.json`` (:class:`Timings`), which the report reads.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mmembed.config import load_config
from mmembed.fileio import write_json
from mmembed.mining.jobs import MANIFEST as MINING_MANIFEST
from mmembed.recipe.config import RecipeConfig, Step

logger = logging.getLogger(__name__)

FINAL = "final"
TIMINGS_FILE = "timings.json"


def resolve_model(recipe: RecipeConfig, name: str) -> str:
    """A training step's final model directory, or ``name`` itself (a directory or built-in name)."""
    if any(s.name == name and s.train is not None for s in recipe.steps):
        return str(Path(recipe.output_dir) / name / FINAL)
    return name


def step_train_config(recipe: RecipeConfig, step: Step):
    """A training step's :class:`~mmembed.training.config.TrainConfig` (checked), writing under the recipe."""
    from mmembed.training.config import load_train_config

    assert step.train is not None
    return load_train_config(step.train, [*step.set, f"output_dir={Path(recipe.output_dir) / step.name}"])


def mining_config(step: Step):
    """A mining step's :class:`~mmembed.mining.MiningConfig` (checked)."""
    from mmembed.mining import MiningConfig

    assert step.mine is not None
    return load_config(MiningConfig, None, None, base=dict(step.mine.config))


def train_unless_done(config, label: str) -> str:
    """Train ``config`` unless its output directory already holds a model of that configuration.

    Returns ``skipped``, ``resumed`` or ``ran``; a directory holding a run of another configuration
    is refused (naming the sections that differ) rather than mixed.
    """
    import torch

    from mmembed.config import to_dict
    from mmembed.errors import ConfigError
    from mmembed.training import checkpoint as ckpt
    from mmembed.training.config import TrainConfig
    from mmembed.training.saving import TRAIN_CONFIG_FILE
    from mmembed.training.trainer import Trainer

    out = Path(config.output_dir)
    final = out / FINAL / TRAIN_CONFIG_FILE
    if final.is_file():
        done, wanted = to_dict(load_config(TrainConfig, final)), to_dict(config)
        if done == wanted:
            return "skipped"
        changed = sorted(k for k in set(done) | set(wanted) if done.get(k) != wanted.get(k))
        raise ConfigError(f"recipe step {label}: {out} holds a model trained with another configuration "
                          f"(sections {', '.join(changed)} differ); delete {out} to train it again")
    resume = bool(ckpt.list_checkpoints(out))
    threads = torch.get_num_threads()
    try:
        Trainer(config).train(resume=resume)
    finally:  # train.num_threads is for training; mining and evaluation get the machine back
        torch.set_num_threads(threads)
    return "resumed" if resume else "ran"


def run_mine_step(recipe: RecipeConfig, step: Step, show_progress: bool) -> str:
    """Mine with the step's encoder; ``ran`` or ``skipped`` (cross-fitting: :mod:`mmembed.recipe.cross_fit`)."""
    from mmembed.encoders.registry import load_encoder
    from mmembed.mining import mine_beir, mine_mbeir, stats_table
    from mmembed.mining.jobs import type1_yield_note

    assert step.mine is not None
    config = mining_config(step)
    encoder = load_encoder(resolve_model(recipe, step.mine.encoder))
    mine = mine_beir if (Path(step.mine.data) / "corpus.jsonl").is_file() else mine_mbeir
    target = Path(recipe.output_dir) / step.name
    mined = mine(encoder, step.mine.data, target, config, show_progress=show_progress)
    if not mined.complete:  # launched in several processes: each mined its shard; wait for the last one
        wait_for(target / MINING_MANIFEST, f"the other processes' mining shards of step {step.name}")
        return "ran"
    logger.info("mining statistics of %s:\n%s", step.name, stats_table(mined))
    if note := type1_yield_note(mined.total(), asdict(config)):
        logger.warning("mining step %s: %s", step.name, note)
    return "skipped" if mined.reused else "ran"


def wait_for(path: Path, what: str, poll_s: float = 10.0) -> None:
    logger.info("waiting for %s (%s)", what, path)
    while not path.is_file():
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- timings


@dataclass
class StepTiming:
    """What one step (or one model's evaluation) cost when it last ran."""

    wall_s: float
    cpu_s: float
    #: Optimizer steps of a training step (``None`` for the others).
    steps: int | None = None

    @property
    def per_step_s(self) -> float | None:
        return self.wall_s / self.steps if self.steps else None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Timings:
    """``OUTPUT_DIR/timings.json``: each step's latest run; a skipped step keeps the run that made its output."""

    def __init__(self, out: Path):
        self.path = Path(out) / TIMINGS_FILE
        self.entries: dict[str, StepTiming] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                self.entries = {k: StepTiming(**v) for k, v in saved.get("steps", {}).items()}
            except (OSError, ValueError, TypeError):
                logger.warning("%s is unreadable: the step timings start afresh", self.path)

    def measure(self, name: str):
        """A context manager that records ``name``'s wall and CPU time (call ``.steps = N`` on it for training)."""
        return _Measure(self, name)

    def save(self) -> None:
        write_json(self.path, {"steps": {k: asdict(v) for k, v in self.entries.items()},
                               "peak_rss_mb": round(peak_rss_mb(), 1)})


class _Measure:
    def __init__(self, timings: Timings, name: str):
        self.timings, self.name, self.steps, self.skipped = timings, name, None, False

    def __enter__(self) -> _Measure:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None and not self.skipped:
            self.timings.entries[self.name] = StepTiming(round(time.perf_counter() - self.wall, 2),
                                                         round(time.process_time() - self.cpu, 2), self.steps)
            self.timings.save()
