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
from mmembed.data.mbeir import iter_candidates, read_qrels, read_queries
from mmembed.embeddings.pool_cache import MODALITY_CODES, EmbeddedPool, PoolEmbeddingCache
from mmembed.encoders.base import Encoder, as_items
from mmembed.errors import ConfigError, DataError, Location
from mmembed.eval.metrics import evaluate, parse_metric, topk_to_run
from mmembed.eval.text_format import TEXT_FORMATS, with_text_format
from mmembed.eval.trec import write_run
from mmembed.fileio import write_json
from mmembed.index.faiss_index import FaissIndex
from mmembed.instructions import INSTRUCTION_MODES, InstructionRegistry
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
    embeddings_dir: str | None = None
    show_progress: bool = True

    def validate(self) -> None:
        for pool in self.pools:
            if pool not in POOLS:
                raise ConfigError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")
        for mode in self.instruction_modes:
            if mode not in INSTRUCTION_MODES:
                raise ConfigError(f"unknown instruction mode {mode!r}; expected one of {', '.join(INSTRUCTION_MODES)}")
        for key in ("batch_size", "depth", "modality_error_k", "max_queries"):
            value = getattr(self, key)
            if not (value is None and key == "max_queries") and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
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


@dataclass
class EvalResults:
    config: dict
    results: list[TaskResult] = field(default_factory=list)
    instructions: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def select(self, pool: str, instructions: str) -> list[TaskResult]:
        return [r for r in self.results if r.pool == pool and r.instructions == instructions]

    def average(self, pool: str, instructions: str) -> float | None:
        rows = self.select(pool, instructions)
        return float(np.mean([r.score for r in rows])) if rows else None

    def to_dict(self) -> dict:
        settings = sorted({(r.pool, r.instructions) for r in self.results})
        return {"config": self.config, "results": [asdict(r) for r in self.results],
                "averages": {f"{p}/{i}": self.average(p, i) for p, i in settings},
                "instructions": self.instructions}


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


def run_evaluation(encoder: Encoder, data_dir: str | os.PathLike, config: EvalConfig | None = None,
                   output_dir: str | os.PathLike | None = None, *,
                   on_run: Callable[[ScoredRun], None] | None = None) -> EvalResults:
    """Evaluate ``encoder`` on an M-BEIR directory; write results under ``output_dir`` if given.

    ``on_run`` is called with every scored run as it is produced (mmembed.eval.rerank_eval uses it).
    """
    config = config or EvalConfig()
    config.validate()
    directory = MBEIRDirectory(data_dir, image_root=config.image_root)
    encoder = with_text_format(encoder, config.text_format)
    tasks = directory.select_tasks(config.split, config.tasks or None)
    registry = directory.instructions() if any(m != "none" for m in config.instruction_modes) else None
    cache = PoolEmbeddingCache(encoder, directory.images, config.cache_dir, config.batch_size, config.show_progress)
    global_pool = None
    if "global" in config.pools or config.embeddings_dir:
        path = directory.global_pool(config.split)
        if not path.is_file():
            raise DataError("global candidate pool not found (needed for the global-pool setting and for "
                            "precomputed embeddings)", Location(str(path)))
        global_pool = _global_vectors(cache, path, config, encoder.encoder_id)

    results = EvalResults(config={**asdict(config), "data_dir": str(data_dir), "encoder_id": encoder.encoder_id,
                                  "mmembed_version": __version__})
    out = Path(output_dir) if output_dir else None
    for task in tasks:
        queries = read_queries(task.queries)[: config.max_queries]
        if not queries:
            raise DataError("no query in this file", Location(str(task.queries)))
        check_task_queries(task, queries)
        qrels, unjudged = _qrels_for(task, queries)
        logger.info("%s (%s): local pool %s", task.name, task.split, _relative(task.local_pool, directory.root))
        for mode in config.instruction_modes:
            chosen = _instructions(queries, task, registry, mode, config.seed)
            results.instructions[f"{task.name}/{mode}"] = dict(zip([q.qid for q in queries], chosen))
            query_vectors = encoder.encode_queries(as_items(queries, directory.images), chosen,
                                                   batch_size=config.batch_size, show_progress=config.show_progress)
            for pool_name in config.pools:
                pool = global_pool if pool_name == "global" else _local_pool(cache, task, global_pool)
                _check_positives(task, queries, qrels, pool, pool_name)
                result, run = _score(task, queries, qrels, query_vectors, pool, pool_name, mode, config)
                result.pool_file = _relative(task.local_pool if pool_name == "local" else
                                             directory.global_pool(config.split), directory.root)
                result.queries_without_qrels = len(unjudged)
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


def _check_positives(task: TaskFiles, queries: list[Query], qrels: dict[str, dict[str, int]], pool: EmbeddedPool,
                     pool_name: str) -> None:
    """A positive missing from the pool could never be retrieved: refuse rather than count a miss.

    Both the judgments and the queries' own ``pos_cand_list`` are checked, as ``data validate`` does.
    """
    judged = [(qid, did, task.qrels) for qid, docs in qrels.items() for did, grade in docs.items() if grade > 0]
    listed = [(q.qid, did, task.queries) for q in queries for did in q.pos]
    missing = [(qid, did, file) for qid, did, file in judged + listed if did not in pool.position]
    if missing:
        qid, did, file = missing[0]
        raise DataError(f"{len(missing)} positive(s) of {task.name} are not in its {pool_name} pool (first: query "
                        f"{qid!r} -> {did!r}); `mmembed data validate` lists them", Location(str(file), item=qid))


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _instructions(queries: list[Query], task: TaskFiles, registry: InstructionRegistry | None, mode: str,
                  seed: int) -> list[str | None]:
    if mode == "none":
        return [None] * len(queries)
    assert registry is not None
    return [registry.choose(q, task.task.cand_modality, mode, seed) for q in queries]  # type: ignore[arg-type]


def _global_vectors(cache: PoolEmbeddingCache, path: Path, config: EvalConfig, encoder_id: str) -> EmbeddedPool:
    if config.embeddings_dir:
        from mmembed.embeddings import load_embedded_pool

        return load_embedded_pool(config.embeddings_dir, path, encoder_id)
    return cache.embed_file(path)


def _local_pool(cache: PoolEmbeddingCache, task: TaskFiles, global_pool: EmbeddedPool | None) -> EmbeddedPool:
    if not task.local_pool.is_file():
        raise DataError("local candidate pool not found", Location(str(task.local_pool)))
    if global_pool is not None:
        # Local pools are subsets of the union: reuse its vectors instead of embedding twice.
        ids = [c.did for c in iter_candidates(task.local_pool)]
        if all(did in global_pool.position for did in ids):
            return global_pool.subset(ids)
    return cache.embed_file(task.local_pool)


def _score(task: TaskFiles, queries: list[Query], qrels, query_vectors: np.ndarray, pool: EmbeddedPool,
           pool_name: str, mode: str, config: EvalConfig) -> tuple[TaskResult, dict]:
    depth = min(config.depth, len(pool.ids))
    index = FaissIndex(dim=pool.vectors.shape[1])
    index.add(pool.ids, pool.vectors)
    ids, scores = index.search(query_vectors, depth)
    run = topk_to_run([q.qid for q in queries], ids, scores)
    metric = headline_metric(task, config.metric)
    names = [metric, *[m for m in config.extra_metrics if m != metric]]
    values = evaluate(run, qrels, names)
    modality_error = None
    if pool_name == "global":
        modality_error = _modality_error(ids, pool, task, config.modality_error_k)
    result = TaskResult(task=task.name, task_id=task.task.id, arrow=task.task.arrow, pool=pool_name,
                        instructions=mode, num_queries=len(queries), pool_size=len(pool.ids), metric=metric,
                        score=values[metric], scores=values, modality_error=modality_error)
    return result, run


def _modality_error(ids, pool: EmbeddedPool, task: TaskFiles, k: int) -> float:
    """Share of the top-k results whose modality differs from the task's target modality."""
    position = pool.position
    target = MODALITY_CODES[task.task.cand_modality]
    wrong = total = 0
    for row in ids:
        for did in list(row)[:k]:
            if did is None:
                continue
            total += 1
            wrong += int(pool.modalities[position[did]] != target)
    return wrong / total if total else 0.0
