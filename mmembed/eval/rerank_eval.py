"""Reranking inside the M-BEIR evaluation: before, after, and fused.

Every retrieval run that :func:`~mmembed.eval.mbeir_runner.run_evaluation` scores (task x pool x
instruction mode) is handed to the reranker through the runner's ``on_run`` hook, and each is
reported three ways, with the same metrics:

- ``before``: the retriever's order (the plain evaluation's figures);
- ``after``: the reranker's order of the top ``top_k`` (its raw score, fusion weight 0);
- ``fused``: ``alpha * minmax(retrieval) + (1 - alpha) * minmax(rerank)`` with the reranker's
  ``alpha``, or :data:`DEFAULT_FUSION_ALPHA` when that is 0, so a fused figure is always shown.

Both reranked orders come from one scoring pass (the fused one is recomputed from the kept raw
scores). Candidates below ``top_k`` follow in retrieval order, so deeper metrics stay defined.

A text-only reranker is refused, before anything is embedded, on a task whose queries or
candidates carry images, and on the global pool when that holds image candidates: the error names
the task (or pool) and what to run instead. Nothing is skipped silently.

Outputs next to the plain evaluation's: ``results.json`` gains a ``rerank`` section,
``runs/{pool}-{mode}-reranked/`` and ``runs/{pool}-{mode}-fused/`` hold TREC runs,
``rerank/{pool}-{mode}/{task}.jsonl`` the raw scores of every reranked pair (for fusion sweeps
without scoring again), and ``rerank_config.json`` the reranking configuration.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmembed.data.images import ImageStore
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import iter_candidates
from mmembed.encoders.base import Encoder, Item, as_items
from mmembed.errors import ConfigError
from mmembed.eval.mbeir_runner import EvalConfig, EvalResults, ScoredRun, run_evaluation
from mmembed.eval.metrics import evaluate
from mmembed.eval.trec import write_run
from mmembed.fileio import write_json, write_jsonl
from mmembed.rerank.base import Reranker, RerankResult, can_read_images, fuse_results, rerank_run, results_to_run
from mmembed.types import Modality

logger = logging.getLogger(__name__)

#: Fusion weight of the ``fused`` figures when the reranker's own ``alpha`` is 0.
DEFAULT_FUSION_ALPHA = 0.5
VARIANTS = ("before", "after", "fused")


@dataclass
class RerankedTaskResult:
    """One task x pool x instruction mode: the same metrics for each of the three orders."""

    task: str
    task_id: int
    arrow: str
    pool: str
    instructions: str
    metric: str  # the headline metric, as in the plain evaluation
    before: dict[str, float]
    after: dict[str, float]
    fused: dict[str, float]
    fusion_alpha: float
    top_k: int
    pairs: int
    seconds: float

    def score(self, variant: str, metric: str | None = None) -> float:
        return getattr(self, variant)[metric or self.metric]


@dataclass
class RerankedEvalResults:
    """The plain evaluation plus its reranked figures."""

    retrieval: EvalResults
    reranker_id: str
    fusion_alpha: float
    rerank_config: dict = field(default_factory=dict)
    results: list[RerankedTaskResult] = field(default_factory=list)

    def average(self, pool: str, instructions: str, variant: str) -> float | None:
        rows = [r for r in self.results if r.pool == pool and r.instructions == instructions]
        return float(np.mean([r.score(variant) for r in rows])) if rows else None

    def to_dict(self) -> dict:
        settings = sorted({(r.pool, r.instructions) for r in self.results})
        averages = {f"{p}/{i}": {v: self.average(p, i, v) for v in VARIANTS} for p, i in settings}
        rerank = {"reranker_id": self.reranker_id, "fusion_alpha": self.fusion_alpha, "config": self.rerank_config,
                  "results": [asdict(r) for r in self.results], "averages": averages}
        return {**self.retrieval.to_dict(), "rerank": rerank}


def run_rerank_evaluation(encoder: Encoder, reranker: Reranker, data_dir: str | os.PathLike,
                          config: EvalConfig | None = None, output_dir: str | os.PathLike | None = None, *,
                          rerank_config: Mapping | None = None) -> RerankedEvalResults:
    """:func:`run_evaluation` with every run reranked; see the module docstring for what is reported."""
    config = config or EvalConfig()
    config.validate()
    directory = MBEIRDirectory(data_dir, image_root=config.image_root)
    check_rerankable(reranker, directory, config)
    hook = RunReranker(reranker, directory, config.split, output_dir)
    retrieval = run_evaluation(encoder, data_dir, config, output_dir, on_run=hook)
    results = RerankedEvalResults(retrieval, reranker.reranker_id, hook.fusion_alpha, dict(rerank_config or {}),
                                  hook.results)
    if output_dir is not None:
        # replaces the runner's results.json: the same content plus the "rerank" section
        write_json(Path(output_dir) / "results.json", results.to_dict())
        write_json(Path(output_dir) / "rerank_config.json",
                   {**results.rerank_config, "reranker_id": reranker.reranker_id, "fusion_alpha": hook.fusion_alpha})
    return results


# ----------------------------------------------------------------------------- refusing what cannot be read


def check_rerankable(reranker: Reranker, directory: MBEIRDirectory, config: EvalConfig) -> None:
    """Refuse, before any work, a text-only reranker on tasks or pools with images (naming them)."""
    if can_read_images(reranker):
        return
    tasks = directory.tasks(config.split)
    chosen = [t for t in tasks if not config.tasks or t.name in config.tasks]
    text_tasks = [t.name for t in tasks if _is_text_only(t.task.query_modality, t.task.cand_modality)]
    refused = [f"{t.name} ({t.task.arrow})" for t in chosen
               if not _is_text_only(t.task.query_modality, t.task.cand_modality)]
    if refused:
        hint = (f"rerank text tasks only (--set tasks=[{','.join(text_tasks)}])" if text_tasks
                else "this split has no text-only task")
        raise ConfigError(f"the text-only reranker {reranker.reranker_id} cannot judge images, but task(s) "
                          f"{', '.join(refused)} have image queries or candidates; {hint}, or use a VLM reranker "
                          "(kind: vlm)")
    if "global" in config.pools:
        path = directory.global_pool(config.split)
        example = _first_image_candidate(path) if path.is_file() else None
        if example is not None:
            raise ConfigError(f"the text-only reranker {reranker.reranker_id} cannot judge images, but the global "
                              f"pool {path} holds image candidates (e.g. {example!r}) that a text query can "
                              "retrieve; evaluate the local pools only (--set pools=[local]) or use a VLM reranker "
                              "(kind: vlm)")


def _is_text_only(*modalities: Modality) -> bool:
    return all(m == Modality.TEXT for m in modalities)


def _first_image_candidate(path: Path) -> str | None:
    # stops at the first image: a mixed pool is refused after reading a few lines
    return next((c.did for c in iter_candidates(path) if c.image is not None), None)


# ----------------------------------------------------------------------------- the hook


class RunReranker:
    """The ``on_run`` hook: reranks one scored run, evaluates the three orders, writes their runs."""

    def __init__(self, reranker: Reranker, directory: MBEIRDirectory, split: str,
                 output_dir: str | os.PathLike | None = None):
        self.reranker, self.directory, self.split = reranker, directory, split
        self.out = Path(output_dir) if output_dir is not None else None
        self.normalization = str(getattr(reranker, "normalization", "minmax"))
        self.fusion_alpha = float(reranker.alpha) or DEFAULT_FUSION_ALPHA
        self.results: list[RerankedTaskResult] = []

    def __call__(self, scored: ScoredRun) -> None:
        start = time.perf_counter()
        details = self._rerank(scored)
        seconds = time.perf_counter() - start
        after = {qid: fuse_results(rows, 0.0, self.normalization) for qid, rows in details.items()}
        fused = {qid: fuse_results(rows, self.fusion_alpha, self.normalization) for qid, rows in details.items()}
        result, names = scored.result, list(scored.result.scores)
        row = RerankedTaskResult(
            task=result.task, task_id=result.task_id, arrow=result.arrow, pool=result.pool,
            instructions=result.instructions, metric=result.metric, before=dict(result.scores),
            after=evaluate(results_to_run(after), scored.qrels, names),
            fused=evaluate(results_to_run(fused), scored.qrels, names), fusion_alpha=self.fusion_alpha,
            top_k=self.reranker.top_k, pairs=sum(r.reranked for rows in details.values() for r in rows),
            seconds=seconds)
        self.results.append(row)
        logger.info("%s %s/%s reranked (%d pairs, %.1f s): %s %.4f -> %.4f, fused (alpha %.2f) %.4f", row.task,
                    row.pool, row.instructions, row.pairs, seconds, row.metric, row.score("before"),
                    row.score("after"), self.fusion_alpha, row.score("fused"))
        if self.out is not None:
            self._write(row, after, fused, details)

    def _rerank(self, scored: ScoredRun) -> dict[str, list[RerankResult]]:
        """The reranker's results per query (one batched pass; only the heads' items are read)."""
        pool_file = self.directory.global_pool(self.split) if scored.result.pool == "global" else scored.task.local_pool
        queries = {item.id: item for item in as_items(scored.queries, self.directory.images)}
        candidates = load_candidate_items(pool_file, _heads(scored.run, self.reranker.top_k), self.directory.images)
        # progress bars follow the reranker's own show_progress setting
        return rerank_run(self.reranker, scored.run, queries, candidates, scored.instructions)[1]

    def _write(self, row: RerankedTaskResult, after: Mapping[str, list[RerankResult]],
               fused: Mapping[str, list[RerankResult]], details: Mapping[str, list[RerankResult]]) -> None:
        assert self.out is not None
        setting = f"{row.pool}-{row.instructions}"
        for name, ordered in (("reranked", after), ("fused", fused)):
            write_run(self.out / "runs" / f"{setting}-{name}" / f"{row.task}.trec", results_to_run(ordered),
                      tag=f"mmembed-{setting}-{name}")
        write_pair_scores(self.out / "rerank" / setting / f"{row.task}.jsonl", details)


def _heads(run: Mapping[str, Mapping[str, float]], top_k: int) -> set[str]:
    """Ids of the candidates that will be reranked: each query's top ``top_k``."""
    wanted: set[str] = set()
    for docs in run.values():
        wanted.update(sorted(docs, key=lambda did: -docs[did])[:top_k])
    return wanted


def load_candidate_items(pool_file: Path, wanted: set[str], images: ImageStore) -> dict[str, Item]:
    """The items of the ``wanted`` candidates of a pool file (streamed: pools can be large)."""
    found: dict[str, Item] = {}
    for candidate in iter_candidates(pool_file):
        if candidate.did in wanted:
            found[candidate.did] = as_items([candidate], images)[0]
            if len(found) == len(wanted):
                break
    return found


def write_pair_scores(path: Path, details: Mapping[str, Sequence[RerankResult]]) -> None:
    """One JSON line per reranked pair: qid, did, retrieval rank and score, rerank score."""
    write_jsonl(path, ({"qid": qid, "did": r.id, "retrieval_rank": r.retrieval_rank,
                        "retrieval_score": r.retrieval_score, "rerank_score": r.rerank_score}
                       for qid, rows in details.items()
                       for r in sorted(rows, key=lambda r: r.retrieval_rank) if r.reranked))
