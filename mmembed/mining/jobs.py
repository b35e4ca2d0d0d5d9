"""Resumable, shardable mining work: chunks of queries, each written atomically when done.

A mining run cuts every unit of work (a task's queries, or a text set's) into chunks; a chunk's
rows and statistics land under ``OUT/.parts/<unit>/`` when it finishes, the statistics last, so an
interrupted run resumes at the first missing chunk. ``shard=(i, n)`` does every n-th chunk from
i; whichever process finds every chunk done concatenates them into the outputs and writes the
manifest (last: its presence marks a finished run). Parts of another configuration or encoder
are refused, never mixed in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmembed.errors import ConfigError
from mmembed.fileio import atomic_open, write_json, write_jsonl
from mmembed.mining.rule import NEGATIVE_TYPES
from mmembed.version import __version__

logger = logging.getLogger(__name__)

MANIFEST = "mining.json"
PARTS = ".parts"
#: 2: rows carry the full typed candidate sets (``neg_cand_sets``) and the statistics slot counts.
FORMAT_VERSION = 2


@dataclass
class MiningStats:
    """Per-task counts.

    - ``negatives``: the stored sample (``neg_cand_list``) by type; ``random`` counts fallbacks;
    - ``candidates``: the sizes of the full typed sets (``neg_cand_sets``) summed over queries, and
      ``with_candidates`` how many queries have at least one candidate of each type;
    - ``wrong_modality_first``: queries whose top hit had the wrong modality ("top-1 modality miss");
    - ``wrong_modality_slots`` / ``slots``: top-``modality_error_k`` results of the wrong modality
      over all top-k results: the evaluation's modality error@k (``mmembed.eval.mbeir_runner``), computed
      on the training queries.
    """

    queries: int = 0
    negatives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NEGATIVE_TYPES, 0))
    wrong_modality_first: int = 0
    positive_in_top_k: int = 0
    candidates: dict[str, int] = field(default_factory=dict)
    with_candidates: dict[str, int] = field(default_factory=dict)
    wrong_modality_slots: int = 0
    slots: int = 0

    def count(self, chosen: list[tuple[str, str]], sets: dict[str, list[str]] | None = None) -> None:
        """Count one query's chosen ``(id, type)`` negatives and its typed candidate sets."""
        self.queries += 1
        for _, kind in chosen:
            self.negatives[kind] = self.negatives.get(kind, 0) + 1
        for kind, ids in (sets or {}).items():
            self.candidates[kind] = self.candidates.get(kind, 0) + len(ids)
            self.with_candidates[kind] = self.with_candidates.get(kind, 0) + bool(ids)

    def count_slots(self, modalities: list[str], target: str, k: int) -> None:
        top = modalities[:k]
        self.slots += len(top)
        self.wrong_modality_slots += sum(m != target for m in top)

    @property
    def modality_error(self) -> float | None:
        """Share of top-k slots of the wrong modality (the evaluation's definition); None without slots."""
        return self.wrong_modality_slots / self.slots if self.slots else None

    def add(self, other: MiningStats) -> None:
        self.queries += other.queries
        self.wrong_modality_first += other.wrong_modality_first
        self.positive_in_top_k += other.positive_in_top_k
        self.wrong_modality_slots += other.wrong_modality_slots
        self.slots += other.slots
        for mine, theirs in ((self.negatives, other.negatives), (self.candidates, other.candidates),
                             (self.with_candidates, other.with_candidates)):
            for kind, n in theirs.items():
                mine[kind] = mine.get(kind, 0) + n

    @classmethod
    def from_dict(cls, obj: dict) -> MiningStats:
        """Also reads manifests of format 1, which had no candidate sets or slot counts."""
        return cls(obj["queries"], dict(obj["negatives"]), obj["wrong_modality_first"], obj["positive_in_top_k"],
                   dict(obj.get("candidates", {})), dict(obj.get("with_candidates", {})),
                   int(obj.get("wrong_modality_slots", 0)), int(obj.get("slots", 0)))


#: Under this share of training queries with a type-1 candidate, mining says so (log and report).
LOW_TYPE1_YIELD = 0.05


def type1_yield_note(stats: MiningStats, config: dict) -> str | None:
    """A sentence for a low type-1 yield (and what the missing slots got instead), else ``None``.

    ``config`` is the mining configuration as ``mining.json`` stores it. A stage-1 model that has
    fitted its training queries ranks their positives above every wrong-modality candidate, so it
    finds almost no type-1 negative; that must not pass for modality-aware training.
    """
    wanted = int(config.get("num_type1", 0))
    if not wanted or not stats.queries:
        return None
    found = stats.with_candidates.get("type1") if stats.candidates else None
    if found is None:  # a fixed sample without the typed sets: queries with at least one type-1 id
        found = min(stats.queries, stats.negatives.get("type1", 0))
    if found >= LOW_TYPE1_YIELD * stats.queries:
        return None
    share = f"{found:,} of {stats.queries:,} training queries ({100 * found / stats.queries:.1f} %)"
    if config.get("random_fallback", True):
        instead = (f"their {stats.negatives.get('random', 0):,} empty slots hold random candidates of the target "
                   "modality (easy negatives, nothing modality-aware); with random_fallback: false they train with "
                   "in-batch negatives only")
    else:
        instead = "the others train with their type-2 and in-batch negatives only (no random fill)"
    return (f"low type-1 yield: a wrong-modality candidate ranked above the positive for {share}, so the miner "
            f"already ranks almost every positive first; {instead}. Cross-fitted mining (recipe: --cross-fit 2) "
            "mines each query with a model that did not train on it and finds more.")


@dataclass
class MiningResult:
    output_dir: Path
    stats: dict[str, MiningStats]
    #: False when this process finished its shard but other shards are still missing.
    complete: bool
    reused: bool = False

    def total(self) -> MiningStats:
        total = MiningStats()
        for stats in self.stats.values():
            total.add(stats)
        return total


def default_shard() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ChunkedJob:
    """Resumable, shardable chunks of per-query work under ``out/.parts/<unit>/``.

    Its identity (configuration, encoder and ``inputs``: a hash of every input file's content) keys
    every reuse: a finished run is reused only when all of it matches, and partial results only
    join a run of the same identity.
    """

    def __init__(self, out: Path, config: dict, encoder_id: str, shard: tuple[int, int],
                 inputs: dict | None = None):
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
        self.out, self.shard = out, (index, count)
        self.identity = {"config": config, "encoder_id": encoder_id, "format_version": FORMAT_VERSION,
                         "inputs": inputs or {}}
        if count == 1:  # alone: nobody else can be writing here, so temporary files are leftovers
            remove_leftovers(out)

    def start(self) -> None:
        """Claim the parts directory: parts of another identity must not be mixed into this run."""
        stamp = self.out / PARTS / "identity.json"
        if stamp.is_file():
            saved = _read_json(stamp)
            differ = differences(saved, self.identity) if saved is not None else ["(unreadable identity.json)"]
            if differ:
                raise ConfigError(f"{self.out} holds partial mining results of another configuration, encoder or "
                                  f"input data (differs in {', '.join(differ[:6])}); remove {self.out / PARTS} to "
                                  "discard them, or choose another output directory")
        else:
            write_json(stamp, self.identity)

    def finished(self) -> MiningResult | None:
        """The result of a finished run with the same settings, encoder and inputs, if there is one."""
        path = self.out / MANIFEST
        manifest = _read_json(path) if path.is_file() else None
        if manifest is None:
            return None
        differ = differences({k: manifest.get(k) for k in self.identity}, self.identity)
        if differ:
            logger.warning("%s holds a finished mining run that differs in %s: mining again (its files are "
                           "replaced when this run finishes)", self.out, ", ".join(differ[:6]))
            return None
        logger.info("reusing finished mining run at %s", self.out)
        stats = {k: MiningStats.from_dict(v) for k, v in manifest["stats"].items()}
        return MiningResult(self.out, stats, complete=True, reused=True)

    def done(self, units: dict[str, tuple[str, int]], chunk_size: int) -> bool:
        """Whether every chunk of every unit is already written (nothing left to embed)."""
        return all(self.collect(unit, total, chunk_size) is not None for unit, (_, total) in units.items())

    def run(self, unit: str, total: int, chunk_size: int, work: Callable[[int, int], tuple[list, MiningStats]]) -> None:
        """Do this shard's missing chunks of ``unit`` (``work(start, stop)`` -> rows, stats)."""
        folder = self.out / PARTS / unit
        for number, start in enumerate(range(0, total, chunk_size)):
            if number % self.shard[1] != self.shard[0] or (folder / f"{number:06d}.stats.json").is_file():
                continue
            rows, stats = work(start, min(start + chunk_size, total))
            write_jsonl(folder / f"{number:06d}.jsonl", rows)
            write_json(folder / f"{number:06d}.stats.json", asdict(stats))  # last: marks the chunk done
            logger.info("%s: chunk %d done (%d queries)", unit, number, stats.queries)

    def collect(self, unit: str, total: int, chunk_size: int) -> tuple[list[Path], MiningStats] | None:
        """The chunk files and summed stats of ``unit``, or None while a chunk is missing."""
        folder = self.out / PARTS / unit
        files, stats = [], MiningStats()
        for number in range((total + chunk_size - 1) // chunk_size):
            done = folder / f"{number:06d}.stats.json"
            if not done.is_file():
                return None
            stats.add(MiningStats.from_dict(json.loads(done.read_text(encoding="utf-8"))))
            files.append(folder / f"{number:06d}.jsonl")
        return files, stats

    def finish(self, outputs: dict[str, list[Path]], stats: dict[str, MiningStats], extra: dict) -> None:
        """Write the outputs, then the manifest; a previous run's manifest goes first, its stale files last.

        Between the two, the directory has no manifest: a reader never takes a mixture of two runs
        for a finished one.
        """
        manifest = self.out / MANIFEST
        previous = _read_json(manifest) if manifest.is_file() else None
        manifest.unlink(missing_ok=True)
        for target, parts in outputs.items():
            with atomic_open(self.out / target, "w") as f:
                for part in parts:
                    f.write(part.read_text(encoding="utf-8"))
        write_json(manifest, {**self.identity, **extra, "mmembed_version": __version__, "outputs": sorted(outputs),
                              "stats": {k: asdict(v) for k, v in stats.items()}})
        for stale in set((previous or {}).get("outputs") or ()) - set(outputs):
            if "/" not in stale and stale != MANIFEST:  # a previous run's file this run does not rewrite
                (self.out / stale).unlink(missing_ok=True)
        shutil.rmtree(self.out / PARTS, ignore_errors=True)


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like mappings (tuples compare as lists)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += differences(saved.get(key), current.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if saved == current else [prefix or "(everything)"]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def remove_leftovers(out: Path) -> None:
    """Delete what a killed run left: temporary files of atomic writes and staging directories."""
    for folder in (out, out / PARTS, *((out / PARTS).iterdir() if (out / PARTS).is_dir() else ())):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not path.name.startswith("."):
                continue
            if path.is_file() and path.name.endswith(".tmp"):
                logger.info("removing leftover temporary file %s", path)
                path.unlink(missing_ok=True)
            elif path.is_dir() and path.name.endswith((".staging", ".old")):
                logger.info("removing leftover staging directory %s", path)
                shutil.rmtree(path, ignore_errors=True)


def merge(job: ChunkedJob, units: dict[str, tuple[str, int]], chunk_size: int, extra: dict) -> MiningResult:
    """Concatenate every unit's chunks into its output once all are done (else an incomplete result)."""
    outputs, stats = {}, {}
    for unit, (target, total) in units.items():
        collected = job.collect(unit, total, chunk_size)
        if collected is None:
            logger.info("shard %d/%d done; other shards are still mining", *job.shard)
            return MiningResult(job.out, stats, False)
        outputs[target] = collected[0]
        stats[unit] = collected[1]
    job.finish(outputs, stats, extra)
    return MiningResult(job.out, stats, True)
