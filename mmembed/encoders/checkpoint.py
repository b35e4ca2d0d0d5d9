"""An mmembed encoder checkpoint: a directory holding ``config.json`` and ``model.safetensors``.

``config.json`` holds ``encoder_type``, ``format_version`` and the encoder's settings, flat; the
directory is written atomically and read with safe APIs only. Loading checks the type: a
checkpoint of one encoder type is refused by another class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mmembed.errors import ModelError
from mmembed.fileio import atomic_directory, write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def save_checkpoint(directory: str | Path, encoder_type: str, config: Mapping[str, Any],
                    tensors: Mapping[str, torch.Tensor], *, extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (the old directory is replaced).

    ``config`` holds the encoder's settings (JSON values); ``encoder_type`` and ``format_version``
    are added. ``extra(staging_dir)`` may write more files into the same atomic directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    full = {"encoder_type": encoder_type, "format_version": FORMAT_VERSION, **config}
    with atomic_directory(directory) as staging:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(staging / WEIGHTS_FILE), metadata={"encoder_type": encoder_type})
        write_json(staging / CONFIG_FILE, full)
        if extra is not None:
            extra(staging)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an mmembed checkpoint; :class:`ModelError` naming what is wrong."""
    from mmembed.encoders.folders import read_folder_config

    config = read_folder_config(directory)
    path = Path(directory) / CONFIG_FILE
    if not isinstance(config.get("encoder_type"), str):
        raise ModelError(f"{path}: missing the 'encoder_type' key that says which encoder wrote it")
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version!r} is newer than this mmembed reads ({FORMAT_VERSION})")
    return config


def load_checkpoint(directory: str | Path, expected_type: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and tensors of a checkpoint written by ``expected_type``; refuses any other type."""
    config = read_config(directory)
    if config["encoder_type"] != expected_type:
        raise ModelError(f"{str(directory)!r} holds a {config['encoder_type']!r} encoder, "
                         f"which cannot be loaded as a {expected_type!r} encoder; use load_encoder() "
                         "to pick the class from the checkpoint")
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        return config, {}
    from safetensors.torch import load_file

    try:
        return config, load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise ModelError(f"{weights}: unreadable weights: {e}") from None


def load_state_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module``; any missing or unexpected key is a :class:`ModelError`."""
    try:
        result = module.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"{what}: weights do not fit the model: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{what}: weights do not fit the model (missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]})")
