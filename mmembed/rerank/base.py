"""The Reranker protocol, its results, score fusion, and the reranking loop every reranker shares.

A reranker re-orders the head of a retrieval result list: the first ``top_k`` candidates (given
best first, as the retriever returned them) are scored pair by pair against the query and re-sorted;
the rest keep their retrieval order after them, so metrics deeper than ``top_k`` stay defined.

Fusion (optional): ``final = alpha * norm(retrieval) + (1 - alpha) * norm(rerank)``, where ``norm``
is min-max normalisation over the reranked head of *one* query (so the two scores, of different
scales — cosine similarities, probabilities, mean log-probabilities — become comparable). A
constant list normalises to zeros (it carries no ordering). ``alpha = 0`` (the default) uses the
reranker's score alone and then no normalisation is applied to the reported score; ``alpha = 1``
keeps the retrieval order. Ties keep the retrieval order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmembed.encoders.base import Item
from mmembed.errors import ArgumentError, ConfigError, DataError, Location
from mmembed.types import Run

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("minmax", "none")


@dataclass(frozen=True)
class RerankResult:
    """One candidate after reranking."""

    #: The candidate's id.
    id: str
    #: 1-based position after reranking.
    rank: int
    #: What the order is by: the fused score (or the rerank score when ``alpha`` is 0); ``None`` for
    #: candidates below ``top_k``, which were not reranked.
    score: float | None
    #: The reranker's raw score (P("True"), or a mean log-probability); ``None`` when not reranked.
    rerank_score: float | None
    #: The score the retriever gave (``None`` when none was passed).
    retrieval_score: float | None
    #: 1-based position in the retriever's list.
    retrieval_rank: int

    @property
    def reranked(self) -> bool:
        return self.rerank_score is not None


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, candidate) pairs and re-sorts a query's retrieved candidates.

    A reranker may also set ``reads_images = False`` (see :func:`can_read_images`): callers then refuse
    image queries and candidates up front instead of failing half-way through a run.
    """

    #: Identifies the reranker, its weights and scoring mode (recorded with results).
    reranker_id: str
    top_k: int
    alpha: float

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item],
                    instructions: Sequence[str | None] | None = None, *, show_progress: bool = False) -> np.ndarray:
        """Raw scores of the pairs ``(queries[i], candidates[i])``; higher means more relevant."""
        ...

    def rerank(self, query: Item, candidates: Sequence[Item], instruction: str | None = None, *,
               retrieval_scores: Sequence[float] | None = None, top_k: int | None = None) -> list[RerankResult]:
        """The candidates (best first, as retrieved) re-sorted; see the module docstring."""
        ...

    def rerank_many(self, queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]],
                    instructions: Sequence[str | None] | None = None, *,
                    retrieval_scores: Sequence[Sequence[float]] | None = None, top_k: int | None = None,
                    show_progress: bool | None = None) -> list[list[RerankResult]]:
        """:meth:`rerank` for many queries, their pairs batched together."""
        ...


# ----------------------------------------------------------------------------- fusion


def normalize_scores(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Per-list normalisation: ``minmax`` maps to [0, 1] (a constant list to zeros); ``none`` keeps."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return scores
    if method != "minmax":
        raise ConfigError(f"unknown normalization {method!r}; expected one of {', '.join(NORMALIZATIONS)}")
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0.0 or not np.isfinite(high - low):
        return np.zeros_like(scores)
    return (scores - low) / (high - low)


def fuse(retrieval: np.ndarray | None, rerank: np.ndarray, alpha: float, method: str = "minmax") -> np.ndarray:
    """``alpha * norm(retrieval) + (1 - alpha) * norm(rerank)``; ``rerank`` itself when alpha is 0."""
    check_alpha(alpha)
    rerank = np.asarray(rerank, dtype=np.float64)
    if alpha == 0.0:
        return rerank
    if retrieval is None:
        raise ConfigError("fusion with alpha > 0 needs the candidates' retrieval scores")
    retrieval = np.asarray(retrieval, dtype=np.float64)
    if retrieval.shape != rerank.shape:
        raise ArgumentError(f"retrieval: {retrieval.shape[0]} retrieval scores for {rerank.shape[0]} reranked "
                            "candidates")
    return alpha * normalize_scores(retrieval, method) + (1.0 - alpha) * normalize_scores(rerank, method)


def check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}")


def order_results(ids: Sequence[str], rerank: np.ndarray, retrieval: np.ndarray | None, alpha: float,
                  method: str) -> list[RerankResult]:
    """Results of one query: the first ``len(rerank)`` ids re-sorted, the rest after them."""
    head = len(rerank)
    final = fuse(None if retrieval is None else retrieval[:head], rerank, alpha, method)
    order = sorted(range(head), key=lambda i: (-final[i], i))  # ties keep the retrieval order
    order += list(range(head, len(ids)))
    results = []
    for rank, i in enumerate(order, start=1):
        reranked = i < head
        results.append(RerankResult(
            id=ids[i], rank=rank, score=float(final[i]) if reranked else None,
            rerank_score=float(rerank[i]) if reranked else None,
            retrieval_score=None if retrieval is None else float(retrieval[i]), retrieval_rank=i + 1))
    return results


# ----------------------------------------------------------------------------- the shared loop


def can_read_images(reranker: Reranker) -> bool:
    """Whether ``reranker`` can judge items with images (those that do not say are assumed to)."""
    return bool(getattr(reranker, "reads_images", True))


class BaseReranker:
    """Implements :meth:`rerank` and :meth:`rerank_many` on top of :meth:`score_pairs`."""

    reranker_id: str = "reranker"
    #: False for text-only rerankers: callers refuse image items before scoring anything.
    reads_images: bool = True

    def __init__(self, *, top_k: int = 10, alpha: float = 0.0, normalization: str = "minmax",
                 batch_size: int = 10, show_progress: bool = False):
        check_positive("top_k", top_k)
        check_positive("batch_size", batch_size)
        check_alpha(alpha)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")
        self.top_k, self.alpha, self.normalization = top_k, float(alpha), normalization
        self.batch_size, self.show_progress = batch_size, show_progress

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item],
                    instructions: Sequence[str | None] | None = None, *, show_progress: bool = False) -> np.ndarray:
        raise NotImplementedError

    def rerank(self, query: Item, candidates: Sequence[Item], instruction: str | None = None, *,
               retrieval_scores: Sequence[float] | None = None, top_k: int | None = None) -> list[RerankResult]:
        scores = None if retrieval_scores is None else [retrieval_scores]
        return self.rerank_many([query], [candidates], [instruction], retrieval_scores=scores, top_k=top_k)[0]

    def rerank_many(self, queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]],
                    instructions: Sequence[str | None] | None = None, *,
                    retrieval_scores: Sequence[Sequence[float]] | None = None, top_k: int | None = None,
                    show_progress: bool | None = None) -> list[list[RerankResult]]:
        k = self.top_k if top_k is None else top_k
        check_positive("top_k", k)
        n = len(queries)
        candidate_lists = [list(cands) for cands in candidate_lists]
        if len(candidate_lists) != n:
            raise ArgumentError(f"candidate_lists: {len(candidate_lists)} candidate lists for {n} queries")
        instructions = [None] * n if instructions is None else list(instructions)
        if len(instructions) != n:
            raise ArgumentError(f"instructions: {len(instructions)} instructions for {n} queries")
        if self.alpha > 0 and retrieval_scores is None:  # fail before the expensive scoring
            raise ConfigError(f"fusion with alpha={self.alpha} needs the candidates' retrieval scores")
        retrieval = _retrieval_arrays(queries, candidate_lists, retrieval_scores)
        pair_q, pair_c, pair_i, spans = [], [], [], []
        for query, cands, instruction in zip(queries, candidate_lists, instructions):
            head = cands[:k]
            spans.append((len(pair_q), len(pair_q) + len(head)))
            pair_q += [query] * len(head)
            pair_c += head
            pair_i += [instruction] * len(head)
        progress = self.show_progress if show_progress is None else show_progress
        scores = self.score_pairs(pair_q, pair_c, pair_i, show_progress=progress) if pair_q else np.zeros(0)
        return [order_results([c.id for c in cands], scores[start:end], retrieval[q], self.alpha,
                              self.normalization)
                for q, (cands, (start, end)) in enumerate(zip(candidate_lists, spans))]


def aligned_pairs(queries: Sequence[Item], candidates: Sequence[Item], instructions: Sequence[str | None] | None
                  ) -> tuple[list[Item], list[Item], list[str | None]]:
    """The pairs ``(queries[i], candidates[i], instructions[i])`` of ``score_pairs`` as lists, checked to align."""
    queries, candidates = list(queries), list(candidates)
    if len(queries) != len(candidates):
        raise ArgumentError(f"queries and candidates: {len(queries)} queries for {len(candidates)} candidates")
    instructions = [None] * len(queries) if instructions is None else list(instructions)
    if len(instructions) != len(queries):
        raise ArgumentError(f"instructions: {len(instructions)} instructions for {len(queries)} pairs")
    return queries, candidates, instructions


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _retrieval_arrays(queries: Sequence[Item], candidate_lists: Sequence[Sequence[Item]],
                      retrieval_scores: Sequence[Sequence[float]] | None) -> list[np.ndarray | None]:
    if retrieval_scores is None:
        return [None] * len(queries)
    if len(retrieval_scores) != len(queries):
        raise ArgumentError(f"retrieval_scores: {len(retrieval_scores)} retrieval score lists for "
                            f"{len(queries)} queries")
    out: list[np.ndarray | None] = []
    for query, cands, scores in zip(queries, candidate_lists, retrieval_scores):
        if len(scores) != len(cands):
            raise DataError(f"{len(scores)} retrieval scores for {len(cands)} candidates", Location(item=query.id))
        out.append(np.asarray(scores, dtype=np.float64))
    return out


# ----------------------------------------------------------------------------- runs


def rerank_run(reranker: Reranker, run: Run, queries: Mapping[str, Item], candidates: Mapping[str, Item],
               instructions: Mapping[str, str | None] | None = None, *, top_k: int | None = None,
               show_progress: bool | None = None) -> tuple[Run, dict[str, list[RerankResult]]]:
    """Rerank a retrieval run (qid -> did -> score) in one batched pass over all its queries.

    ``candidates`` must hold the items of every query's top ``top_k`` (more are allowed, not needed).

    Returns a new run whose scores are rank-derived (``n - rank + 1``, so that any consumer that
    sorts by score sees the reranked order, the unreranked tail included) and the detailed results
    per query (raw, fused and retrieval scores).
    """
    qids = list(run)
    missing = [q for q in qids if q not in queries]
    if missing:
        raise DataError("query of the run is not among the given queries", Location(item=missing[0]))
    k = reranker.top_k if top_k is None else top_k
    lists, scores = [], []
    for qid in qids:
        ranked = sorted(run[qid].items(), key=lambda kv: -kv[1])
        for did, _ in ranked[:k]:
            if did not in candidates:
                raise DataError(f"candidate {did!r} of the run is not among the given candidates",
                                Location(item=qid))
        # below top_k only the ids are needed: those candidates are never scored
        lists.append([candidates.get(did) or Item(did) for did, _ in ranked])
        scores.append([score for _, score in ranked])
    chosen = [(instructions or {}).get(qid) for qid in qids]
    results = reranker.rerank_many([queries[q] for q in qids], lists, chosen, retrieval_scores=scores,
                                   top_k=top_k, show_progress=show_progress)
    details = dict(zip(qids, results))
    return results_to_run(details), details


def results_to_run(details: Mapping[str, Sequence[RerankResult]]) -> Run:
    """A run with rank-derived scores (``n - rank + 1``) from reranked results per query."""
    return {qid: {r.id: float(len(rows) - r.rank + 1) for r in rows} for qid, rows in details.items()}


def fuse_results(results: Sequence[RerankResult], alpha: float, normalization: str = "minmax") -> list[RerankResult]:
    """One query's reranked results re-ordered at fusion weight ``alpha``, without scoring again.

    Uses the raw rerank and retrieval scores kept in the results, so a fusion sweep costs nothing.
    """
    by_retrieval = sorted(results, key=lambda r: r.retrieval_rank)
    rerank = np.array([r.rerank_score for r in by_retrieval if r.reranked], dtype=np.float64)
    if any(r.reranked for r in by_retrieval[len(rerank):]):
        raise ArgumentError("results: the reranked results must be the head of the retrieval order")
    retrieval = None
    if all(r.retrieval_score is not None for r in by_retrieval):
        retrieval = np.array([r.retrieval_score for r in by_retrieval], dtype=np.float64)
    return order_results([r.id for r in by_retrieval], rerank, retrieval, alpha, normalization)


# ----------------------------------------------------------------------------- helpers for pair scorers


class TextTruncator:
    """Cuts item texts to ``max_tokens`` tokens so that one long document cannot blow up a batch.

    Warns once per instance (a corpus of long documents would otherwise flood the log).
    """

    def __init__(self, tokenizer: Any, max_tokens: int):
        check_positive("max_text_tokens", max_tokens)
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self._warned = False

    def __call__(self, text: str | None, item_id: str) -> str | None:
        if not text or len(text) <= self.max_tokens:  # a token is at least one character
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_tokens:
            return text
        if not self._warned:
            self._warned = True
            logger.warning("item %r (and possibly others) has more than %d text tokens; reranking reads only the "
                           "first %d", item_id, self.max_tokens, self.max_tokens)
        return self.tokenizer.decode(ids[:self.max_tokens])


def batches(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
