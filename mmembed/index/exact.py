"""The exact :class:`~mmembed.index.base.VectorIndex` that streams: vectors in memory or in an embeddings store.

``ExactIndex.from_embeddings(store)`` searches an ``mmembed encode`` output without loading it:
each search reads the chunk files once per pass (see :mod:`mmembed.index.topk`), holding one chunk,
one block of scores and the running top-k, within ``memory_limit`` bytes; the ids are held as one
numpy unicode array. ``ExactIndex.from_vectors(ids, vectors)`` searches an array in memory the
same way (the same arithmetic, the same tie rule), so a pool that fits and one that does not give
the same results. The index is read-only: it is built over vectors that already exist.

``search_requests`` answers several requests in one pass (a split's global and local searches,
the sample an approximate index's recall is measured on), each with its own depth and, optionally,
the candidate rows it may return. A saved index is a manifest that points at its store (the vectors
are not copied).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mmembed.embeddings.store import EmbeddingSet
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.fileio import atomic_directory
from mmembed.index.base import IndexManifest, SearchResult, check_expected, read_manifest
from mmembed.index.faiss_index import _check_finite, _matrix, _normalised
from mmembed.index.integrity import check_retrieval_siblings
from mmembed.index.topk import (
    PassStats,
    Request,
    blocked_search,
    default_memory_limit,
    id_ranks,
    key_ranks,
    key_scores,
    plan_memory,
)
from mmembed.version import __version__

log = logging.getLogger(__name__)

ENGINE = "exact"
#: Rows per chunk of an in-memory array (a store keeps its own chunk size).
ARRAY_CHUNK = 4096


class ExactIndex:
    """Exact inner-product top-k over unit vectors, streamed chunk by chunk under a memory limit.

    Example::

        index = ExactIndex.from_embeddings("runs/pool-emb", memory_limit="2GB")
        ids, scores = index.search(query_vectors, k=50)
        print(index.last_stats.passes, index.last_stats.planned_peak_bytes)
    """

    def __init__(self, ids: np.ndarray, dim: int, *, chunks, chunk_rows: int, stored_itemsize: int,
                 encoder_id: str | None = None, memory_limit: int | str | None = None,
                 embeddings: EmbeddingSet | None = None, device: str | None = "cpu"):
        from mmembed.index.topk import parse_memory

        self._ids = ids
        self.dim = dim
        self.encoder_id = encoder_id
        self._chunks = chunks
        self._chunk_rows = chunk_rows
        self._itemsize = stored_itemsize
        self.memory_limit = default_memory_limit() if memory_limit is None else parse_memory(memory_limit)
        self.embeddings = embeddings
        #: Where the matrix products run: "cpu", "cuda", or "auto" (a GPU when torch sees one).
        self.device = device
        self._ranks, self._order = id_ranks(ids)
        #: What the last search did (passes, rows read, the memory it planned for).
        self.last_stats = PassStats()

    @classmethod
    def from_vectors(cls, ids: Sequence[str], vectors: np.ndarray, *, encoder_id: str | None = None,
                     memory_limit: int | str | None = None, device: str | None = "cpu") -> ExactIndex:
        """An index over an array in memory (not copied; rows normalised chunk by chunk while searching)."""
        x = np.asarray(vectors)
        if x.ndim != 2:
            raise IndexMismatchError(f"vectors must be a 2-D array, got shape {x.shape}")
        if len(ids) != x.shape[0]:
            raise ConfigError(f"got {len(ids)} ids for {x.shape[0]} vectors")
        _check_finite(x, "vector", list(ids))

        def chunks() -> Iterator[tuple[int, np.ndarray]]:
            for start in range(0, x.shape[0], ARRAY_CHUNK):
                yield start, x[start:start + ARRAY_CHUNK]

        index = cls(np.array(list(ids), dtype=str), x.shape[1], chunks=chunks, chunk_rows=min(ARRAY_CHUNK, len(ids)),
                    stored_itemsize=0, encoder_id=encoder_id, memory_limit=memory_limit, device=device)
        index._held_vectors = x.nbytes  # already in memory: not the search's to count
        return index

    @classmethod
    def from_embeddings(cls, embeddings: EmbeddingSet | str | os.PathLike, *, memory_limit: int | str | None = None,
                        device: str | None = "cpu", ids: np.ndarray | None = None) -> ExactIndex:
        """An index over an ``mmembed encode`` store, read chunk by chunk at every search pass.

        ``ids``: the store's ids as :meth:`EmbeddingSet.id_array` returned them, when the caller has
        them already (they are not read twice).
        """
        store = embeddings if isinstance(embeddings, EmbeddingSet) else EmbeddingSet.open(embeddings)
        if ids is None:
            ids, _ = store.id_array()
        elif ids.shape != (len(store),):
            raise IndexMismatchError(f"{store.directory}: {ids.shape[0]} ids given for {len(store)} vectors")
        return cls(ids, store.dim, chunks=store.vector_chunks, chunk_rows=store.identity.chunk_size,
                   stored_itemsize=np.dtype(store.identity.dtype).itemsize, encoder_id=store.encoder_id,
                   memory_limit=memory_limit, embeddings=store, device=device)

    _held_vectors = 0

    def __len__(self) -> int:
        return int(self._ids.size)

    def __repr__(self) -> str:
        where = f", embeddings={str(self.embeddings.directory)!r}" if self.embeddings else ""
        return f"ExactIndex(dim={self.dim}, count={len(self)}, encoder_id={self.encoder_id!r}{where})"

    def ids(self) -> list[str]:
        return self._ids.tolist()

    @property
    def id_array(self) -> np.ndarray:
        """The ids as a numpy unicode array (row ``i`` is candidate ``i``)."""
        return self._ids

    def add(self, ids, vectors) -> None:
        raise ConfigError("an exact streamed index is read-only (it searches vectors that already exist); "
                          "encode the new candidates into a new store, or use a FAISS index to add vectors")

    # --- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top ``min(k, len(self))`` ids and cosine scores per query row, best first."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = _matrix(queries, self.dim, "queries")
        return self.search_requests(q, [Request(slice(0, q.shape[0]), min(k, len(self)))])[0]

    def search_requests(self, queries: np.ndarray, requests: Sequence[Request]) -> list[SearchResult]:
        """Every request answered in one pass over the vectors (more when the queries exceed the memory limit).

        A request's ``allowed`` rows restrict its candidates; its ``k`` must not exceed their number.
        """
        q = np.ascontiguousarray(_matrix(queries, self.dim, "queries"), dtype=np.float32)
        _check_finite(q, "query")  # normalised block by block while searching, never copied whole
        for r in requests:
            allowed = len(self) if r.allowed is None else int(np.count_nonzero(r.allowed))
            if r.k < 1 or r.k > allowed:
                raise ConfigError(f"k={r.k} must be between 1 and the {allowed} candidates the request may return")
        keys_per_query = sum(r.k * (r.rows.stop - r.rows.start) for r in requests) / max(q.shape[0], 1)
        held = self._ids.nbytes + self._ranks.nbytes + self._order.nbytes + self._held_vectors
        plan = plan_memory(self.memory_limit, chunk_rows=self._chunk_rows, dim=self.dim,
                           stored_itemsize=self._itemsize, held_bytes=held, query_rows=q.shape[0],
                           keys_per_query=keys_per_query)
        stats = PassStats(memory_limit=self.memory_limit, query_rows_per_pass=plan.rows_per_pass,
                          planned_peak_bytes=plan.peak(plan.rows_per_pass))
        started = time.perf_counter()
        keys = blocked_search(self._normalised_chunks, q, requests, self._ranks, rows_per_pass=plan.rows_per_pass,
                              stats=stats, device=self.device)
        stats.seconds = time.perf_counter() - started
        self.last_stats = stats
        log.info("exact search: %d queries, %d requests, %d pass(es) over %d vectors, planned peak %.1f MiB of %.1f",
                 q.shape[0], len(requests), stats.passes, len(self), stats.planned_peak_bytes / 2**20,
                 self.memory_limit / 2**20)
        return [self._result(k) for k in keys]

    def _normalised_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        buffer = np.empty((self._chunk_rows, self.dim), dtype=np.float32)
        for start, vectors in self._chunks():
            # the normalisation FaissIndex applies, into one reused buffer, checked there (float16
            # chunks are not copied to float32 a second time for the check)
            yield start, _normalised(vectors, "vector", out=buffer, offset=start)

    def _result(self, keys: np.ndarray) -> SearchResult:
        ranks = key_ranks(keys)
        rows = np.where(ranks < 0, 0, self._order[np.maximum(ranks, 0)])
        ids = self._ids[rows].astype(object)
        ids[ranks < 0] = None
        return SearchResult(ids, key_scores(keys))

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write a manifest pointing at the store (whose vectors are not copied)."""
        if self.embeddings is None:
            raise ConfigError("an exact index over an in-memory array cannot be saved; encode the pool with "
                              "'mmembed encode' and index the store, or use a FAISS index")
        identity = self.embeddings.identity
        manifest = IndexManifest(engine=ENGINE, dim=self.dim, count=len(self), factory="Flat", dtype=identity.dtype,
                                 encoder_id=self.encoder_id, created_by=f"mmembed {__version__}",
                                 extra={"embeddings": str(self.embeddings.directory.resolve()),
                                        "ids_sha256": identity.ids_sha256})
        with atomic_directory(directory) as staging:
            manifest.write(staging)
        log.info("saved %r to %s", self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder_id: str | None = None, memory_limit: int | str | None = None) -> ExactIndex:
        """Open the store a saved exact index points at, refusing one that no longer matches it."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.engine != ENGINE:
            raise IndexMismatchError(f"{directory}: manifest describes a {manifest.engine!r} index, not {ENGINE!r}")
        check_expected(manifest, directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
        where = manifest.extra.get("embeddings")
        if not isinstance(where, str):
            raise IndexMismatchError(f"{directory}/manifest.json: field 'extra.embeddings' is missing")
        store = EmbeddingSet.open(where)
        if store.identity.ids_sha256 != manifest.extra.get("ids_sha256") or len(store) != manifest.count:
            raise IndexMismatchError(f"{where}: these embeddings are not the ones {directory} was built on "
                                     "(other ids or count); rebuild the index")
        index = cls.from_embeddings(store, memory_limit=memory_limit)
        check_retrieval_siblings(directory, index.ids())
        return index
