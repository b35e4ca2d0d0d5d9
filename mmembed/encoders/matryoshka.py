"""The dimensions a model was trained to be truncated to (Matryoshka), and truncation itself.

A model trained with ``train.matryoshka_dims`` records them in ``matryoshka.json`` in its folder
(``{"dims": [...], "weights": [...]}``); :func:`mmembed.encoders.registry.load_encoder` attaches
them to the encoder it loads as ``matryoshka_dims``. ``dimensions=`` (in ``encode_queries``,
``encode_candidates`` and the service's ``/v1/embeddings``) accepts the full dimension or one
of those, and refuses any other with the list: the first ``d`` coordinates of a model not trained
for it are a much worse embedding, and that should not happen silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, ModelError
from mmembed.fileio import write_json

log = logging.getLogger(__name__)

MATRYOSHKA_FILE = "matryoshka.json"


def write_trained_dims(directory: str | os.PathLike, dims: Sequence[int], weights: Sequence[float] | None) -> None:
    write_json(Path(directory) / MATRYOSHKA_FILE,
               {"dims": [int(d) for d in dims], "weights": None if weights is None else [float(w) for w in weights]})


def read_trained_dims(directory: str | os.PathLike) -> tuple[int, ...]:
    """The dimensions recorded in a model folder (empty when it was not trained for truncation)."""
    path = Path(directory) / MATRYOSHKA_FILE
    if not path.is_file():
        return ()
    try:
        dims = json.loads(path.read_text(encoding="utf-8"))["dims"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: unreadable Matryoshka record ({e})") from None
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ModelError(f"{path}: field 'dims' must be a list of positive integers, got {dims!r}")
    return tuple(dims)


def attach_trained_dims(encoder: Any, directory: str | os.PathLike) -> Any:
    """Give ``encoder`` the ``matryoshka_dims`` recorded in its folder (when there are any)."""
    dims = read_trained_dims(directory)
    if dims:
        encoder.matryoshka_dims = dims
    return encoder


def trained_dims(encoder: Any) -> tuple[int, ...]:
    """Every dimension ``encoder``'s embeddings may be truncated to, ascending (the full one included)."""
    return tuple(sorted({*getattr(encoder, "matryoshka_dims", ()), int(encoder.dim)}))


def check_dimensions(encoder: Any, dimensions: int | None) -> int | None:
    """``dimensions`` when the encoder was trained for it (``None`` or the full dimension: no truncation)."""
    if dimensions is None or dimensions == encoder.dim:
        return None
    allowed = trained_dims(encoder)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions not in allowed:
        how = ("it was trained (Matryoshka) for " + ", ".join(map(str, allowed))) if len(allowed) > 1 else \
            f"it was not trained for truncation (Matryoshka), so only its full {encoder.dim}"
        raise ConfigError(f"dimensions={dimensions!r} is not available for this model: {how}")
    return dimensions


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` coordinates of each row, L2-renormalised (``None``: unchanged)."""
    if dimensions is None:
        return vectors
    head = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[:, :dimensions])
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.where(norms > 0, norms, 1.0)


class TruncatedEncoder:
    """An encoder's embeddings cut to their first ``dim`` coordinates and renormalised (any dimension:
    evaluation scores untrained ones too, to compare); its ``encoder_id`` says the dimension."""

    def __init__(self, encoder: Any, dim: int):
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= encoder.dim:
            raise ConfigError(f"dims: {dim!r} must be an integer between 1 and the model's dimension {encoder.dim}")
        self.inner = encoder
        self.dim = dim
        self.encoder_id = encoder.encoder_id if dim == encoder.dim else f"{encoder.encoder_id}@dim{dim}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return truncate(self.inner.encode_queries(*args, **kwargs), self._cut)

    def encode_candidates(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return truncate(self.inner.encode_candidates(*args, **kwargs), self._cut)

    @property
    def _cut(self) -> int | None:
        return None if self.dim == self.inner.dim else self.dim
