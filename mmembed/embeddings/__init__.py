"""Embeddings on disk and in memory: the layer below every index.

* :mod:`.store`: precomputed embeddings as chunk files (``EmbeddingSet`` reads one, chunk by chunk).
* :mod:`.encode`: sharded, resumable encoding of a pool into a store (``encode_pool``).
* :mod:`.queries`: a split's queries encoded with the evaluation's seeded instructions.
* :mod:`.pool_cache`: pools embedded in memory (``EmbeddedPool``), cached on disk by content.

``load_embedded_pool`` gives the :class:`~mmembed.embeddings.pool_cache.EmbeddedPool` of a pool
file from a store, checked against that pool and encoder. Names are imported on first use, so
that the index layer can read stores without importing the encoders.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmembed.embeddings.pool_cache import EmbeddedPool

__all__ = ["DEFAULT_CHUNK_SIZE", "EmbeddingSet", "EncodeResult", "encode_pool", "ids_fingerprint",
           "load_embedded_pool", "parse_shard"]

_WHERE = {"DEFAULT_CHUNK_SIZE": "encode", "EncodeResult": "encode", "encode_pool": "encode", "parse_shard": "encode",
          "EmbeddingSet": "store", "ids_fingerprint": "store"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_embedded_pool(directory: str | os.PathLike, pool_path: str | os.PathLike,
                       encoder_id: str | None = None) -> EmbeddedPool:
    """The pool at ``pool_path`` with the precomputed vectors of ``directory`` (float32, in pool order).

    Refuses embeddings of another pool file (by content) or another encoder.
    """
    from mmembed.embeddings.pool_cache import EmbeddedPool
    from mmembed.embeddings.store import EmbeddingSet
    from mmembed.fileio import file_sha256

    embeddings = EmbeddingSet.open(Path(directory))
    embeddings.check(encoder_id=encoder_id, pool_sha256=file_sha256(pool_path))
    ids, vectors, modalities = embeddings.read_all()
    return EmbeddedPool(ids, modalities, vectors)
