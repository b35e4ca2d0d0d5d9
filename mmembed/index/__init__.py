"""Vector indexes: the :class:`VectorIndex` protocol, its FAISS and Milvus implementations.

``load_index(directory)`` opens any saved index by the engine its manifest names, so callers
need not know which engine wrote it. ``build`` fills indexes from precomputed embeddings,
``memory`` estimates a build before it starts, ``ondisk`` keeps IVF lists on disk, ``integrity``
checks the files around a saved index.
"""

from __future__ import annotations

import os

from mmembed.errors import IndexMismatchError
from mmembed.index.base import FORMAT_VERSION, IndexManifest, SearchResult, VectorIndex, read_manifest
from mmembed.index.faiss_index import FaissIndex

__all__ = ["FORMAT_VERSION", "FaissIndex", "IndexManifest", "MilvusIndex", "SearchResult", "VectorIndex",
           "load_index", "read_manifest"]


def __getattr__(name: str) -> type:
    # MilvusIndex on first use only: pymilvus is an optional extra and slow to import
    if name == "MilvusIndex":
        from mmembed.index.milvus_index import MilvusIndex

        return MilvusIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
