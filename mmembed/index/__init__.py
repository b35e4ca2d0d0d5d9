"""Vector indexes: the :class:`VectorIndex` protocol and its FAISS implementation.

``load_index(directory)`` opens any saved index by the engine its manifest names, so callers
need not know which engine wrote it.
"""

from __future__ import annotations

import os

from mmembed.errors import IndexMismatchError
from mmembed.index.base import FORMAT_VERSION, IndexManifest, SearchResult, VectorIndex, read_manifest
from mmembed.index.faiss_index import FaissIndex

__all__ = ["FORMAT_VERSION", "FaissIndex", "IndexManifest", "SearchResult", "VectorIndex", "load_index",
           "read_manifest"]

_ENGINES: dict[str, type] = {"faiss": FaissIndex}


def _engine(name: str) -> type | None:
    """The index class of an engine; Milvus is imported only when asked for (pymilvus is optional)."""
    if name == "milvus":
        from mmembed.index.milvus_index import MilvusIndex

        return MilvusIndex
    return _ENGINES.get(name)


def load_index(directory: str | os.PathLike, *, expected_dim: int | None = None,
               expected_encoder_id: str | None = None) -> VectorIndex:
    """Load a saved index with the engine its manifest names, checking dimension and encoder."""
    engine = read_manifest(directory).engine
    cls = _engine(engine)
    if cls is None:
        raise IndexMismatchError(
            f"{directory}: index engine {engine!r} is not available; known engines: faiss, milvus"
        )
    return cls.load(directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
