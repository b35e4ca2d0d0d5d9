"""Retrieval metrics over a :data:`~mmembed.types.Run` and :data:`~mmembed.types.Qrels`, as trec_eval defines them.

Names are ``<metric>@<k>``:

* ``hit@k`` -- 1 if at least one relevant document is in the top ``k``, else 0. **This is the
  number M-BEIR, UniIR and the MM-Embed paper report as "Recall@k"**; trec_eval calls it
  ``success_k``. It is kept under its own name so that it is never confused with true recall.
* ``recall@k`` -- the share of the query's relevant documents found in the top ``k``
  (trec_eval ``recall_k``). Much lower than ``hit@k`` on multi-positive tasks.
* ``ndcg@k`` -- graded nDCG with gain = relevance (negative grades count 0), a ``log2(rank + 1)``
  discount, and the ideal DCG from the qrels' own best ordering (trec_eval ``ndcg_cut_k``).
* ``map@k`` -- average precision over the top ``k``, divided by the number of relevant
  documents (trec_eval ``map_cut_k``).
* ``mrr@k`` -- reciprocal rank of the first relevant document if it is within ``k``, else 0.

Conventions (those of trec_eval / pytrec_eval, so numbers are comparable with published ones):

* a document is relevant when its grade is > 0;
* a run is ranked by score descending, ties broken by document id descending (byte order) —
  the one tie rule of mmembed: :func:`rank_documents` ranks for the metrics and for the TREC run
  files alike, and run files carry exact scores, so re-scoring them with trec_eval/pytrec_eval
  (which apply the same rule) or by their rank column reproduces these numbers;
* queries in the qrels without any relevant document are skipped;
* queries in the qrels but absent from the run score 0 (trec_eval ``-c``), so a run that drops
  queries cannot look better than it is;
* queries in the run but not in the qrels are ignored.

The ranking of each query is done once in Python (a bounded heap of the top ``max k``); every
metric is then computed for all queries at once with numpy.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from mmembed.errors import ConfigError, DataError, Location
from mmembed.types import Qrels, Run, first_repeat

__all__ = ["METRIC_NAMES", "Metric", "parse_metric", "evaluate", "per_query", "rank_documents", "topk_to_run"]


@dataclass(frozen=True)
class _Judged:
    """The ranked relevance grades of the evaluable queries, padded to a common depth."""

    qids: list[str]
    #: (n_queries, depth) gains of the ranked documents (grade clipped at 0; 0 past the run's end).
    gains: np.ndarray
    #: (n_queries, depth) the ideal gains: the qrels' positive grades sorted descending.
    ideal: np.ndarray
    #: (n_queries,) number of relevant documents in the qrels.
    num_rel: np.ndarray


def _hit(j: _Judged, k: int) -> np.ndarray:
    return (j.gains[:, :k] > 0).any(axis=1).astype(np.float64)


def _recall(j: _Judged, k: int) -> np.ndarray:
    return (j.gains[:, :k] > 0).sum(axis=1) / j.num_rel


def _mrr(j: _Judged, k: int) -> np.ndarray:
    rel = j.gains[:, :k] > 0
    first = rel.argmax(axis=1)
    return np.where(rel.any(axis=1), 1.0 / (first + 1), 0.0)


def _map(j: _Judged, k: int) -> np.ndarray:
    rel = j.gains[:, :k] > 0
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    return (precision * rel).sum(axis=1) / j.num_rel


def _ndcg(j: _Judged, k: int) -> np.ndarray:
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    return (j.gains[:, :k] @ discount) / (j.ideal[:, :k] @ discount)


_METRICS: dict[str, Callable[[_Judged, int], np.ndarray]] = {
    "hit": _hit,
    "recall": _recall,
    "ndcg": _ndcg,
    "map": _map,
    "mrr": _mrr,
}
#: The metric families this module knows; a metric name is ``<family>@<k>``.
METRIC_NAMES: tuple[str, ...] = tuple(_METRICS)
_NAME = re.compile(r"^\s*([A-Za-z]+)\s*@\s*(\d+)\s*$")


@dataclass(frozen=True)
class Metric:
    """A parsed metric name: a family (``ndcg``) and a cutoff (``10``)."""

    name: str
    k: int

    def __str__(self) -> str:
        return f"{self.name}@{self.k}"


def parse_metric(spec: str | Metric) -> Metric:
    """Read ``"ndcg@10"``-style names (case-insensitive); raise :class:`ConfigError` listing valid ones."""
    if isinstance(spec, Metric):
        return spec
    match = _NAME.match(spec) if isinstance(spec, str) else None
    valid = ", ".join(f"{n}@k" for n in METRIC_NAMES)
    if match is None:
        raise ConfigError(f"metric {spec!r} is not of the form <name>@<k>; valid metrics: {valid} (k >= 1)")
    name, k = match.group(1).lower(), int(match.group(2))
    if name not in _METRICS:
        raise ConfigError(f"unknown metric {name!r} in {spec!r}; valid metrics: {valid} (k >= 1)")
    if k < 1:
        raise ConfigError(f"metric {spec!r} has cutoff {k}; the cutoff k must be >= 1")
    return Metric(name, k)


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str | Metric]) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels`` that have a relevant document.

    Keys are the metric names as given. Raises :class:`DataError` when no query in ``qrels`` has
    a relevant document (a mean over nothing would silently read as 0 or NaN).
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    parsed = [(str(m) if isinstance(m, Metric) else m, parse_metric(m)) for m in metrics]
    if not parsed:
        return {}
    judged = _judge(run, qrels, max(m.k for _, m in parsed))
    if not judged.qids:
        raise DataError("no query in the qrels has a relevant document (grade > 0); nothing to evaluate")
    return {key: float(_METRICS[m.name](judged, m.k).mean()) for key, m in parsed}


def per_query(run: Run, qrels: Qrels, metric: str | Metric) -> dict[str, float]:
    """One metric for each evaluable query (those of ``qrels`` with a relevant document), in qrels order."""
    m = parse_metric(metric)
    judged = _judge(run, qrels, m.k)
    values = _METRICS[m.name](judged, m.k)
    return dict(zip(judged.qids, values.tolist()))


def rank_documents(docs: Mapping[str, float], depth: int | None = None, qid: str | None = None
                   ) -> list[tuple[str, float]]:
    """The top ``depth`` (all when ``None``) (doc, score) pairs: score descending, then doc id
    descending, as trec_eval orders them."""
    if any(map(math.isnan, docs.values())):
        bad = next(d for d, s in docs.items() if math.isnan(s))
        raise DataError(f"score of document {bad!r} is NaN", Location(item=qid))
    return heapq.nlargest(len(docs) if depth is None else depth, docs.items(), key=itemgetter(1, 0))


def _judge(run: Run, qrels: Qrels, depth: int) -> _Judged:
    """Rank each evaluable query once and gather the gains into padded matrices."""
    qids: list[str] = []
    gains: list[int] = []
    gain_lens: list[int] = []
    ideal: list[int] = []
    ideal_lens: list[int] = []
    num_rel: list[int] = []
    for qid, judgments in qrels.items():
        positive = sorted((g for g in judgments.values() if g > 0), reverse=True)
        if not positive:
            continue
        qids.append(qid)
        num_rel.append(len(positive))
        ideal.extend(positive[:depth])
        ideal_lens.append(min(len(positive), depth))
        docs = run.get(qid)
        row = [max(judgments.get(did, 0), 0) for did, _ in rank_documents(docs, depth, qid)] if docs else []
        gains.extend(row)
        gain_lens.append(len(row))
    return _Judged(
        qids=qids,
        gains=_pad(gains, gain_lens, depth),
        ideal=_pad(ideal, ideal_lens, depth),
        num_rel=np.asarray(num_rel, dtype=np.float64),
    )


def _pad(flat: list[int], lengths: list[int], depth: int) -> np.ndarray:
    """Ragged rows (concatenated in ``flat``) as a zero-padded (len(lengths), depth) matrix."""
    lens = np.asarray(lengths, dtype=np.int64)
    out = np.zeros((len(lens), depth), dtype=np.float64)
    if len(flat):
        rows = np.repeat(np.arange(len(lens)), lens)
        starts = np.repeat(np.cumsum(lens) - lens, lens)
        cols = np.arange(len(flat)) - starts
        out[rows, cols] = flat
    return out


def topk_to_run(qids: Sequence[str], ids: np.ndarray | Sequence[Sequence[str | None]], scores: np.ndarray) -> Run:
    """A :data:`Run` from an index's top-k matrices (row ``i`` answers ``qids[i]``).

    ``None`` ids (an index pads with them when it has fewer than ``k`` results) are dropped.
    Raises :class:`DataError` on a shape mismatch or a repeated query id.
    """
    scores = np.asarray(scores)
    id_rows = ids.tolist() if isinstance(ids, np.ndarray) else ids
    if scores.ndim != 2 or len(id_rows) != scores.shape[0] or len(qids) != scores.shape[0]:
        raise DataError(
            f"top-k shapes disagree: {len(qids)} query ids, {len(id_rows)} id rows, scores of shape {scores.shape}"
        )
    run: Run = {}
    for qid, row_ids, row_scores in zip(qids, id_rows, scores.tolist()):
        if len(row_ids) != len(row_scores):
            raise DataError(f"{len(row_ids)} ids but {len(row_scores)} scores", Location(item=qid))
        docs = dict(zip(row_ids, row_scores))
        docs.pop(None, None)  # type: ignore[call-overload]
        run[qid] = docs
    if len(run) != len(qids):
        raise DataError("query id appears more than once in the top-k rows", Location(item=first_repeat(qids)))
    return run
