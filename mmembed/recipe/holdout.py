"""A validation split held out of the training queries, for data that comes without one.

:func:`hold_out_val` writes ``OUT/data``, a view of the user's M-BEIR directory in which a seeded
share of each training task's queries has moved to a new ``val`` split: the train query files
lose those queries, ``query/val`` and ``qrels/val`` hold them, and the val pools are the train
pools (so the held-out queries are ranked against the candidates they were written for). Every
other file and folder (images, pools, the test split, instructions) is a symbolic link to the
original, which is never modified. A validation score then measures new queries over known
candidates, which is what choosing between training stages needs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mmembed.data.layout import MBEIRDirectory, global_pool_file, local_pool_file, qrels_file, query_file
from mmembed.errors import ConfigError
from mmembed.fileio import write_text
from mmembed.hashing import stable_hash

logger = logging.getLogger(__name__)

#: Folders rebuilt in the view; everything else at the top of the directory is linked.
_REBUILT = ("query", "qrels", "cand_pool")


def held_out_ids(qids: list[str], share: float, seed: int) -> set[str]:
    """The ``share`` of ``qids`` (at least one of two or more) with the lowest hash of (seed, qid).

    Which queries go depends only on the seed and the ids, not on their order or on other tasks.
    """
    count = max(1, round(share * len(qids))) if len(qids) >= 2 else 0
    return set(sorted(qids, key=lambda qid: stable_hash("holdout", seed, qid))[:count])


def hold_out_val(data: str | os.PathLike, out: str | os.PathLike, *, share: float = 0.1, seed: int = 0) -> Path:
    """Write the view under ``out`` (rewritten only where its content changes); returns its root."""
    if not 0 < share < 1:
        raise ConfigError(f"the validation share must be in (0, 1), got {share!r}")
    source, view = MBEIRDirectory(data), Path(out)
    view.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.root.iterdir()):
        if entry.name not in _REBUILT:
            _link(view / entry.name, entry)
    held, kept = 0, 0
    for task in source.tasks("train"):
        lines = [line for line in task.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
        val_ids = held_out_ids([_qid(line, task.queries) for line in lines], share, seed)
        val = [line for line in lines if _qid(line, task.queries) in val_ids]
        train = [line for line in lines if _qid(line, task.queries) not in val_ids]
        dataset, task_id = task.dataset, task.task.id
        qrels = task.qrels.read_text(encoding="utf-8").splitlines() if task.qrels.is_file() else []
        _write_lines(view / query_file(dataset, task_id, "train"), train)
        kept_qrels = [line for line in qrels if _qrels_qid(line) not in val_ids]
        _write_lines(view / qrels_file(dataset, task_id, "train"), kept_qrels)
        _link(view / task.local_pool.relative_to(source.root), task.local_pool)
        if val:  # a task of one query stays whole in train
            _write_lines(view / query_file(dataset, task_id, "val"), val)
            _write_lines(view / qrels_file(dataset, task_id, "val"), [ln for ln in qrels if _qrels_qid(ln) in val_ids])
            _link(view / local_pool_file(dataset, task_id, "val"), task.local_pool)
        held, kept = held + len(val), kept + len(train)
    if held == 0:
        raise ConfigError(f"{data}: holding out {share:.0%} of {kept} training queries leaves no validation query; "
                          "add a val split to the data")
    for split in ("train", "val"):
        _link(view / global_pool_file(split), source.global_pool("train"))
    _link_split(source, view, "test")
    logger.info("no val split in %s: %d of %d training queries (a seeded %.0f%%) held out as val in %s",
                data, held, held + kept, 100 * share, view)
    return view


def _link_split(source: MBEIRDirectory, view: Path, split: str) -> None:
    """The test split's files (query, qrels, pools), linked as they are."""
    for task in source.tasks(split):
        _link(view / query_file(task.dataset, task.task.id, split), task.queries)
        if task.qrels.is_file():
            _link(view / qrels_file(task.dataset, task.task.id, split), task.qrels)
        _link(view / task.local_pool.relative_to(source.root), task.local_pool)
    if source.global_pool(split).is_file():
        _link(view / global_pool_file(split), source.global_pool(split))


def _qid(line: str, path: Path) -> str:
    try:
        return str(json.loads(line)["qid"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: a line without a readable qid (run mmembed data validate)") from None


def _qrels_qid(line: str) -> str | None:
    fields = line.split()
    return fields[0] if fields else None


def _write_lines(path: Path, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path.is_file() and not path.is_symlink() and path.read_text(encoding="utf-8") == text:
        return
    write_text(path, text)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (absolute), replacing a link that points elsewhere."""
    target = target.resolve()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f".{link.name}.staging")
    staging.unlink(missing_ok=True)
    os.symlink(target, staging, target_is_directory=target.is_dir())
    os.replace(staging, link)
