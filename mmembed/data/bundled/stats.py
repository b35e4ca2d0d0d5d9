"""The task table of an M-BEIR-layout directory, read from its files (works on any M-BEIR root)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mmembed.data.layout import SPLITS, MBEIRDirectory
from mmembed.data.mbeir import iter_queries
from mmembed.types import Task


@dataclass(frozen=True)
class TaskStats:
    """Counts of one (dataset, task) over all splits."""

    dataset: str
    task: Task
    queries: dict[str, int]
    local_pool: int
    global_pool: int
    mean_positives: float
    max_positives: int


def _count_lines(path: Path) -> int:
    """Records in a JSONL file (non-blank lines), without parsing them."""
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def task_stats(dataset_dir: str | os.PathLike) -> list[TaskStats]:
    """Per (dataset, task): queries per split, pool sizes and positives per query."""
    directory = MBEIRDirectory(dataset_dir)
    global_size = _count_lines(directory.global_pool("test"))
    found: dict[tuple[str, int], dict] = {}
    for split in SPLITS:
        for tf in directory.tasks(split):
            entry = found.setdefault((tf.dataset, tf.task.id),
                                     {"task": tf.task, "pool": tf.local_pool, "queries": {}, "positives": []})
            positives = [len(q.pos) for q in iter_queries(tf.queries)]
            entry["queries"][split] = len(positives)
            entry["positives"].extend(positives)
    out = []
    for (dataset, _), e in sorted(found.items()):
        pos = e["positives"]
        out.append(TaskStats(dataset, e["task"], {s: e["queries"].get(s, 0) for s in SPLITS}, _count_lines(e["pool"]),
                             global_size, sum(pos) / len(pos) if pos else 0.0, max(pos, default=0)))
    return out


def stats_table(dataset_dir: str | os.PathLike) -> str:
    """A Markdown table of every task: modalities, queries per split, pool sizes, positives per query."""
    header = ("| dataset | task | q -> c | train | val | test | local pool | global pool | positives/query (max) |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|\n")
    rows = [f"| {s.dataset} | task{s.task.id} | {s.task.arrow} | {s.queries['train']:,} | {s.queries['val']:,} | "
            f"{s.queries['test']:,} | {s.local_pool:,} | {s.global_pool:,} | {s.mean_positives:.2f} "
            f"({s.max_positives}) |\n" for s in task_stats(dataset_dir)]
    return header + "".join(rows)
