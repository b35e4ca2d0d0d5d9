"""Precomputed embeddings: sharded, resumable encoding of a pool, and reading it back.

``encode_pool`` writes an embeddings directory (chunks of ids + vectors and a manifest);
``EmbeddingSet.open`` reads one; ``load_embedded_pool`` gives the evaluation's
:class:`~mmembed.eval.pool_cache.EmbeddedPool` of a pool file from one, checked against that
pool and encoder, so evaluation and mining can use embeddings computed elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmembed.embeddings.encode import DEFAULT_CHUNK_SIZE, EncodeResult, encode_pool, parse_shard
from mmembed.embeddings.store import EmbeddingSet
from mmembed.eval.pool_cache import EmbeddedPool, file_sha256
from mmembed.index.base import ids_fingerprint

__all__ = ["DEFAULT_CHUNK_SIZE", "EmbeddingSet", "EncodeResult", "encode_pool", "ids_fingerprint",
           "load_embedded_pool", "parse_shard"]


def load_embedded_pool(directory: str | os.PathLike, pool_path: str | os.PathLike,
                       encoder_id: str | None = None) -> EmbeddedPool:
    """The pool at ``pool_path`` with the precomputed vectors of ``directory`` (float32, in pool order).

    Refuses embeddings of another pool file (by content) or another encoder.
    """
    embeddings = EmbeddingSet.open(Path(directory))
    embeddings.check(encoder_id=encoder_id, pool_sha256=file_sha256(pool_path))
    ids, vectors, modalities = embeddings.read_all()
    return EmbeddedPool(ids, modalities, vectors)
