"""TREC run files: ``qid Q0 did rank score tag``, one line per retrieved candidate.

Candidates are written in the order the metrics rank them (:func:`~mmembed.eval.metrics.rank_documents`:
score descending, ties by id descending, as trec_eval) with the exact score (``repr`` of the
float, which reads back bit for bit), so that trec_eval, pytrec_eval or a rank-based re-scorer
give the numbers of ``results.json`` exactly, ties included.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmembed.errors import ArgumentError, DataError, Location
from mmembed.eval.metrics import rank_documents
from mmembed.fileio import atomic_open, iter_text_lines
from mmembed.types import Run


def write_run(path: str | os.PathLike, run: Run, tag: str = "mmembed") -> None:
    if any(c.isspace() for c in tag):
        raise ArgumentError(f"tag: run tag {tag!r} must not contain whitespace")
    with atomic_open(path) as f:
        for qid, docs in run.items():
            for rank, (did, score) in enumerate(rank_documents(docs, qid=qid), start=1):
                f.write(f"{qid} Q0 {did} {rank} {float(score)!r} {tag}\n")


def read_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", Location(str(path)))
    run: Run = {}
    for lineno, line in iter_text_lines(path):
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
