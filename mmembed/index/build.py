"""Indexes made by name and filled from vectors: what ``--index`` and ``index build --backend`` choose.

``search_index(kind, ...)`` is the index evaluation and mining search through: ``exact`` (streamed,
:mod:`mmembed.index.exact`), ``faiss`` (exact FAISS in memory), ``faiss-ivf`` / ``faiss-hnsw``
(approximate, sized by the pool), ``milvus`` (Milvus Lite), or a saved index directory.
``index_from_embeddings`` streams an embeddings store chunk by chunk into an engine: nothing is
re-encoded, and memory holds one chunk plus the index (plus a training sample for IVF/PQ), which
the estimate checks before the first chunk is read. ``fill_index`` does the same from an array.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.embeddings.store import EmbeddingSet
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.index.base import VectorIndex, ids_fingerprint
from mmembed.index.faiss_index import FaissIndex
from mmembed.index.memory import check_fits, estimate

log = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus", "exact")
#: What ``--index`` names for evaluation and mining (or a saved index directory).
SEARCH_INDEXES = ("exact", "faiss", "faiss-ivf", "faiss-hnsw", "milvus")
#: Engines whose results are exact (no recall to measure).
EXACT_INDEXES = ("exact", "faiss")


def make_index(backend: str, dim: int, *, encoder_id: str | None, factory: str = "Flat", dtype: str = "float32",
               search_params: Mapping[str, Any] | None = None, uri: str | None = None,
               collection: str | None = None, milvus_index: str | None = None) -> VectorIndex:
    """An empty index of ``backend`` (FAISS takes factory/dtype; Milvus takes uri/collection/index type)."""
    if backend == "faiss":
        return FaissIndex(dim, factory, dtype=dtype, encoder_id=encoder_id, search_params=search_params)
    if backend == "milvus":
        from mmembed.index.milvus_index import MilvusIndex

        return MilvusIndex(dim, uri=uri, collection=collection, index_type=milvus_index,
                           search_params=search_params, encoder_id=encoder_id)
    if backend == "exact":
        raise ConfigError("an exact streamed index is made over existing vectors: ExactIndex.from_embeddings")
    raise ConfigError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_memory(backend: str, factory: str, dtype: str, dim: int, count: int, *, train_rows: int | None = None,
                 chunk_rows: int = 65_536, force: bool = False, on_disk: bool = False) -> None:
    """Estimate a FAISS build's memory and refuse one that cannot fit (Milvus holds vectors server-side)."""
    if backend != "faiss":
        return
    check_fits(estimate(factory, dtype, dim, count, chunk_rows=chunk_rows, train_rows=train_rows, on_disk=on_disk),
               force=force)


def index_from_embeddings(embeddings: EmbeddingSet, *, backend: str = "faiss", factory: str = "Flat",
                          dtype: str = "float32", search_params: Mapping[str, Any] | None = None,
                          uri: str | None = None, collection: str | None = None, milvus_index: str | None = None,
                          train_rows: int | None = None, force: bool = False, on_disk: Path | None = None,
                          show_progress: bool = False) -> VectorIndex:
    """Fill a new index with every vector of ``embeddings``, chunk by chunk, in pool order.

    ``on_disk``: a work directory (on the output's file system) where an IVF index keeps its
    inverted lists instead of memory; the saved index links them in.
    """
    if on_disk is not None and backend != "faiss":
        raise ConfigError("on-disk inverted lists are a FAISS option; Milvus keeps its own storage")
    if backend == "exact":
        from mmembed.index.exact import ExactIndex

        return ExactIndex.from_embeddings(embeddings)
    check_memory(backend, factory, dtype, embeddings.dim, len(embeddings), train_rows=train_rows,
                 chunk_rows=embeddings.identity.chunk_size, force=force, on_disk=on_disk is not None)
    index = make_index(backend, embeddings.dim, encoder_id=embeddings.encoder_id, factory=factory, dtype=dtype,
                       search_params=search_params, uri=uri, collection=collection, milvus_index=milvus_index)
    if isinstance(index, FaissIndex) and not index.is_trained:
        rows = min(len(embeddings), train_rows or index.train_sample_size)
        log.info("training on a seeded sample of %d of the %d vectors", rows, len(embeddings))
        index.train(embeddings.sample(rows))
    chunks = embeddings.chunks()
    if show_progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=embeddings.identity.num_chunks, desc="indexing", unit="chunk")
    if on_disk is not None:
        from mmembed.index.ondisk import fill_on_disk

        assert isinstance(index, FaissIndex)
        fill_on_disk(index, ((ids, vectors) for ids, vectors, _ in chunks), on_disk)
        return index
    for ids, vectors, _ in chunks:
        index.add(ids, vectors)
    return index


def fill_index(index: VectorIndex, ids: Sequence[str], vectors: np.ndarray, *, train_rows: int | None = None) -> None:
    """Add ``vectors`` to an empty ``index``; an untrained FAISS index first trains on a seeded sample."""
    if isinstance(index, FaissIndex) and not index.is_trained:
        rows = min(len(ids), train_rows or index.train_sample_size)
        sample = np.sort(np.random.default_rng(0).choice(len(ids), rows, replace=False))
        index.train(vectors[sample])
    index.add(list(ids), vectors)


def ann_factory(kind: str, count: int) -> tuple[str, dict[str, float]]:
    """(FAISS factory, search parameters) of an approximate ``kind`` sized for ``count`` vectors.

    IVF: about 4 sqrt(n) lists (at least 39 training rows each), probing one in eight; HNSW: 32
    links, efSearch 64. Recall is measured, never assumed (see the evaluation's ``index_recall``).
    """
    if kind == "faiss-ivf":
        nlist = max(1, min(65_536, int(4 * math.sqrt(count)), count // 39 or 1))
        return f"IVF{nlist},Flat", {"nprobe": max(1, nlist // 8)}
    if kind == "faiss-hnsw":
        return "HNSW32", {"efSearch": 64}
    raise ConfigError(f"{kind!r} is not an approximate FAISS index; choose faiss-ivf or faiss-hnsw")


def search_index(kind: str, *, ids: Sequence[str] | None = None, vectors: np.ndarray | None = None,
                 embeddings: EmbeddingSet | None = None, encoder_id: str | None = None,
                 memory_limit: int | str | None = None) -> VectorIndex:
    """The index evaluation and mining search: ``kind`` (see :data:`SEARCH_INDEXES`) or a saved index directory.

    The vectors come from ``embeddings`` (a store, streamed) or ``ids`` + ``vectors`` (in memory).
    A saved index must hold exactly these ids in this order (checked by fingerprint).
    """
    if embeddings is None and (ids is None or vectors is None):
        raise ConfigError("search_index needs embeddings or ids and vectors")
    count = len(embeddings) if embeddings is not None else len(ids)  # type: ignore[arg-type]
    dim = embeddings.dim if embeddings is not None else int(vectors.shape[1])  # type: ignore[union-attr]
    if kind not in SEARCH_INDEXES:
        return _saved_index(Path(kind), embeddings, ids, dim, encoder_id)
    if kind == "exact":
        from mmembed.index.exact import ExactIndex

        if embeddings is not None:
            return ExactIndex.from_embeddings(embeddings, memory_limit=memory_limit)
        return ExactIndex.from_vectors(list(ids), vectors, encoder_id=encoder_id, memory_limit=memory_limit)
    if kind == "faiss" or kind == "milvus":
        factory, params = "Flat", {}
    else:
        factory, params = ann_factory(kind, count)
    backend = "milvus" if kind == "milvus" else "faiss"
    if embeddings is not None:
        return index_from_embeddings(embeddings, backend=backend, factory=factory, search_params=params)
    index = make_index(backend, dim, encoder_id=encoder_id, factory=factory, search_params=params)
    check_memory(backend, factory, "float32", dim, count)
    fill_index(index, ids, vectors)  # type: ignore[arg-type]
    log.info("built a %s index over %d vectors", kind, count)
    return index


def _saved_index(path: Path, embeddings: EmbeddingSet | None, ids: Sequence[str] | None, dim: int,
                 encoder_id: str | None) -> VectorIndex:
    """A saved index (or the ``vectors/`` of a retrieval directory) that must hold exactly the pool's ids."""
    from mmembed.index import load_index

    if not path.is_dir():
        raise ConfigError(f"--index {str(path)!r} is neither a saved index directory nor one of "
                          f"{', '.join(SEARCH_INDEXES)}")
    directory = path / "vectors" if (path / "vectors" / "manifest.json").is_file() else path
    index = load_index(directory, expected_dim=dim, expected_encoder_id=encoder_id)
    expected = embeddings.identity.ids_sha256 if embeddings is not None else ids_fingerprint(ids or [])
    held = getattr(index, "ids", None)
    if held is None or ids_fingerprint(held()) != expected:
        raise IndexMismatchError(f"{directory}: this index does not hold the pool's candidates in the pool's order; "
                                 "build it from this pool ('mmembed index build')")
    return index
