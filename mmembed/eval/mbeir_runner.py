"""The M-BEIR evaluation runner.

Scores every task of a split against its local pool and against the global pool (the union of all
pools, every modality mixed — where modality bias shows), with and without instructions. Writes
per-task results as JSON, TREC runs, and the resolved configuration with the seed and the
instruction chosen for every query, so that a run can be reproduced exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmembed.data.layout import MBEIRDirectory, TaskFiles, check_task_queries
from mmembed.data.mbeir import read_qrels, read_queries
from mmembed.embeddings.pool_cache import MODALITY_CODES
from mmembed.embeddings.queries import choose_instructions
from mmembed.encoders.base import Encoder
from mmembed.errors import ConfigError, DataError, Location
from mmembed.eval.inputs import EvalInputs
from mmembed.eval.metrics import evaluate, parse_metric, topk_to_run
from mmembed.eval.split_search import Found
from mmembed.eval.text_format import TEXT_FORMATS, with_text_format
from mmembed.eval.trec import write_run
from mmembed.fileio import write_json
from mmembed.instructions import INSTRUCTION_MODES
from mmembed.types import Query, Run
from mmembed.version import __version__

logger = logging.getLogger(__name__)

#: M-BEIR reports hit@5 everywhere except these datasets, which use hit@10.
HIT10_DATASETS = ("fashion200k", "fashioniq")
POOLS = ("local", "global")


@dataclass
class EvalConfig:
    """What to evaluate and how; saved with every result."""

    split: str = "test"
    pools: Sequence[str] = POOLS
    instruction_modes: Sequence[str] = ("random", "none")
    seed: int = 0
    #: The headline metric of each task; ``None`` means M-BEIR's choice (hit@5, hit@10 for fashion).
    metric: str | None = None
    #: Metrics reported besides the headline one.
    extra_metrics: Sequence[str] = ("recall@5", "ndcg@10", "mrr@10")
    #: Depth retrieved per query (at least the largest k of any metric).
    depth: int = 50
    modality_error_k: int = 5
    tasks: Sequence[str] | None = None
    batch_size: int = 64
    max_queries: int | None = None
    cache_dir: str | None = None
    #: Where the images' relative paths start (default: the data directory).
    image_root: str | None = None
    #: "raw" (MM-Embed's code) or "uniir" (UniIR's format_string on every text); see eval.text_format.
    text_format: str = "raw"
    #: ``mmembed encode`` output of the split's global pool: its vectors are used instead of
    #: encoding the pools (local pools are taken from it); checked against pool file and encoder.
    #: It is searched streamed, chunk by chunk, never loaded whole.
    embeddings_dir: str | None = None
    #: ``mmembed encode DATA --queries`` output: the queries' vectors, so no encoder is needed.
    query_embeddings_dir: str | None = None
    #: The global pool's index: ``exact`` (streamed exact top-k), ``faiss`` (exact FAISS in memory),
    #: ``faiss-ivf``, ``faiss-hnsw``, ``milvus`` (approximate: recall reported), or a saved index directory.
    index: str = "exact"
    #: Memory the exact search may use (e.g. ``"2GB"``; default half of what is available).
    memory_limit: str | None = None
    #: Queries per task and mode an approximate index's recall is measured on (seeded sample).
    recall_sample: int = 1000
    #: Where the exact search's matrix products run: ``auto`` (a CUDA GPU when present), ``cpu``, ``cuda``.
    search_device: str = "auto"
    #: Fuse every dense run with BM25 over the pool's texts: ``rrf`` or ``weighted`` (mmembed.eval.hybrid).
    hybrid: str | None = None
    #: Score each of these embedding dimensions (truncated, renormalised; mmembed.eval.dims); None: the full one.
    dims: list[int] | None = None
    show_progress: bool = True

    def validate(self) -> None:
        for pool in self.pools:
            if pool not in POOLS:
                raise ConfigError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")
        for mode in self.instruction_modes:
            if mode not in INSTRUCTION_MODES:
                raise ConfigError(f"unknown instruction mode {mode!r}; expected one of {', '.join(INSTRUCTION_MODES)}")
        if self.memory_limit is not None:
            from mmembed.index.topk import parse_memory

            parse_memory(self.memory_limit)
        for key in ("batch_size", "depth", "modality_error_k", "max_queries", "recall_sample"):
            value = getattr(self, key)
            if not (value is None and key == "max_queries") and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.hybrid is not None:
            from mmembed.index.hybrid import check_mode

            check_mode(self.hybrid)
        if self.dims is not None and (not self.dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                           for d in self.dims)):
            raise ConfigError(f"dims must be a list of positive integers, got {self.dims!r}")
        if self.text_format not in TEXT_FORMATS:
            raise ConfigError(f"text_format must be one of {', '.join(TEXT_FORMATS)}, got {self.text_format!r}")
        metrics = [parse_metric(m) for m in [*(self.extra_metrics or ()), *([self.metric] if self.metric else [])]]
        deepest = max([m.k for m in metrics] + [10, self.modality_error_k])
        if self.depth < deepest:
            raise ConfigError(f"depth {self.depth} is smaller than the deepest metric cut-off {deepest}")


@dataclass
class TaskResult:
    task: str  # e.g. emoji_task0
    task_id: int
    arrow: str
    pool: str
    instructions: str
    num_queries: int
    pool_size: int
    metric: str
    score: float
    scores: dict[str, float]
    modality_error: float | None = None
    #: The pool file scored against (relative to the data directory); "global" for the union.
    pool_file: str = ""
    #: Queries of the task that have no line in its qrels file: counted, named in the log, not scored.
    queries_without_qrels: int = 0
    #: The index the run came from (see EvalConfig.index; local pools are always searched exactly).
    index: str = "exact"
    #: An approximate index's recall against exact search, ``{"index_recall@k": value}`` (None when exact).
    index_recall: dict[str, float] | None = None


@dataclass
class EvalResults:
    config: dict
    results: list[TaskResult] = field(default_factory=list)
    instructions: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: How the split was searched (index, passes over the vectors, memory, peak RSS).
    search: dict = field(default_factory=dict)

    def select(self, pool: str, instructions: str) -> list[TaskResult]:
        return [r for r in self.results if r.pool == pool and r.instructions == instructions]

    def average(self, pool: str, instructions: str) -> float | None:
        rows = self.select(pool, instructions)
        return float(np.mean([r.score for r in rows])) if rows else None

    def to_dict(self) -> dict:
        settings = sorted({(r.pool, r.instructions) for r in self.results})
        return {"config": self.config, "results": [asdict(r) for r in self.results],
                "averages": {f"{p}/{i}": self.average(p, i) for p, i in settings},
                "instructions": self.instructions, "search": self.search}


@dataclass
class ScoredRun:
    """One retrieval run as scored, handed to ``run_evaluation``'s ``on_run`` hook (e.g. to rerank it)."""

    task: TaskFiles
    queries: list[Query]
    qrels: dict[str, dict[str, int]]
    instructions: dict[str, str | None]  # qid -> the instruction the query was encoded with
    run: Run
    result: TaskResult


def headline_metric(task: TaskFiles, override: str | None) -> str:
    if override:
        return override
    return "hit@10" if task.dataset in HIT10_DATASETS else "hit@5"


def run_evaluation(encoder: Encoder | None, data_dir: str | os.PathLike, config: EvalConfig | None = None,
                   output_dir: str | os.PathLike | None = None, *,
                   on_run: Callable[[ScoredRun], None] | None = None) -> EvalResults:
    """Evaluate ``encoder`` on an M-BEIR directory; write results under ``output_dir`` if given.

    ``encoder`` may be None when ``config`` names precomputed pool and query embeddings. Every
    query is embedded first; then one exact search of the split answers every task, mode and pool
    (see :mod:`mmembed.eval.split_search`). ``on_run`` is called with every scored run as it is
    produced (mmembed.eval.rerank_eval uses it).
    """
    config = config or EvalConfig()
    config.validate()
    if config.dims:
        raise ConfigError("dims: score several dimensions with mmembed.eval.dims.run_dims_evaluation "
                          "(or mmembed evaluate --set dims=[...])")
    directory = MBEIRDirectory(data_dir, image_root=config.image_root)
    if encoder is None and not (config.embeddings_dir and config.query_embeddings_dir):
        raise ConfigError("evaluation without an encoder needs precomputed pool and query embeddings "
                          "(embeddings_dir and query_embeddings_dir)")
    encoder = with_text_format(encoder, config.text_format) if encoder is not None else None
    tasks = directory.select_tasks(config.split, config.tasks or None)
    registry = directory.instructions() if any(m != "none" for m in config.instruction_modes) else None
    inputs = EvalInputs(encoder, directory, config, tasks)
    encoder_id = inputs.encoder_id
    results = EvalResults(config={**asdict(config), "data_dir": str(data_dir), "encoder_id": encoder_id,
                                  "mmembed_version": __version__})
    prepared = []
    for task in tasks:
        queries = read_queries(task.queries)[: config.max_queries]
        if not queries:
            raise DataError("no query in this file", Location(str(task.queries)))
        check_task_queries(task, queries)
        qrels, unjudged = _qrels_for(task, queries)
        local = inputs.local_pool(task) if "local" in config.pools else None
        for pool_name in config.pools:
            _check_positives(task, queries, qrels, inputs.contains(pool_name, local), pool_name)
        for mode in config.instruction_modes:
            chosen = choose_instructions(queries, task, registry, mode, config.seed)
            results.instructions[f"{task.name}/{mode}"] = dict(zip([q.qid for q in queries], chosen))
            vectors = inputs.query_vectors(task, queries, chosen, mode)
            prepared.append((task, queries, qrels, unjudged, mode, local, vectors))
    found, report = inputs.search(prepared)
    if config.hybrid:
        from mmembed.eval.hybrid import fuse_found

        found = fuse_found(found, prepared, directory.global_pool(config.split), config.hybrid, config.depth)
    results.search = report.to_dict()
    out = Path(output_dir) if output_dir else None
    for task, queries, qrels, unjudged, mode, local, _ in prepared:
        logger.info("%s (%s): local pool %s", task.name, task.split, _relative(task.local_pool, directory.root))
        for pool_name in config.pools:
            hits = found[(task.name, mode, pool_name)]
            pool_size = len(inputs.pool) if pool_name == "global" else local.size  # type: ignore[arg-type,union-attr]
            result, run = _score(task, queries, qrels, hits, pool_size, pool_name, mode, config)
            result.pool_file = _relative(task.local_pool if pool_name == "local" else
                                         directory.global_pool(config.split), directory.root)
            result.queries_without_qrels = len(unjudged)
            if pool_name == "global":
                result.index, result.index_recall = config.index, hits.recall
            results.results.append(result)
            logger.info("%s %s/%s: %s = %.4f", task.name, pool_name, mode, result.metric, result.score)
            if out is not None:
                write_run(out / "runs" / f"{pool_name}-{mode}" / f"{task.name}.trec", run,
                          tag=f"mmembed-{pool_name}-{mode}")
            if on_run is not None:
                on_run(ScoredRun(task, queries, qrels, results.instructions[f"{task.name}/{mode}"], run, result))
    if out is not None:
        write_json(out / "results.json", results.to_dict())
        write_json(out / "config.json", results.config)
        write_json(out / "instructions.json", results.instructions)
    return results


def _qrels_for(task: TaskFiles, queries: list[Query]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """The judgments of ``queries`` and the ids of those the qrels file has no line for.

    Unjudged queries are not scored (as trec_eval ignores them) and are reported, never filled in
    from ``pos_cand_list``. Only a task without any qrels file takes its relevance from the positive
    lists, with a warning that says so.
    """
    if not task.qrels.is_file():
        logger.warning("%s: no qrels file %s; relevance taken from each query's pos_cand_list", task.name,
                       task.qrels)
        return {q.qid: dict.fromkeys(q.pos, 1) for q in queries}, []
    qrels = read_qrels(task.qrels)
    missing = [q.qid for q in queries if q.qid not in qrels]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        logger.warning("%s: %d of %d queries have no line in %s and are not scored: %s", task.name, len(missing),
                       len(queries), task.qrels.name, shown)
    return {q.qid: qrels[q.qid] for q in queries if q.qid in qrels}, missing


def _check_positives(task: TaskFiles, queries: list[Query], qrels: dict[str, dict[str, int]],
                     contains: Callable[[list[str]], np.ndarray], pool_name: str) -> None:
    """A positive missing from the pool could never be retrieved: refuse rather than count a miss.

    Both the judgments and the queries' own ``pos_cand_list`` are checked, as ``data validate`` does.
    """
    judged = [(qid, did, task.qrels) for qid, docs in qrels.items() for did, grade in docs.items() if grade > 0]
    listed = [(q.qid, did, task.queries) for q in queries for did in q.pos]
    pairs = judged + listed
    present = contains([did for _, did, _ in pairs]) if pairs else np.ones(0, dtype=bool)
    missing = [pair for pair, ok in zip(pairs, present) if not ok]
    if missing:
        qid, did, file = missing[0]
        raise DataError(f"{len(missing)} positive(s) of {task.name} are not in its {pool_name} pool (first: query "
                        f"{qid!r} -> {did!r}); `mmembed data validate` lists them", Location(str(file), item=qid))


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _score(task: TaskFiles, queries: list[Query], qrels, hits: Found, pool_size: int, pool_name: str, mode: str,
           config: EvalConfig) -> tuple[TaskResult, dict]:
    run = topk_to_run([q.qid for q in queries], hits.ids, hits.scores)
    metric = headline_metric(task, config.metric)
    names = [metric, *[m for m in config.extra_metrics if m != metric]]
    values = evaluate(run, qrels, names)
    modality_error = None
    if pool_name == "global":
        modality_error = _modality_error(hits, task, config.modality_error_k)
    result = TaskResult(task=task.name, task_id=task.task.id, arrow=task.task.arrow, pool=pool_name,
                        instructions=mode, num_queries=len(queries), pool_size=pool_size, metric=metric,
                        score=values[metric], scores=values, modality_error=modality_error)
    return result, run


def _modality_error(hits: Found, task: TaskFiles, k: int) -> float:
    """Share of the top-k results whose modality differs from the task's target modality."""
    codes = hits.modalities[:, :k]
    present = codes >= 0
    total = int(present.sum())
    wrong = int((present & (codes != MODALITY_CODES[task.task.cand_modality])).sum())
    return wrong / total if total else 0.0
