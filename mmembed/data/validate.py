"""Validate an M-BEIR-layout directory and report every problem, not only the first.

Files are streamed; only ids (and each candidate's modality) are kept in memory, so a pool of
millions of candidates is checked without loading its records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mmembed.data.images import ImageStore
from mmembed.data.layout import MBEIRDirectory, TaskFiles
from mmembed.data.mbeir import iter_qrels_lines, iter_queries, parse_candidate, parse_query
from mmembed.errors import DataError, ImageError, Location
from mmembed.fileio import iter_jsonl
from mmembed.instructions import InstructionRegistry
from mmembed.types import Modality

logger = logging.getLogger(__name__)

#: Stop listing problems of one file after this many (the count is still reported).
MAX_PROBLEMS_PER_FILE = 200


@dataclass
class Report:
    """Every problem found, plus what was checked."""

    problems: list[DataError] = field(default_factory=list)
    checked_files: int = 0
    checked_records: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.suppressed

    def add(self, problem: DataError, file: Path, per_file: dict[str, int]) -> None:
        key = str(file)
        per_file[key] = per_file.get(key, 0) + 1
        if per_file[key] > MAX_PROBLEMS_PER_FILE:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
        else:
            self.problems.append(problem)

    def lines(self) -> Iterator[str]:
        for p in self.problems:
            yield str(p)
        for file, n in self.suppressed.items():
            yield f"{file}: ... and {n} more problem(s) not listed"


class _Validator:
    def __init__(self, directory: MBEIRDirectory, check_images: bool, decode_images: bool):
        self.dir = directory
        self.check_images = check_images
        self.decode_images = decode_images
        self.report = Report()
        self._per_file: dict[str, int] = {}

    def problem(self, error: DataError, file: Path) -> None:
        self.report.add(error, file, self._per_file)

    # --- records -------------------------------------------------------------------------------

    def scan(self, path: Path, parse: Callable, on_record: Callable) -> None:
        """Parse every line of ``path``; parse errors are recorded and the scan goes on."""
        self.report.checked_files += 1
        try:
            lines = iter_jsonl(path)
            lineno = 0
            while True:
                try:
                    lineno, obj = next(lines)
                except StopIteration:
                    break
                except DataError as e:  # malformed JSON: the generator is done, resume after it
                    self.problem(e, path)
                    lines = iter_jsonl(path, start_line=(e.location.line or lineno) + 1)
                    continue
                self.report.checked_records += 1
                try:
                    record = parse(obj, Location(str(path), lineno))
                except DataError as e:
                    self.problem(e, path)
                    continue
                on_record(record, lineno)
        except DataError as e:
            self.problem(e, path)

    def check_image(self, rel: str | None, item_id: str, path: Path, lineno: int) -> None:
        if not rel or not self.check_images:
            return
        store: ImageStore = self.dir.images
        try:
            resolved = store.resolve(rel, item_id)
            if self.decode_images:
                store.load(rel, item_id)
            elif not resolved.is_file():
                raise ImageError("image file not found", Location(item=item_id))
        except ImageError as e:
            self.problem(ImageError(e.reason, Location(str(path), lineno, "img_path", item_id)), path)

    def pool(self, path: Path) -> dict[str, Modality]:
        ids: dict[str, Modality] = {}

        def on_candidate(c, lineno):
            if c.did in ids:
                self.problem(DataError("duplicate id", Location(str(path), lineno, "did", c.did)), path)
                return
            ids[c.did] = c.modality
            self.check_image(c.image, c.did, path, lineno)

        self.scan(path, parse_candidate, on_candidate)
        return ids

    def queries(self, task: TaskFiles, pool: dict[str, Modality] | None,
                instructions: InstructionRegistry | None) -> set[str]:
        qids: set[str] = set()
        path = task.queries

        def on_query(q, lineno):
            loc = Location(str(path), lineno, None, q.qid)
            if q.qid in qids:
                self.problem(DataError("duplicate id", Location(loc.file, lineno, "qid", q.qid)), path)
                return
            qids.add(q.qid)
            if q.modality is not task.task.query_modality:
                self.problem(DataError(f"query modality {q.modality.value!r} does not fit {task.name} "
                                       f"({task.task.arrow})", Location(loc.file, lineno, "query_modality", q.qid)),
                             path)
            if not q.pos:
                self.problem(DataError("no positive candidate", Location(loc.file, lineno, "pos_cand_list", q.qid)),
                             path)
            self.check_image(q.image, q.qid, path, lineno)
            if pool is not None:
                self.check_ids(q.pos, "pos_cand_list", pool, task, loc, check_modality=True)
                self.check_ids(q.neg, "neg_cand_list", pool, task, loc, check_modality=False)
            if instructions is not None:
                try:
                    instructions.prompts(q.dataset_id, q.modality, task.task.cand_modality)
                except DataError as e:
                    self.problem(DataError(e.reason, Location(loc.file, lineno, None, q.qid)), path)

        before = len(self.report.problems)
        self.scan(path, parse_query, on_query)
        if not qids and len(self.report.problems) == before:  # a task with nothing to evaluate or train on
            self.problem(DataError("no query in this file", Location(str(path))), path)
        return qids

    def check_ids(self, ids, field_name: str, pool: dict[str, Modality], task: TaskFiles, loc: Location,
                  check_modality: bool) -> None:
        for did in ids:
            where = Location(loc.file, loc.line, field_name, loc.item)
            if did not in pool:
                self.problem(DataError(f"candidate {did!r} is not in the pool {task.local_pool.name}", where),
                             Path(loc.file))
            elif check_modality and pool[did] is not task.task.cand_modality:
                self.problem(DataError(f"positive {did!r} has modality {pool[did].value!r}, but {task.name} "
                                       f"retrieves {task.task.cand_modality.value!r}", where), Path(loc.file))

    def qrels(self, task: TaskFiles, qids: set[str], pool: dict[str, Modality] | None) -> None:
        path = task.qrels
        self.report.checked_files += 1
        try:
            for lineno, qid, did, _, task_id in iter_qrels_lines(path):
                if qid not in qids:
                    self.problem(DataError(f"qid {qid!r} is not in {task.queries.name}",
                                           Location(str(path), lineno, "qid")), path)
                if pool is not None and did not in pool:
                    self.problem(DataError(f"candidate {did!r} is not in the pool {task.local_pool.name}",
                                           Location(str(path), lineno, "did")), path)
                if task_id is not None and task_id != task.task.id:
                    self.problem(DataError(f"task id {task_id} does not match the file's task {task.task.id}",
                                           Location(str(path), lineno, "task_id")), path)
        except DataError as e:
            self.problem(e, path)


def validate_directory(root: str | os.PathLike, *, check_images: bool = True, decode_images: bool = False,
                       show_progress: bool = False, image_root: str | os.PathLike | None = None) -> Report:
    """Check every file of an M-BEIR directory; returns a :class:`Report` listing all problems.

    Each task is checked against the local pool evaluation will use (the split-named one when it
    exists, see :mod:`mmembed.data.layout`); images are looked up under ``image_root`` (default
    ``root``).
    """
    directory = MBEIRDirectory(root, image_root=image_root)
    v = _Validator(directory, check_images, decode_images)
    instructions = None
    if directory.instructions_path.is_file():
        try:
            instructions = directory.instructions()
        except DataError as e:
            v.problem(e, directory.instructions_path)
    else:
        v.problem(DataError("instructions file not found", Location(str(directory.instructions_path))),
                  directory.instructions_path)

    pools: dict[Path, dict[str, Modality]] = {}
    tasks = [t for split in ("train", "val", "test") for t in directory.tasks(split)]
    if not tasks:
        v.problem(DataError("no query files found under query/{train,val,test}/", Location(str(directory.root))),
                  directory.root)
    for task in tqdm(tasks, desc="validate", disable=not show_progress):
        logger.info("%s (%s): local pool %s", task.name, task.split, task.local_pool.name)
        if task.local_pool not in pools:
            if task.local_pool.is_file():
                pools[task.local_pool] = v.pool(task.local_pool)
            else:
                v.problem(DataError("local candidate pool not found", Location(str(task.local_pool))),
                          task.local_pool)
                pools[task.local_pool] = None  # type: ignore[assignment]
        pool = pools[task.local_pool]
        qids = v.queries(task, pool, instructions)
        if task.qrels.is_file():
            v.qrels(task, qids, pool)
        else:
            v.problem(DataError("qrels file not found", Location(str(task.qrels))), task.qrels)
    _check_global_pools(v, directory, tasks, pools)
    return v.report


def _check_global_pools(v: _Validator, directory: MBEIRDirectory, tasks: list[TaskFiles],
                        pools: dict[Path, dict[str, Modality] | None]) -> None:
    """Each split's global pool must hold that split's positives, each id once, all fields alike."""
    for split in sorted({t.split for t in tasks}):
        path = directory.global_pool(split)
        if not path.is_file():
            continue  # a global pool is optional; the global-pool evaluation names it when missing
        ids = v.pool(path)
        for task in (t for t in tasks if t.split == split):
            try:
                for q in iter_queries(task.queries):
                    for did in q.pos:
                        if did not in ids:
                            v.problem(DataError(f"positive {did!r} is not in the global pool {path.name}",
                                                Location(str(task.queries), None, "pos_cand_list", q.qid)),
                                      task.queries)
            except DataError:
                pass  # already reported while validating the query file
