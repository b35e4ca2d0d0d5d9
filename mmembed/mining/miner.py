"""``mmembed mine``: hard negatives for every training query, with a trained encoder.

M-BEIR data: every task's training queries search the split's global pool (all modalities mixed)
and get modality-aware negatives (:mod:`mmembed.mining.rule`). The output directory holds one
query file per task, named like the task, with ``neg_cand_list`` filled and a parallel
``neg_cand_types`` list (``type1`` / ``type2`` / ``random``) that M-BEIR readers ignore;
``mining.json`` (written last: its presence marks a finished run) holds the configuration, the
encoder id and the statistics. Training reads the directory through ``data.mbeir[].negatives``.

BEIR data (a directory with ``corpus.jsonl``): the text rule, written as ``negatives.jsonl`` rows
``{"qid", "neg_cand_list", "neg_cand_types"}`` that ``data.beir[].hard_negatives`` reads.

Work is cut into resumable chunks (:mod:`mmembed.mining.jobs`); ``shard=(i, n)`` lets n processes
split them (each embeds the pool itself, or reads it from a shared ``cache_dir``). Under
``torchrun`` the shard comes from RANK / WORLD_SIZE.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmembed.data.layout import MBEIRDirectory, TaskFiles, check_task_queries
from mmembed.data.mbeir import query_to_dict, read_candidates, read_queries
from mmembed.embeddings.pool_cache import (
    IMAGE_FINGERPRINTS,
    MODALITY_CODES,
    EmbeddedPool,
    ImageFingerprints,
    PoolEmbeddingCache,
    candidate_image_paths,
    file_sha256,
)
from mmembed.encoders.base import Encoder, Item, as_items
from mmembed.errors import ConfigError, DataError, Location
from mmembed.index.base import VectorIndex
from mmembed.index.build import search_index
from mmembed.instructions import INSTRUCTION_MODES
from mmembed.mining.folds import check_fold, fold_of
from mmembed.mining.jobs import ChunkedJob, MiningResult, MiningStats, default_shard, merge
from mmembed.mining.rule import (
    TYPE1,
    TYPE2,
    NegativeRule,
    modality_aware_negatives,
    modality_aware_sets,
    window_negatives,
    window_set,
)
from mmembed.types import Query

logger = logging.getLogger(__name__)

BEIR_OUTPUT = "negatives.jsonl"


@dataclass
class MiningConfig:
    """What ``mmembed mine`` does; saved in ``mining.json``."""

    split: str = "train"
    #: Task names to mine (M-BEIR); ``None``: every task of the split.
    tasks: list[str] | None = None
    k: int = 50
    #: 1-based inclusive ranks of type-2 (and text) negatives.
    window: list[int] = field(default_factory=lambda: [46, 50])
    num_type1: int = 1
    num_type2: int = 1
    random_fallback: bool = True
    #: Type 1 also from the wrong-modality candidates of the top ``type1_depth`` ranks below the
    #: positive (0: the paper's rule; see :class:`~mmembed.mining.rule.NegativeRule`).
    type1_depth: int = 0
    #: Instruction of each query while mining (as at training time: ``random`` seeded per query).
    instruction_mode: str = "random"
    #: BEIR data only: the instruction queries are encoded with (none by default).
    beir_instruction: str | None = None
    seed: int = 0
    chunk_size: int = 2048
    batch_size: int = 64
    cache_dir: str | None = None
    #: Store every type-1 and type-2 candidate of each query (``neg_cand_sets``), which training
    #: samples afresh each epoch; ``False`` writes only the fixed sample (``neg_cand_list``).
    typed_sets: bool = True
    #: The k of the mining statistics' modality error (the evaluation's ``modality_error_k``).
    modality_error_k: int = 5
    #: Cross-fitting: mine only the training queries of fold ``fold`` of ``folds`` (by a seeded
    #: hash of the qid, :func:`mmembed.mining.folds.fold_of`); ``folds: 1`` mines every query.
    folds: int = 1
    fold: int = 0
    #: ``mmembed encode`` output of the split's global pool: its vectors instead of encoding the pool.
    embeddings_dir: str | None = None
    #: The pool's index (as ``mmembed evaluate --index``): ``exact`` (blocked exact top-k, mmembed's tie
    #: rule), ``faiss``, ``faiss-ivf``, ``faiss-hnsw``, ``milvus`` or a saved index directory of this pool.
    index: str = "exact"
    #: Memory the exact search may use (e.g. ``"2GB"``; default half of what is available).
    memory_limit: str | None = None

    def identity(self) -> dict:
        """The settings mined negatives depend on: the exact index's memory setting changes nothing, so an
        exact run keeps the identity it had before these keys existed (finished runs are reused)."""
        settings = asdict(self)
        settings.pop("memory_limit")
        if settings["index"] == "exact":
            settings.pop("index")
        if settings["type1_depth"] == 0:
            settings.pop("type1_depth")
        return settings

    def rule(self) -> NegativeRule:
        self.validate()
        return self._rule()

    def _rule(self) -> NegativeRule:
        return NegativeRule(self.k, (int(self.window[0]), int(self.window[1])), self.num_type1, self.num_type2,
                            self.random_fallback, self.type1_depth)

    def validate(self) -> None:
        """Every key checked before any encoder is loaded; the message names the key."""
        if len(self.window) != 2:
            raise ConfigError(f"window must be two ranks [low, high], got {self.window}")
        self._rule().validate()
        if self.instruction_mode not in INSTRUCTION_MODES:
            raise ConfigError(f"instruction_mode: unknown mode {self.instruction_mode!r}; expected one of "
                              f"{', '.join(INSTRUCTION_MODES)}")
        check_fold(self.folds, self.fold)
        for key in ("chunk_size", "batch_size", "modality_error_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if not self.split:
            raise ConfigError("split must not be empty")
        if self.memory_limit is not None:
            from mmembed.index.topk import parse_memory

            parse_memory(self.memory_limit)


# ----------------------------------------------------------------------------- driver


def _embed_queries(encoder: Encoder, items: list[Item], instructions: list[str | None], config: MiningConfig,
                   show_progress: bool) -> np.ndarray:
    return encoder.encode_queries(items, instructions, batch_size=config.batch_size, show_progress=show_progress)


def _index(ids: list[str], vectors: np.ndarray, config: MiningConfig, encoder_id: str) -> VectorIndex:
    """The index the queries search (the vectors are searched in place by the exact index, not copied)."""
    return search_index(config.index, ids=ids, vectors=vectors, encoder_id=encoder_id,
                        memory_limit=config.memory_limit)


def _task_queries(task: TaskFiles) -> list[Query]:
    """The task file's queries, refused when one does not fit the task (as validate and evaluate do)."""
    queries = read_queries(task.queries)
    check_task_queries(task, queries)
    return queries


def _pool_vectors(cache: PoolEmbeddingCache, pool_path: Path, config: MiningConfig,
                  encoder_id: str) -> EmbeddedPool:
    """The pool's vectors: precomputed (``embeddings_dir``, checked against pool and encoder) or encoded."""
    if config.embeddings_dir:
        from mmembed.embeddings import load_embedded_pool

        return load_embedded_pool(config.embeddings_dir, pool_path, encoder_id)
    return cache.embed_file(pool_path)


def mine_mbeir(encoder: Encoder, data_dir: str | os.PathLike, output_dir: str | os.PathLike,
               config: MiningConfig | None = None, *, shard: tuple[int, int] | None = None,
               show_progress: bool = True) -> MiningResult:
    """Mine modality-aware negatives for the training queries of an M-BEIR directory."""
    config = config or MiningConfig()
    rule = config.rule()
    directory = MBEIRDirectory(data_dir)
    out = Path(output_dir)
    tasks = directory.select_tasks(config.split, config.tasks)
    pool_path = directory.global_pool(config.split)
    if not pool_path.is_file():
        raise DataError("the split's global candidate pool is needed for mining", Location(str(pool_path)))
    queries_of = {task.name: _in_fold(_task_queries(task), config) for task in tasks}
    candidates = read_candidates(pool_path)
    _check_positives(tasks, queries_of, {c.did for c in candidates}, pool_path)
    inputs = _mbeir_inputs(directory, tasks, pool_path, candidates, queries_of, config, out)
    job = ChunkedJob(out, config.identity(), encoder.encoder_id, shard or default_shard(), inputs)
    if (done := job.finished()) is not None:
        return done
    job.start()
    units = {t.name: (f"{t.name}.jsonl", len(queries_of[t.name])) for t in tasks}
    extra = {"data_dir": str(data_dir), "pool": str(pool_path)}
    if job.done(units, config.chunk_size):  # e.g. killed while merging: nothing to embed again
        return merge(job, units, config.chunk_size, extra)
    cache = PoolEmbeddingCache(encoder, directory.images, config.cache_dir, config.batch_size, show_progress)
    pool = _pool_vectors(cache, pool_path, config, encoder.encoder_id)
    index = _index(pool.ids, pool.vectors, config, encoder.encoder_id)
    names = [m for m, _ in sorted(MODALITY_CODES.items(), key=lambda kv: kv[1])]
    pool_modality = {did: names[code].value for did, code in zip(pool.ids, pool.modalities)}
    fallbacks = _fallback_groups(pool_modality)
    registry = directory.instructions() if config.instruction_mode != "none" else None

    for task in tasks:
        queries = queries_of[task.name]
        target = task.task.cand_modality.value

        def work(start: int, stop: int, queries=queries, task=task, target=target) -> tuple[list, MiningStats]:
            chunk = queries[start:stop]
            instructions = [registry.choose(q, task.task.cand_modality, config.instruction_mode, config.seed)
                            if registry else None for q in chunk]
            vectors = _embed_queries(encoder, as_items(chunk, directory.images), instructions, config, show_progress)
            ids, _ = index.search(vectors, min(rule.k, len(pool.ids)))
            return _mine_chunk(chunk, ids, pool_modality, fallbacks, target, rule, config)

        job.run(task.name, len(queries), config.chunk_size, work)
    return merge(job, units, config.chunk_size, extra)


def _check_positives(tasks: Sequence, queries_of: dict[str, list[Query]], pool: set[str], pool_path: Path) -> None:
    """Every query needs a positive in the pool: without one, mining would rank "above the positive"
    against a candidate that can never be retrieved, and write wrong type-1 negatives."""
    for task in tasks:
        for query in queries_of[task.name]:
            if not query.pos:
                raise DataError("a query to mine needs at least one positive",
                                Location(str(task.queries), None, "pos_cand_list", query.qid))
            missing = [did for did in query.pos if did not in pool]
            if missing:
                raise DataError(f"candidate {missing[0]!r} is not in the pool {pool_path.name}",
                                Location(str(task.queries), None, "pos_cand_list", query.qid))
        if not queries_of[task.name]:
            logger.warning("%s holds no query: nothing to mine for task %s", task.queries, task.name)


def _mbeir_inputs(directory: MBEIRDirectory, tasks: Sequence, pool_path: Path, candidates: list,
                  queries_of: dict[str, list[Query]], config: MiningConfig, out: Path) -> dict:
    """What a mining run reads, by content: every query file, the pool, the instructions, the images.

    A reuse keyed by settings alone would hand back old negatives after the data changed (a query
    file cut in half, an image replaced behind the same path).
    """
    files = [*(t.queries for t in tasks), pool_path]
    if config.instruction_mode != "none":
        files.append(directory.instructions_path)
    root = Path(directory.root)
    hashes = {_relative(path, root): file_sha256(path) if path.is_file() else "missing" for path in files}
    paths = candidate_image_paths(candidates, directory.images)
    for queries in queries_of.values():
        paths += [directory.images.resolve(q.image, q.qid) for q in queries if q.image]
    store = Path(config.cache_dir) / IMAGE_FINGERPRINTS if config.cache_dir else out / f".{IMAGE_FINGERPRINTS}"
    return {"files": hashes, "images": ImageFingerprints(store).digest(paths)}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _fallback_groups(pool_modality: dict[str, str]) -> dict[tuple[int, str], list[str]]:
    """Pool ids by (dataset id, modality): random negatives come from the query's own dataset and target."""
    groups: dict[tuple[int, str], list[str]] = {}
    for did, modality in pool_modality.items():
        groups.setdefault((int(did.split(":", 1)[0]), modality), []).append(did)
    return groups


def _in_fold(queries: list[Query], config: MiningConfig) -> list[Query]:
    """The queries of the configured fold (all of them without cross-fitting)."""
    if config.folds == 1:
        return queries
    return [q for q in queries if fold_of(q.qid, config.folds, config.seed) == config.fold]


def _mine_chunk(queries: Sequence[Query], ids: np.ndarray, pool_modality: dict[str, str],
                fallbacks: dict[tuple[int, str], list[str]], target: str, rule: NegativeRule,
                config: MiningConfig) -> tuple[list[dict], MiningStats]:
    rows, stats = [], MiningStats()
    for query, ranked in zip(queries, ids):
        ranked = [did for did in ranked if did is not None]
        modalities = [pool_modality[did] for did in ranked]
        positives = set(query.pos)
        sets = modality_aware_sets(ranked, modalities, positives, target, rule)
        chosen = modality_aware_negatives(ranked, modalities, positives, target, rule, key=f"{config.seed}:{query.qid}",
                                          fallback=fallbacks.get((query.dataset_id, target), ()), sets=sets)
        stats.count(chosen, sets)
        stats.count_slots(modalities, target, config.modality_error_k)
        stats.wrong_modality_first += bool(modalities) and modalities[0] != target
        stats.positive_in_top_k += any(did in positives for did in ranked[: rule.k])
        row = query_to_dict(query)
        row["neg_cand_list"] = [did for did, _ in chosen]
        row["neg_cand_types"] = [kind for _, kind in chosen]
        if config.typed_sets:
            row.update(typed_fields(sets, {TYPE1: rule.num_type1, TYPE2: rule.num_type2}))
        rows.append(row)
    return rows, stats


def typed_fields(sets: dict[str, list[str]], quota: dict[str, int]) -> dict:
    """The extra row fields of typed candidate sets (M-BEIR readers ignore unknown fields).

    ``neg_cand_sets``: every candidate of each type, best ranked first; ``neg_cand_quota``: how
    many of each type a query gets (training draws that many per epoch, random padding fills a short type).
    """
    return {"neg_cand_sets": {k: list(v) for k, v in sets.items()}, "neg_cand_quota": dict(quota)}


# ----------------------------------------------------------------------------- text (BEIR)


def mine_beir(encoder: Encoder, beir_dir: str | os.PathLike, output_dir: str | os.PathLike,
              config: MiningConfig | None = None, *, shard: tuple[int, int] | None = None,
              show_progress: bool = True) -> MiningResult:
    """Window negatives for the queries of a BEIR-format text set (``config.split``'s qrels)."""
    from mmembed.data.beir import load_beir

    config = config or MiningConfig()
    rule = config.rule()
    out = Path(output_dir)
    root = Path(beir_dir)
    files = (root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{config.split}.tsv")
    beir = load_beir(beir_dir, config.split)  # every file checked before its hash keys the reuse
    inputs = {"files": {_relative(path, root): file_sha256(path) for path in files}}
    job = ChunkedJob(out, config.identity(), encoder.encoder_id, shard or default_shard(), inputs)
    if (done := job.finished()) is not None:
        return done
    job.start()
    doc_ids = sorted(beir.corpus)
    qids = [q for q in sorted(beir.queries) if any(s > 0 for s in beir.qrels.get(q, {}).values())]
    if config.folds > 1:
        qids = [q for q in qids if fold_of(q, config.folds, config.seed) == config.fold]
    units = {"beir": (BEIR_OUTPUT, len(qids))}
    extra = {"beir_dir": str(beir_dir)}
    if job.done(units, config.chunk_size):
        return merge(job, units, config.chunk_size, extra)
    logger.info("embedding %d corpus documents of %s", len(doc_ids), beir_dir)
    docs = [Item(d, beir.corpus[d].full_text, None) for d in doc_ids]
    vectors = encoder.encode_candidates(docs, batch_size=config.batch_size, show_progress=show_progress)
    index = _index(doc_ids, vectors, config, encoder.encoder_id)

    def work(start: int, stop: int) -> tuple[list, MiningStats]:
        chunk = qids[start:stop]
        items = [Item(q, beir.queries[q], None) for q in chunk]
        found, _ = index.search(_embed_queries(encoder, items, [config.beir_instruction] * len(items), config,
                                               show_progress), min(rule.k, len(doc_ids)))
        rows, stats = [], MiningStats()
        for qid, ranked in zip(chunk, found):
            positives = {d for d, s in beir.qrels[qid].items() if s > 0}
            ranked = [d for d in ranked if d is not None]
            window = window_set(ranked, positives, rule)
            chosen = window_negatives(ranked, positives, rule, key=f"{config.seed}:{qid}", fallback=doc_ids)
            stats.count(chosen, {TYPE2: window})
            stats.positive_in_top_k += any(d in positives for d in ranked)
            row = {"qid": qid, "neg_cand_list": [d for d, _ in chosen], "neg_cand_types": [kind for _, kind in chosen]}
            if config.typed_sets:
                row.update(typed_fields({TYPE2: window}, {TYPE2: rule.num_type2}))
            rows.append(row)
        return rows, stats

    job.run("beir", len(qids), config.chunk_size, work)
    return merge(job, units, config.chunk_size, extra)


def stats_table(result: MiningResult) -> str:
    """A Markdown table: the stored sample per type, the full typed sets, fallbacks and modality errors.

    "mod.err@k" is the evaluation's modality error (share of top-k slots of the wrong modality);
    "top-1 wrong modality" is the share of queries whose first hit had the wrong modality.
    """
    return _table([(name, stats) for name, stats in result.stats.items()]
                  + ([("all", result.total())] if len(result.stats) > 1 else []))


STATS_HEADER = ["queries", "type1", "type2", "random", "type1 candidates", "queries with type1",
                "type2 candidates", "top-1 wrong modality", "mod.err@k", "positive in top k"]


def stats_cells(s: MiningStats) -> list[str]:
    """One row of :data:`STATS_HEADER` (shared by ``mmembed mine`` and the recipe report)."""
    n, c, w = s.negatives, s.candidates, s.with_candidates

    def pct(part: int, whole: int) -> str:
        return f"{100 * part / whole:.1f}%" if whole else "-"

    error = "-" if s.modality_error is None else f"{100 * s.modality_error:.1f}%"
    sets = bool(c)  # manifests of format 1 have no candidate sets
    return [f"{s.queries:,}", f"{n.get('type1', 0):,}", f"{n.get('type2', 0):,}", f"{n.get('random', 0):,}",
            f"{c.get('type1', 0):,}" if sets else "-",
            pct(w.get("type1", 0), s.queries) if sets else "-", f"{c.get('type2', 0):,}" if sets else "-",
            pct(s.wrong_modality_first, s.queries), error, pct(s.positive_in_top_k, s.queries)]


def _table(rows: list[tuple[str, MiningStats]]) -> str:
    lines = ["| unit | " + " | ".join(STATS_HEADER) + " |", "|---|" + "---:|" * len(STATS_HEADER)]
    lines += ["| " + " | ".join([name, *stats_cells(s)]) + " |" for name, s in rows]
    return "\n".join(lines)
