"""TREC run files: ``qid Q0 did rank score tag``, one line per retrieved candidate."""

from __future__ import annotations

import os
from pathlib import Path

from mmembed.errors import DataError, Location
from mmembed.fileio import atomic_open
from mmembed.types import Run


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Candidates by descending score; ties broken by id for a stable order."""
    return sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))


def write_run(path: str | os.PathLike, run: Run, tag: str = "mmembed") -> None:
    if any(c.isspace() for c in tag):
        raise ValueError(f"run tag {tag!r} must not contain whitespace")
    with atomic_open(path) as f:
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(ranked(docs), start=1):
                f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")


def read_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", Location(str(path)))
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != 6:
                raise DataError(f"expected 'qid Q0 did rank score tag', got {len(cols)} columns",
                                Location(str(path), lineno))
            try:
                score = float(cols[4])
            except ValueError:
                raise DataError(f"score {cols[4]!r} is not a number", Location(str(path), lineno, "score")) from None
            run.setdefault(cols[0], {})[cols[2]] = score
    return run
