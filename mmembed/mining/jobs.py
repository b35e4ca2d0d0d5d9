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

from mmembed import __version__
from mmembed.errors import ConfigError
from mmembed.fileio import atomic_open, write_json, write_jsonl
from mmembed.mining.rule import NEGATIVE_TYPES

logger = logging.getLogger(__name__)

MANIFEST = "mining.json"
PARTS = ".parts"
FORMAT_VERSION = 1


@dataclass
class MiningStats:
    """Per-task counts; ``wrong_modality_first`` = queries whose top hit had the wrong modality."""

    queries: int = 0
    negatives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NEGATIVE_TYPES, 0))
    wrong_modality_first: int = 0
    positive_in_top_k: int = 0

    def count(self, chosen: list[tuple[str, str]]) -> None:
        """Count one query's chosen ``(id, type)`` negatives."""
        self.queries += 1
        for _, kind in chosen:
            self.negatives[kind] = self.negatives.get(kind, 0) + 1

    def add(self, other: MiningStats) -> None:
        self.queries += other.queries
        self.wrong_modality_first += other.wrong_modality_first
        self.positive_in_top_k += other.positive_in_top_k
        for kind, n in other.negatives.items():
            self.negatives[kind] = self.negatives.get(kind, 0) + n

    @classmethod
    def from_dict(cls, obj: dict) -> MiningStats:
        return cls(obj["queries"], dict(obj["negatives"]), obj["wrong_modality_first"], obj["positive_in_top_k"])


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
    """Resumable, shardable chunks of per-query work under ``out/.parts/<unit>/``."""

    def __init__(self, out: Path, config: dict, encoder_id: str, shard: tuple[int, int]):
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
        self.out, self.shard = out, (index, count)
        self.identity = {"config": config, "encoder_id": encoder_id, "format_version": FORMAT_VERSION}
        self._check_parts()

    def _check_parts(self) -> None:
        """Parts of a run with other settings or another encoder must not be mixed into this one."""
        stamp = self.out / PARTS / "identity.json"
        if stamp.is_file():
            if json.loads(stamp.read_text(encoding="utf-8")) != self.identity:
                raise ConfigError(f"{self.out} holds partial mining results of another configuration or encoder; "
                                  "remove its .parts directory or choose another output directory")
        else:
            write_json(stamp, self.identity)

    def finished(self) -> MiningResult | None:
        """The result of a finished run with the same settings and encoder, if there is one."""
        path = self.out / MANIFEST
        if not path.is_file():
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if any(manifest.get(k) != v for k, v in self.identity.items()):
            return None
        logger.info("reusing finished mining run at %s", self.out)
        stats = {k: MiningStats.from_dict(v) for k, v in manifest["stats"].items()}
        return MiningResult(self.out, stats, complete=True, reused=True)

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
        for target, parts in outputs.items():
            with atomic_open(self.out / target, "w") as f:
                for part in parts:
                    f.write(part.read_text(encoding="utf-8"))
        write_json(self.out / MANIFEST, {**self.identity, **extra, "mmembed_version": __version__,
                                         "stats": {k: asdict(v) for k, v in stats.items()}})
        shutil.rmtree(self.out / PARTS, ignore_errors=True)


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
