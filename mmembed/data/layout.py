"""The M-BEIR directory layout: where each split's queries, pools, qrels and instructions live.

```
ROOT/
  query/{train,val,test}/mbeir_{dataset}_task{N}_{split}.jsonl
  query/union_train/mbeir_union_up_train.jsonl        (optional)
  cand_pool/local/mbeir_{dataset}_task{N}_cand_pool.jsonl
  cand_pool/local/mbeir_{dataset}_task{N}_{split}_cand_pool.jsonl   (MSCOCO's val and test pools)
  cand_pool/global/mbeir_union_{split}_cand_pool.jsonl
  qrels/{split}/mbeir_{dataset}_task{N}_{split}_qrels.txt
  instructions/query_instructions.tsv
  <images, at the paths the JSONL files give, relative to ROOT>
```

A split-named local pool, when it exists, is the pool of that split's queries: UniIR scores
MSCOCO's val and test queries against ``mbeir_mscoco_task{0,3}_{split}_cand_pool.jsonl`` (5,000
images for task 0), while the split-less pool beside them is a different, larger pool that holds
none of the test positives. Every command finds pools through :meth:`MBEIRDirectory.tasks`, so
evaluation, validation, mining and training all make the same choice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mmembed.data.images import ImageStore
from mmembed.data.mbeir import QUERY_FILE_RE
from mmembed.errors import ConfigError, DataError, Location
from mmembed.instructions import InstructionRegistry
from mmembed.types import Query, Task

SPLITS = ("train", "val", "test")
INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"


def query_file(dataset: str, task_id: int, split: str) -> str:
    return f"query/{split}/mbeir_{dataset}_task{task_id}_{split}.jsonl"


def local_pool_file(dataset: str, task_id: int, split: str | None = None) -> str:
    """The local pool's path; ``split`` gives the split-named form (MSCOCO's val/test pools)."""
    named = f"_{split}" if split else ""
    return f"cand_pool/local/mbeir_{dataset}_task{task_id}{named}_cand_pool.jsonl"


def global_pool_file(split: str) -> str:
    return f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl"


def qrels_file(dataset: str, task_id: int, split: str) -> str:
    return f"qrels/{split}/mbeir_{dataset}_task{task_id}_{split}_qrels.txt"


@dataclass(frozen=True)
class TaskFiles:
    """One (dataset, task, split) of an M-BEIR directory and its files."""

    dataset: str
    task: Task
    split: str
    queries: Path
    local_pool: Path
    qrels: Path

    @property
    def name(self) -> str:
        """The M-BEIR name, e.g. ``mscoco_task0``."""
        return f"{self.dataset}_task{self.task.id}"


def check_task_queries(task: TaskFiles, queries: Sequence[Query]) -> None:
    """Refuse a query whose modality does not fit the task of its file, as ``data validate`` does."""
    for q in queries:
        if q.modality is not task.task.query_modality:
            raise DataError(f"query modality {q.modality.value!r} does not fit {task.name} ({task.task.arrow})",
                            Location(str(task.queries), None, "query_modality", q.qid))


class MBEIRDirectory:
    """An M-BEIR-layout dataset directory."""

    def __init__(self, root: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 max_pixels: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError("dataset directory not found", Location(file=str(self.root)))
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        self.images = ImageStore(image_root or self.root, **kwargs)

    def tasks(self, split: str = "test") -> list[TaskFiles]:
        """Every query file of ``split``, in file-name order."""
        folder = self.root / "query" / split
        found = []
        for path in sorted(folder.glob("mbeir_*.jsonl")) if folder.is_dir() else []:
            m = QUERY_FILE_RE.match(path.name)
            if not m or m["split"] != split:
                continue
            dataset, task_id = m["dataset"], int(m["task"])
            found.append(TaskFiles(dataset, Task.from_id(task_id), split, path,
                                   self.local_pool(dataset, task_id, split),
                                   self.root / qrels_file(dataset, task_id, split)))
        return found

    def local_pool(self, dataset: str, task_id: int, split: str) -> Path:
        """The split-named pool when there is one, else the task's pool (see the module docstring)."""
        split_named = self.root / local_pool_file(dataset, task_id, split)
        return split_named if split_named.is_file() else self.root / local_pool_file(dataset, task_id)

    def select_tasks(self, split: str, names: Sequence[str] | None = None) -> list[TaskFiles]:
        """The tasks of ``split`` named in ``names`` (all when ``None``), in that order.

        No query file for the split is a :class:`DataError`; an unknown name a :class:`ConfigError`
        listing the available ones.
        """
        tasks = self.tasks(split)
        if not tasks:
            raise DataError(f"no query files for split {split!r}", Location(file=str(self.root)))
        if names is None:
            return tasks
        known = {t.name: t for t in tasks}
        missing = [name for name in names if name not in known]
        if missing:
            raise ConfigError(f"unknown task(s) {', '.join(missing)}; available: {', '.join(known)}")
        return [known[name] for name in names]

    def task(self, name: str, split: str = "test") -> TaskFiles:
        for t in self.tasks(split):
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tasks(split)) or "none"
        raise DataError(f"no task {name!r} in split {split!r}; available: {known}", Location(file=str(self.root)))

    def global_pool(self, split: str = "test") -> Path:
        return self.root / global_pool_file(split)

    @property
    def instructions_path(self) -> Path:
        return self.root / INSTRUCTIONS_FILE

    def instructions(self) -> InstructionRegistry:
        return InstructionRegistry.from_tsv(self.instructions_path)

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.tasks(s)]
