"""A split's retrieval, done at once: every task's queries against the global pool and their local pools.

All query blocks (one per task and instruction mode) go to the exact index in one set of requests:
the global search of every block, its task's local pool (a mask over the global pool's rows) and,
when the chosen index is approximate, the exact reference of a seeded sample of each block. So the
global pool's vectors are read once per split (once per pass when the queries exceed the memory
limit), however many tasks and modes there are, instead of being copied into a fresh index per
task. An approximate index (``faiss-ivf``, ``faiss-hnsw``, ``milvus`` or a saved index directory)
answers the global searches, and its recall@k against exact search is measured on the sample and
reported next to every score. Local pools are always searched exactly (they are small, and the
approximate engines cannot all restrict a search to a subset).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from mmembed.embeddings.pool_cache import EmbeddedPool
from mmembed.index.base import SearchResult, VectorIndex
from mmembed.index.build import EXACT_INDEXES, search_index
from mmembed.index.exact import ExactIndex
from mmembed.index.topk import PassStats, Request

logger = logging.getLogger(__name__)

#: Depths an approximate index's recall is reported at (those above the search depth are left out).
RECALL_AT = (10,)


class PoolRows:
    """Row lookup in a pool's ids without a dict of millions of entries (a sorted copy + searchsorted)."""

    def __init__(self, ids: np.ndarray, modalities: np.ndarray):
        self.ids = ids
        self.modalities = modalities
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.size)

    def rows_of(self, ids: Sequence[str | None]) -> np.ndarray:
        """Row of each id, -1 where it is not in the pool (or is None)."""
        if not len(ids):
            return np.empty(0, dtype=np.int64)
        wanted = np.array([i if i is not None else "" for i in ids], dtype=str)  # own width: no truncation
        at = np.minimum(np.searchsorted(self._sorted, wanted), max(len(self) - 1, 0))
        found = self._sorted[at] == wanted
        rows = np.where(found, self._order[at], -1)
        rows[np.array([i is None for i in ids])] = -1
        return rows.astype(np.int64)

    def contains(self, ids: Sequence[str]) -> np.ndarray:
        return self.rows_of(list(ids)) >= 0


@dataclass
class QueryBlock:
    """The queries of one task under one instruction mode, embedded."""

    task: str
    mode: str
    vectors: np.ndarray
    #: bool over the global pool's rows: the task's local pool (None: not searched locally this way).
    local: np.ndarray | None = None
    local_depth: int = 0


@dataclass
class Found:
    """The results of one block against one pool."""

    ids: np.ndarray
    scores: np.ndarray
    #: Modality code of each result (-1 for an empty slot).
    modalities: np.ndarray
    #: ``{"index_recall@k": value}`` when an approximate index produced ``ids``.
    recall: dict[str, float] | None = None


@dataclass
class SearchReport:
    """How the split was searched, for results.json."""

    index: str
    exact_passes: int = 0
    vectors_read: int = 0
    memory_limit: int = 0
    planned_peak_bytes: int = 0
    query_rows: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    recall_sample: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def global_index(kind: str, pool: PoolRows, *, vectors: np.ndarray | None = None, embeddings=None,
                 encoder_id: str | None = None, memory_limit: str | int | None = None, device: str | None = "cpu"
                 ) -> tuple[ExactIndex, VectorIndex | None]:
    """(the exact streamed index over the global pool, the approximate one or None when ``kind`` is exact)."""
    if embeddings is not None:
        exact = ExactIndex.from_embeddings(embeddings, memory_limit=memory_limit, device=device, ids=pool.ids)
    else:
        exact = ExactIndex.from_vectors(pool.ids.tolist(), vectors, encoder_id=encoder_id, memory_limit=memory_limit,
                                        device=device)
    if kind == "exact":
        return exact, None
    other = search_index(kind, ids=None if embeddings is not None else pool.ids.tolist(), vectors=vectors,
                         embeddings=embeddings, encoder_id=encoder_id, memory_limit=memory_limit)
    return exact, other


def search_split(blocks: Sequence[QueryBlock], pool: PoolRows, exact: ExactIndex, other: VectorIndex | None, *,
                 kind: str, depth: int, search_global: bool, recall_sample: int, seed: int
                 ) -> tuple[dict[tuple[str, str, str], Found], SearchReport]:
    """Every block's global (``search_global``) and local results, keyed by (task, mode, pool)."""
    global_depth = min(depth, len(pool))
    approximate = other is not None and kind not in EXACT_INDEXES
    rows, requests, keys = 0, [], []
    spans = []
    for block in blocks:
        span = slice(rows, rows + block.vectors.shape[0])
        spans.append(span)
        rows = span.stop
        if search_global and other is None:
            requests.append(Request(span, global_depth))
            keys.append((block.task, block.mode, "global"))
        if block.local is not None:
            requests.append(Request(span, block.local_depth, block.local))
            keys.append((block.task, block.mode, "local"))
    samples: list[np.ndarray] = []
    if search_global and approximate:
        rng = np.random.default_rng(seed)
        for block in blocks:
            n = block.vectors.shape[0]
            sample = np.sort(rng.choice(n, min(n, recall_sample), replace=False))
            samples.append(sample)
            requests.append(Request(slice(rows, rows + sample.size), global_depth))
            keys.append((block.task, block.mode, "reference"))
            rows += sample.size
    parts = [b.vectors for b in blocks] + [b.vectors[s] for b, s in zip(blocks, samples)]
    queries = np.concatenate(parts) if parts else np.empty((0, exact.dim), dtype=np.float32)
    report = SearchReport(index=kind, query_rows=int(queries.shape[0]), memory_limit=exact.memory_limit,
                          recall_sample=recall_sample if approximate else 0)
    found: dict[tuple[str, str, str], Found] = {}
    if requests:
        results = exact.search_requests(queries, requests)
        _record(report, exact.last_stats)
        for key, result in zip(keys, results):
            found[key] = _found(result, pool)
    if search_global and other is not None:
        for i, block in enumerate(blocks):
            result = _found(other.search(block.vectors, global_depth), pool)
            if approximate:
                reference = found.pop((block.task, block.mode, "reference"))
                result.recall = _recall(result.ids[samples[i]], reference.ids, global_depth)
            found[(block.task, block.mode, "global")] = result
    report.peak_rss_bytes = peak_rss()
    return found, report


def peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM; ``ru_maxrss`` would include a forking parent's over exec)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _record(report: SearchReport, stats: PassStats) -> None:
    report.exact_passes = stats.passes
    report.vectors_read = stats.vectors_read
    report.planned_peak_bytes = stats.planned_peak_bytes
    report.seconds = round(stats.seconds, 3)


def _found(result: SearchResult, pool: PoolRows) -> Found:
    ids, scores = result
    rows = pool.rows_of(ids.ravel().tolist()).reshape(ids.shape) if ids.size else np.empty(ids.shape, np.int64)
    modalities = np.where(rows >= 0, pool.modalities[np.maximum(rows, 0)], -1) if rows.size else rows
    return Found(ids, scores, modalities)


def _recall(approximate: np.ndarray, exact: np.ndarray, depth: int) -> dict[str, float]:
    """Mean share of each exact top-k found in the approximate top-k, at every reported depth."""
    out = {}
    for k in sorted({*(k for k in RECALL_AT if k < depth), depth}):
        hits = [len({*a[:k]} & {*e[:k]} - {None}) / min(k, sum(x is not None for x in e[:k]) or 1)
                for a, e in zip(approximate, exact)]
        out[f"index_recall@{k}"] = float(np.mean(hits)) if hits else 1.0
    return out


def local_search(pool: EmbeddedPool, vectors: np.ndarray, depth: int,
                 memory_limit: str | int | None) -> Found:
    """A local pool that is not part of the global one, searched exactly on its own."""
    index = ExactIndex.from_vectors(pool.ids, pool.vectors, memory_limit=memory_limit)
    rows = PoolRows(np.array(pool.ids, dtype=str), pool.modalities)
    return _found(index.search(vectors, min(depth, len(pool.ids))), rows)
