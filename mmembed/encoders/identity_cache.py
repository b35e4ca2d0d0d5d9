"""A cache of encoder ids, so that loading a saved model does not hash every weight again.

A towers model's id digests all its weights after loading (about 90 MB for a model whose BERT
was trained: 0.2-0.3 s of a cold ``mmembed search``). That id is a function of what was loaded —
the checkpoint's tensors and settings, the base packages, torch's version (low-rank updates are
merged by its arithmetic) — so it is kept under :func:`~mmembed.fileio.user_cache_dir`, keyed by a
digest of exactly those inputs (a few MB), and read back on the next load. Nothing shipped
changes; a missing, unreadable or malformed entry only means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmembed.fileio import atomic_open, user_cache_dir

logger = logging.getLogger(__name__)

#: Bumped whenever what an encoder id digests changes: old entries then no longer match.
ID_SCHEME = 1


def identity_key(encoder_type: str, inputs: Any, tensors: Mapping[str, torch.Tensor]) -> str:
    """Digest of everything an id is computed from: ``inputs`` (JSON: settings, packages, dtype)
    and the loaded tensors, byte for byte."""
    digest = hashlib.sha256(json.dumps([ID_SCHEME, encoder_type, torch.__version__, inputs], sort_keys=True,
                                       default=str).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-d views fail
    return digest.hexdigest()


def _path(key: str) -> Path:
    return user_cache_dir() / "encoder-ids" / f"{key}.txt"


def cached_identity(key: str, encoder_type: str) -> str | None:
    try:
        text = _path(key).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if re.fullmatch(rf"{re.escape(encoder_type)}:[0-9a-f]{{16}}", text) else None


def remember_identity(key: str, identity: str) -> None:
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as out:
            out.write(identity + "\n")
    except OSError as e:  # a read-only cache only costs the hashing next time
        logger.debug("cannot cache the encoder id in %s: %s", path, e)
