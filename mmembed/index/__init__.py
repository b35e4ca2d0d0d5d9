"""Vector indexes: the one :class:`VectorIndex` protocol every caller searches through, and its engines.

The protocol (:mod:`.base`)
    ``dim``, ``len()``, ``add(ids, vectors)``, ``search(queries, k) -> SearchResult(ids, scores)``,
    ``save(directory)``, ``load(directory, expected_dim=, expected_encoder_id=)``. Ids are unique
    strings (checked by :func:`~mmembed.index.base.check_new_ids` in every engine); vectors and
    queries are L2-normalised by the engine, so scores are cosine similarities. Results are rows of
    ``min(k, len(index))`` columns, best first; a slot an approximate engine cannot fill holds id
    ``None`` and score ``-inf``.

The engines
    ``exact`` (:class:`~mmembed.index.exact.ExactIndex`): exact top-k streamed by blocks from an
    ``mmembed encode`` store or an array, under a memory limit, with mmembed's tie rule (score, then
    id descending); read-only. ``faiss`` (:class:`FaissIndex`): any FAISS factory (Flat, IVF, PQ,
    HNSW), in memory or with IVF lists on disk. ``milvus`` (:class:`MilvusIndex`): Milvus Lite or a
    server.

Who uses it
    Evaluation (:mod:`mmembed.eval.mbeir_runner`), mining (:mod:`mmembed.mining.miner`), the
    :class:`~mmembed.retrieval.Retriever` (and through it ``mmembed search`` and the service) and
    ``mmembed index build``. They choose an engine by name with :func:`mmembed.index.build.search_index`
    (the ``--index`` option / ``index`` config key) or open a saved one with :func:`load_index`.

Candidate subsets
    :meth:`ExactIndex.search_requests <mmembed.index.exact.ExactIndex.search_requests>` takes
    :class:`~mmembed.index.topk.Request` objects: query rows, depth and an optional boolean mask of
    the candidate rows a request may return (a task's local pool). That mask is the hook for
    metadata filters: a filter resolves to a mask over the index's rows, and the exact engine
    honours it without a separate index.

Layers
    ``index`` sits above :mod:`mmembed.embeddings` (the stores it reads) and below evaluation,
    mining and retrieval; nothing here imports them. ``build`` fills indexes from stores,
    ``directory`` writes and reads retrieval directories, ``memory`` estimates a FAISS build,
    ``ondisk`` keeps IVF lists on disk, ``integrity`` checks the files around a saved index.
"""

from __future__ import annotations

import os

from mmembed.errors import IndexMismatchError
from mmembed.index.base import FORMAT_VERSION, IndexManifest, SearchResult, VectorIndex, read_manifest
from mmembed.index.faiss_index import FaissIndex

__all__ = ["ENGINES", "FORMAT_VERSION", "ExactIndex", "FaissIndex", "IndexManifest", "MilvusIndex", "SearchResult",
           "VectorIndex", "load_index", "read_manifest"]

#: Engines a saved index may name in its manifest.
ENGINES = ("faiss", "milvus", "exact", "rescore")


def __getattr__(name: str) -> type:
    # on first use only: pymilvus is an optional extra and slow to import
    if name == "MilvusIndex":
        from mmembed.index.milvus_index import MilvusIndex

        return MilvusIndex
    if name == "ExactIndex":
        from mmembed.index.exact import ExactIndex

        return ExactIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _engine(name: str) -> type | None:
    """The index class of an engine; Milvus is imported only when asked for (pymilvus is optional)."""
    if name in ("milvus", "exact"):
        return __getattr__({"milvus": "MilvusIndex", "exact": "ExactIndex"}[name])
    if name == "rescore":  # a short first pass rescored with full vectors (mmembed.index.rescore)
        from mmembed.index.rescore import RescoredIndex

        return RescoredIndex
    return FaissIndex if name == "faiss" else None


def load_index(directory: str | os.PathLike, *, expected_dim: int | None = None,
               expected_encoder_id: str | None = None) -> VectorIndex:
    """Load a saved index with the engine its manifest names, checking dimension and encoder."""
    engine = read_manifest(directory).engine
    cls = _engine(engine)
    if cls is None:
        raise IndexMismatchError(
            f"{directory}: index engine {engine!r} is not available; known engines: {', '.join(ENGINES)}"
        )
    return cls.load(directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
