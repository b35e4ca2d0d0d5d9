"""Exact top-k by blocks: vectors streamed chunk by chunk against every query, memory bounded.

Each chunk of candidate vectors (in slices of at most :data:`CANDIDATE_BLOCK` rows) meets the
queries in blocks of :data:`QUERY_BLOCK` rows (one matrix product each); every block's scores are
merged into a running top-k per query. Nothing but one chunk, one block of scores and the running
top-k is held, so the candidate vectors may be far larger than memory. Several *requests* share
one pass: each names its query rows, its depth and, optionally, the candidate rows it may return
(``allowed``, e.g. a task's local pool), so a split's global and local searches read each vector once.

Ties follow the one tie rule of mmembed (:func:`mmembed.eval.metrics.rank_documents`): score
descending, then candidate id descending. Scores and ids are packed into one int64 key per pair
(an order-preserving image of the float32 score in the high half, the id's rank among all ids in
the low half), so a top-k by key is a top-k by that rule, cut-off included.

Arithmetic does not depend on the memory setting: every matrix product has the same shape
(:data:`QUERY_BLOCK` query rows, padded with zeros, times one slice of a chunk, the slices fixed by
the chunk layout), so a query's scores are the same bits however many queries share a pass.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)

#: Query rows per matrix product (fixed: see the module docstring).
QUERY_BLOCK = 256
#: Candidate rows per matrix product at most (a chunk is cut into such slices, whatever the limit).
CANDIDATE_BLOCK = 8192
#: Bytes per score of a block while it is merged: float32 score, int64 key, int64 partition index.
BYTES_PER_SCORE = 20
#: Key of an empty slot (below every real key).
EMPTY = np.iinfo(np.int64).min
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str | int) -> int:
    """Bytes from ``"200MB"``, ``"1.5GiB"``, ``"512M"`` (binary), ``"4096"`` or an int."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"memory size {text!r} is not understood; write e.g. 200MB, 1.5GiB or 4096")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return value


def default_memory_limit() -> int:
    """Half of the memory available now (at least 256 MiB): a safe share beside everything else."""
    from mmembed.index.memory import available_memory

    available = available_memory()
    return max(256 * 2**20, (available or 8 * 2**30) // 2)


# ----------------------------------------------------------------------------- keys


def score_keys(scores: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """int64 keys ordered as (score, id rank): float32 ``scores`` (m, c), ``ranks`` (c,) in [0, 2**31)."""
    scores = scores + np.float32(0.0)  # -0.0 -> +0.0: they are equal scores, so the id decides
    bits = scores.view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # negative floats: reverse their magnitude order
    keys = ordered.astype(np.int64)
    keys <<= 32
    keys |= ranks.astype(np.int64)
    return keys


def key_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of ``keys`` (``-inf`` for empty slots)."""
    high = (keys >> 32).astype(np.int32)
    scores = (high ^ ((high >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)
    scores[keys == EMPTY] = -np.inf
    return scores


def key_ranks(keys: np.ndarray) -> np.ndarray:
    """The id ranks of ``keys`` (-1 for empty slots)."""
    ranks = (keys & np.int64(0xFFFFFFFF)).astype(np.int64)
    ranks[keys == EMPTY] = -1
    return ranks


def _top_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest keys of each row (unordered)."""
    if keys.shape[1] <= k:
        return keys
    part = np.argpartition(keys, keys.shape[1] - k, axis=1)[:, keys.shape[1] - k:]
    return np.take_along_axis(keys, part, axis=1)


class TopK:
    """The running top ``k`` of ``n`` queries, as keys (see :func:`score_keys`)."""

    #: Above this share of a block's scores passing the rows' thresholds, merge the block whole.
    DENSE_SHARE = 0.05

    def __init__(self, n: int, k: int):
        self.k = k
        self.keys = np.full((n, k), EMPTY, dtype=np.int64)

    def push(self, rows: slice, scores: np.ndarray, ranks: np.ndarray) -> None:
        """Merge the ``scores`` (m, c) of query rows ``rows`` against candidates of id ranks ``ranks`` (c,)."""
        if scores.shape[1] == 0:
            return
        current = self.keys[rows]
        # Only a score at least the row's k-th best can enter: once the top-k has filled, a block
        # passes few, and only those are keyed and merged.
        threshold = key_scores(current.min(axis=1))
        passing = scores >= threshold[:, None]
        count = int(np.count_nonzero(passing))
        if count == 0:
            return
        if count > self.DENSE_SHARE * scores.size:
            merged = np.concatenate([current, _top_keys(score_keys(scores, ranks), self.k)], axis=1)
            self.keys[rows] = _top_keys(merged, self.k)
            return
        row, col = np.nonzero(passing)
        new = score_keys(scores[row, col][None, :], ranks[col])[0]
        m = current.shape[0]
        every_row = np.concatenate([row, np.repeat(np.arange(m), self.k)])
        every_key = np.concatenate([new, current.ravel()])
        order = np.lexsort((every_key, every_row))  # by row, then key ascending
        ends = np.cumsum(np.bincount(every_row, minlength=m))
        take = (ends[:, None] - self.k + np.arange(self.k)[None, :]).ravel()
        self.keys[rows] = every_key[order[take]].reshape(m, self.k)

    def sorted_keys(self) -> np.ndarray:
        """Best first."""
        return -np.sort(-self.keys, axis=1) if self.keys.size else self.keys


# ----------------------------------------------------------------------------- requests and the pass


@dataclass
class Request:
    """Search the queries ``rows`` for their top ``k`` among ``allowed`` candidate rows (all when None)."""

    rows: slice
    k: int
    #: bool over all candidate rows, or None for every candidate.
    allowed: np.ndarray | None = None


@dataclass
class PassStats:
    """What a blocked search did: passes over the vectors, rows read, the memory it planned for."""

    passes: int = 0
    vectors_read: int = 0
    chunks_read: int = 0
    planned_peak_bytes: int = 0
    memory_limit: int = 0
    query_rows_per_pass: int = 0
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


#: A source of candidate vectors: called once per pass, yields (first row, float32 unit rows).
ChunkSource = Callable[[], Iterator[tuple[int, np.ndarray]]]


@dataclass(frozen=True)
class MemoryPlan:
    """How a blocked search fits a memory limit: bytes by part and query rows per pass."""

    fixed_bytes: int  # held throughout: candidate ids and ranks, one chunk and its float32 copy, the
    #                   queries and every request's results
    block_bytes: int  # one block of scores being merged
    per_query_bytes: int  # a pass's running top-k keys (all requests, and the merge's copy), per query row
    rows_per_pass: int

    def peak(self, rows: int) -> int:
        return self.fixed_bytes + self.block_bytes + rows * self.per_query_bytes


#: Bytes of one result id as Python holds it (a short str object and its slot in an object array).
RESULT_ID_BYTES = 72


def plan_memory(limit: int, *, chunk_rows: int, dim: int, stored_itemsize: int, held_bytes: int,
                query_rows: int, keys_per_query: float) -> MemoryPlan:
    """Query rows per pass so that everything the search holds fits in ``limit`` bytes.

    ``held_bytes``: what the candidate side holds throughout (ids, their ranks, cached vectors). The
    queries themselves (float32) and the results (a key, a score and an id per slot) are held for the
    whole search; a pass holds its queries' running top-k.
    """
    results = int(query_rows * keys_per_query * (8 + 4 + RESULT_ID_BYTES))
    fixed = held_bytes + chunk_rows * dim * (stored_itemsize + 4) + query_rows * dim * 4 + results
    block = QUERY_BLOCK * (min(chunk_rows, CANDIDATE_BLOCK) * BYTES_PER_SCORE + dim * 4)
    per_query = int(2 * keys_per_query * 8) + 1
    room = limit - fixed - block
    minimum = fixed + block + QUERY_BLOCK * per_query
    if room < QUERY_BLOCK * per_query:
        raise ConfigError(
            f"memory limit {limit / 2**20:.1f} MiB is below the {minimum / 2**20:.1f} MiB that exact search needs "
            f"({query_rows:,} queries of {dim} dimensions and their results, chunks of {chunk_rows:,} vectors, "
            f"blocks of {QUERY_BLOCK} queries); raise --memory-limit or search fewer queries at once"
        )
    rows = max(QUERY_BLOCK, room // per_query // QUERY_BLOCK * QUERY_BLOCK)
    return MemoryPlan(fixed, block, per_query, min(rows, max(query_rows, 1)))


class Scorer:
    """The matrix product of a block: numpy on the CPU, or torch on a GPU (the merge stays on the CPU).

    On a GPU, TF32 is turned off for the product so float32 scores keep float32 precision; the
    last bits may still differ from the CPU's (another summation order), which
    ``benchmarks/gpu_check.py`` measures.
    """

    def __init__(self, device: str | None = None):
        self.device = resolve_device(device)

    def __call__(self, block: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        if self.device == "cpu":
            return block @ vectors.T
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            q = torch.from_numpy(block).to(self.device, non_blocking=True)
            v = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device, non_blocking=True)
            return (q @ v.T).cpu().numpy()


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"``: a CUDA GPU when torch sees one, else the CPU.

    torch is imported only where an NVIDIA driver is present (importing it costs ~200 MB of RSS,
    more than a small memory limit).
    """
    if device not in (None, "auto"):
        return device
    import os
    import sys

    if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def blocked_search(source: ChunkSource, queries: np.ndarray, requests: Sequence[Request], ranks: np.ndarray,
                   *, rows_per_pass: int, stats: PassStats | None = None, device: str | None = "cpu"
                   ) -> list[np.ndarray]:
    """The sorted top-k keys (best first) of every request; ``queries``: float32 rows (normalised per block).

    Queries are searched ``rows_per_pass`` at a time; each pass reads every chunk of ``source`` once.
    ``device``: where the matrix products run (see :class:`Scorer`).
    """
    scorer = Scorer(device)
    results = [np.full((r.rows.stop - r.rows.start, r.k), EMPTY, dtype=np.int64) for r in requests]
    for lo in range(0, queries.shape[0], rows_per_pass):
        hi = min(lo + rows_per_pass, queries.shape[0])
        part = [(i, r, slice(max(r.rows.start, lo), min(r.rows.stop, hi))) for i, r in enumerate(requests)]
        part = [(i, r, s) for i, r, s in part if s.start < s.stop]
        if not part:
            continue
        tops = [TopK(s.stop - s.start, r.k) for _, r, s in part]
        _one_pass(source, queries, lo, hi, part, tops, ranks, stats, scorer)
        for (i, r, s), top in zip(part, tops):
            results[i][s.start - r.rows.start:s.stop - r.rows.start] = top.sorted_keys()
    return results


def _one_pass(source: ChunkSource, queries: np.ndarray, lo: int, hi: int, part: list, tops: list[TopK],
              ranks: np.ndarray, stats: PassStats | None, scorer: Scorer) -> None:
    block = np.zeros((QUERY_BLOCK, queries.shape[1]), dtype=np.float32)
    for start, vectors in source():
        for offset in range(0, vectors.shape[0], CANDIDATE_BLOCK):
            _merge_slice(block, queries, lo, hi, part, tops, ranks, start + offset,
                         vectors[offset:offset + CANDIDATE_BLOCK], scorer)
        if stats is not None:
            stats.vectors_read += vectors.shape[0]
            stats.chunks_read += 1
    if stats is not None:
        stats.passes += 1


def _merge_slice(block: np.ndarray, queries: np.ndarray, lo: int, hi: int, part: list, tops: list[TopK],
                 ranks: np.ndarray, start: int, vectors: np.ndarray, scorer: Scorer) -> None:
    """Score candidate rows ``start:start + len(vectors)`` against the pass's queries, block by block."""
    chunk_ranks = ranks[start:start + vectors.shape[0]]
    for b in range(lo, hi, QUERY_BLOCK):
        e = min(b + QUERY_BLOCK, hi)
        # unit rows, normalised here (as FaissIndex does, row by row) rather than in a copy of all queries
        block[: e - b] = queries[b:e]
        normalize_rows(block[: e - b])
        block[e - b:] = 0.0  # padding: the product keeps its shape (see the module docstring)
        scores = scorer(block, vectors)
        for (_, request, s), top in zip(part, tops):
            rb, re_ = max(s.start, b), min(s.stop, e)
            if rb >= re_:
                continue
            rows = scores[rb - b:re_ - b]
            cols = chunk_ranks
            if request.allowed is not None:
                keep = np.flatnonzero(request.allowed[start:start + vectors.shape[0]])
                rows, cols = rows[:, keep], chunk_ranks[keep]
            top.push(slice(rb - s.start, re_ - s.start), rows, cols)


def normalize_rows(x: np.ndarray) -> None:
    """L2-normalise the float32 rows of ``x`` in place with FAISS (the bits FaissIndex stores)."""
    import faiss

    faiss.normalize_L2(x)


def id_ranks(ids: Iterable[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each row's id in ascending id order, row of each rank), both int32.

    numpy orders unicode arrays by code point, as Python orders ``str``: the order of ``rank_documents``.
    """
    array = ids if isinstance(ids, np.ndarray) else np.array(list(ids), dtype=str)
    if array.size >= 2**31:
        raise ConfigError(f"exact search handles at most 2**31 candidates, got {array.size:,}")
    order = np.argsort(array, kind="stable").astype(np.int32)
    ranks = np.empty(array.size, dtype=np.int32)
    ranks[order] = np.arange(array.size, dtype=np.int32)
    return ranks, order
