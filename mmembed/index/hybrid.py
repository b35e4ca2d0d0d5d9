"""Hybrid search: the dense ranking fused with BM25 over the candidates' texts.

BM25 (the ``bm25s`` library: ``pip install 'mmembed[hybrid]'``) scores each candidate's text
against the query's text (not its instruction; English stopwords removed). Candidates without
text, and queries without text, have no BM25 list: the dense ranking alone decides for them.

Two fusions of the dense and BM25 lists (each cut at :data:`FUSION_DEPTH`, or the depth asked
for when deeper):

``rrf``  reciprocal-rank fusion: ``sum over lists of 1 / (RRF_K + rank)``; ranks only, so the
         two scores' scales do not matter (the usual choice).
``weighted``  ``w * dense + (1 - w) * bm25``, each min-max normalised over its list for the query
         (a candidate absent from a list gets 0 there); ``w`` = :data:`DENSE_WEIGHT` unless given.

``bm25`` is the BM25 list alone (lexical search; the baseline the fusions are compared with).

Ties follow mmembed's rule (score, then id descending). A filter mask applies to both lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, MissingDependencyError
from mmembed.index.base import SearchResult

log = logging.getLogger(__name__)

HYBRID_MODES = ("rrf", "weighted", "bm25")
#: The constant of reciprocal-rank fusion (Cormack et al. 2009 use 60).
RRF_K = 60
#: Each list is cut at this depth before fusion (or at the depth asked for, when deeper).
FUSION_DEPTH = 100
#: The dense share of the weighted sum.
DENSE_WEIGHT = 0.5


def _bm25s() -> Any:
    try:
        import bm25s
    except ImportError:
        raise MissingDependencyError("hybrid search needs bm25s: pip install 'mmembed[hybrid]'  "
                                     "(or: pip install bm25s)") from None
    return bm25s


def check_mode(mode: str) -> str:
    if mode not in HYBRID_MODES:
        raise ConfigError(f"hybrid must be one of {', '.join(HYBRID_MODES)}, got {mode!r}")
    return mode


def _tokens(texts: Sequence[str | None]) -> list[list[str]]:
    bm25s = _bm25s()
    return bm25s.tokenize([t or "" for t in texts], stopwords="en", return_ids=False, show_progress=False)


class BM25Index:
    """BM25 over candidate texts, rows in the order of ``ids`` (a dense index's row order)."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str | None]):
        if len(ids) != len(texts):
            raise ConfigError(f"got {len(ids)} ids for {len(texts)} texts")
        self._ids = np.asarray(list(ids), dtype=object)
        tokens = _tokens(texts)
        self._model = None  # a pool without any word (images only) has no BM25 list
        if any(tokens):
            self._model = _bm25s().BM25()
            self._model.index(tokens, show_progress=False)
        log.info("BM25 index over %d candidate texts", len(self._ids))

    def __len__(self) -> int:
        return int(self._ids.size)

    def search(self, texts: Sequence[str | None], k: int, allowed: np.ndarray | None = None) -> SearchResult:
        """Top ``k`` candidates by BM25 per query text; only candidates sharing a term (score > 0) are listed."""
        ids = np.full((len(texts), k), None, dtype=object)
        scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
        order_keys = self._ids  # ties: id descending, as everywhere in mmembed
        for row, tokens in enumerate(_tokens(texts)):
            if not tokens or self._model is None:
                continue
            s = np.asarray(self._model.get_scores(tokens), dtype=np.float32)
            if allowed is not None:
                s = np.where(allowed, s, 0.0)
            hits = np.flatnonzero(s > 0)
            if hits.size == 0:
                continue
            if hits.size > k:  # keep the scores at least the k-th best (ties included), then order those
                hits = hits[s[hits] >= np.partition(s[hits], hits.size - k)[hits.size - k]]
            ranked = sorted(hits.tolist(), key=lambda i: (s[i], order_keys[i]), reverse=True)[:k]
            ids[row, :len(ranked)] = self._ids[ranked]
            scores[row, :len(ranked)] = s[ranked]
        return SearchResult(ids, scores)


def fuse(dense: SearchResult, sparse: SearchResult, k: int, mode: str = "rrf",
         dense_weight: float = DENSE_WEIGHT) -> SearchResult:
    """The top ``k`` of each query's fused ranking (see the module docstring)."""
    check_mode(mode)
    if mode == "bm25":
        return SearchResult(sparse.ids[:, :k], sparse.scores[:, :k])
    if not 0.0 <= dense_weight <= 1.0:
        raise ConfigError(f"dense_weight must be between 0 and 1, got {dense_weight}")
    n = dense.ids.shape[0]
    ids = np.full((n, k), None, dtype=object)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    for row in range(n):
        fused: dict[str, float] = {}
        for weight, (row_ids, row_scores) in ((dense_weight, (dense.ids[row], dense.scores[row])),
                                              (1.0 - dense_weight, (sparse.ids[row], sparse.scores[row]))):
            present = [(d, float(s)) for d, s in zip(row_ids, row_scores) if d is not None]
            for did, value in _contributions(present, mode, weight):
                fused[did] = fused.get(did, 0.0) + value
        ranked = sorted(fused.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
        for col, (did, value) in enumerate(ranked):
            ids[row, col], scores[row, col] = did, value
    return SearchResult(ids, scores)


def _contributions(hits: list[tuple[str, float]], mode: str, weight: float) -> list[tuple[str, float]]:
    if mode == "rrf":
        return [(did, 1.0 / (RRF_K + rank)) for rank, (did, _) in enumerate(hits, start=1)]
    if not hits:
        return []
    values = np.array([s for _, s in hits], dtype=np.float64)
    low, span = values.min(), values.max() - values.min()
    normalised = (values - low) / span if span > 0 else np.ones_like(values)
    return [(did, weight * float(v)) for (did, _), v in zip(hits, normalised)]


def hybrid_search(retriever: Any, vectors: np.ndarray, texts: Sequence[str | None], k: int,
                  allowed: np.ndarray | None, mode: str) -> SearchResult:
    """A :class:`~mmembed.retrieval.Retriever`'s dense search fused with BM25 over its candidates."""
    from mmembed.index.filters import search_allowed

    check_mode(mode)
    depth = min(max(k, FUSION_DEPTH), len(retriever.index))
    dense = search_allowed(retriever.index, vectors, depth, allowed)
    bm25 = getattr(retriever, "_bm25", None)
    if bm25 is None:
        row_ids = retriever.index.ids()
        bm25 = retriever._bm25 = BM25Index(row_ids, [retriever.candidates[d].text for d in row_ids])
    sparse = bm25.search(texts, depth, allowed)
    return fuse(dense, sparse, min(k, depth), mode)
