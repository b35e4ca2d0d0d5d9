"""Per-task tables of evaluation results, as Markdown (also readable in a terminal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mmembed.eval.mbeir_runner import EvalResults

if TYPE_CHECKING:
    from mmembed.eval.rerank_eval import RerankedEvalResults


def _settings(results: EvalResults) -> list[tuple[str, str]]:
    order = {"local": 0, "global": 1, "random": 0, "fixed": 1, "none": 2}
    found = {(r.pool, r.instructions) for r in results.results}
    return sorted(found, key=lambda s: (order.get(s[0], 9), order.get(s[1], 9)))


def results_table(results: EvalResults, settings: Sequence[tuple[str, str]] | None = None,
                  scale: float = 100.0) -> str:
    """One row per task, one column per (pool, instructions) setting, plus the global modality error.

    Scores are the headline metric of each task (``hit@5`` = M-BEIR's "Recall@5"), times ``scale``.
    """
    settings = list(settings or _settings(results))
    tasks: dict[str, tuple[str, str]] = {}
    for r in results.results:
        tasks.setdefault(r.task, (r.arrow, r.metric))
    by_key = {(r.task, r.pool, r.instructions): r for r in results.results}
    header = ["task", "q->c", "metric", *(f"{p}/{i}" for p, i in settings)]
    global_modes = [i for p, i in settings if p == "global"]
    header += [f"mod.err@{_k(results)} global/{i}" for i in global_modes]
    # an approximate index's recall against exact search, next to the scores it produced
    depths = {key for r in results.results for key in (r.index_recall or {})}
    recall = max(depths, key=lambda key: int(key.rsplit("@", 1)[1])) if depths else None
    header += [f"{recall} global/{i}" for i in global_modes] if recall else []
    rows = []
    for task, (arrow, metric) in tasks.items():
        cells = [task, arrow, metric]
        cells += [_fmt(by_key.get((task, p, i)), scale) for p, i in settings]
        cells += [_fmt_err(by_key.get((task, "global", i)), scale) for i in global_modes]
        cells += [_recall(by_key.get((task, "global", i)), recall, scale) for i in global_modes] if recall else []
        rows.append(cells)
    average = ["average", "", ""]
    average += [_num(results.average(p, i), scale) for p, i in settings]
    average += [_num(_mean_err(results, i), scale) for i in global_modes]
    average += [_num(_mean_recall(results, i, recall), scale) for i in global_modes] if recall else []
    rows.append(average)
    return markdown_table(header, rows)


def rerank_table(results: RerankedEvalResults, metrics: Sequence[str] | None = None, scale: float = 100.0) -> str:
    """Before / after / fused reranking: one row per task, setting and metric, plus averages.

    ``metrics`` defaults to each task's headline metric; name others (e.g. ``["hit@1", "mrr@10"]``)
    to show those that the evaluation computed.
    """
    order = {s: n for n, s in enumerate(_settings(results.retrieval))}
    rows_in = sorted(results.results, key=lambda r: (r.task, order.get((r.pool, r.instructions), 99)))
    header = ["task", "q->c", "setting", "metric", "retrieval", "reranked", f"fused a={results.fusion_alpha:g}"]
    rows = []
    for r in rows_in:
        for metric in metrics or [r.metric]:
            values = [_num(getattr(r, v).get(metric), scale) for v in ("before", "after", "fused")]
            rows.append([r.task, r.arrow, f"{r.pool}/{r.instructions}", metric, *values])
    if len({r.task for r in rows_in}) > 1 and not metrics:
        for pool, mode in sorted({(r.pool, r.instructions) for r in rows_in}, key=lambda s: order.get(s, 99)):
            values = [_num(results.average(pool, mode, v), scale) for v in ("before", "after", "fused")]
            rows.append(["average", "", f"{pool}/{mode}", "headline", *values])
    return markdown_table(header, rows)


def _k(results: EvalResults) -> int:
    return int(results.config.get("modality_error_k", 5))


def _mean_err(results: EvalResults, mode: str) -> float | None:
    values = [r.modality_error for r in results.select("global", mode) if r.modality_error is not None]
    return sum(values) / len(values) if values else None


def _fmt(result, scale: float) -> str:
    return "-" if result is None else f"{result.score * scale:.1f}"


def _fmt_err(result, scale: float) -> str:
    return "-" if result is None or result.modality_error is None else f"{result.modality_error * scale:.1f}"


def _mean_recall(results: EvalResults, mode: str, key: str) -> float | None:
    values = [r.index_recall[key] for r in results.select("global", mode) if r.index_recall and key in r.index_recall]
    return sum(values) / len(values) if values else None


def _recall(result, key: str, scale: float) -> str:
    value = (result.index_recall or {}).get(key) if result is not None else None
    return _num(value, scale)


def _num(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A padded Markdown table (shared by every report that prints one)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
