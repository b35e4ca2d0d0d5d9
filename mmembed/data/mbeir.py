"""M-BEIR records and files, read and written exactly as UniIR publishes them.

Readers stream: a multi-GB candidate pool is parsed line by line and never held whole unless the
caller collects it. Every problem raises :class:`DataError` naming file, line, field and item.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mmembed.errors import DataError, Location
from mmembed.fileio import atomic_open, iter_jsonl, iter_text_lines, write_jsonl
from mmembed.types import Candidate, Modality, Qrels, Query, Task, has_visible_text

QUERY_FIELDS = ("qid", "query_txt", "query_img_path", "query_modality", "query_src_content",
                "pos_cand_list", "neg_cand_list")
CANDIDATE_FIELDS = ("did", "txt", "img_path", "modality", "src_content")
_ID_RE = re.compile(r"^\d+:\S+$")

# File names of the layout, e.g. mbeir_mscoco_task0_test.jsonl
QUERY_FILE_RE = re.compile(r"^mbeir_(?P<dataset>[a-z0-9_]+?)_task(?P<task>\d)_(?P<split>[a-z_]+)\.jsonl$")


def _present(value: Any) -> bool:
    return isinstance(value, str) and has_visible_text(value)


def _optional_str(obj: dict, key: str, loc: Location) -> str | None:
    if key not in obj:
        raise DataError("missing field", _at(loc, key))
    value = obj[key]
    if value is not None and not isinstance(value, str):
        raise DataError(f"expected a string or null, got {type(value).__name__}", _at(loc, key))
    return value


def _id(obj: dict, key: str, loc: Location) -> str:
    if key not in obj:
        raise DataError("missing field", _at(loc, key))
    value = obj[key]
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise DataError(f"expected an id of the form '<dataset_id>:<n>', got {value!r}", _at(loc, key))
    return value


def _id_list(obj: dict, key: str, loc: Location, required: bool) -> tuple[str, ...]:
    if key not in obj:
        if required:
            raise DataError("missing field", _at(loc, key))
        return ()
    value = obj[key]
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError("expected a list of id strings", _at(loc, key))
    return tuple(value)


def _modality(obj: dict, key: str, text: str | None, image: str | None, loc: Location) -> Modality:
    if key not in obj:
        raise DataError("missing field", _at(loc, key))
    try:
        modality = Modality.parse(obj[key])
    except DataError as e:
        raise DataError(e.reason, _at(loc, key)) from None
    try:
        implied = Modality.of(_present(text), _present(image))
    except DataError as e:
        invisible = " (its text has no visible character)" if text else ""
        raise DataError(e.reason + invisible, loc) from None
    if implied is not modality:
        raise DataError(f"says {modality.value!r} but the record carries {implied.value!r} "
                        f"(text {'present' if _present(text) else 'absent'}, "
                        f"image {'present' if _present(image) else 'absent'})", _at(loc, key))
    return modality


def _at(loc: Location, field: str) -> Location:
    return Location(loc.file, loc.line, field, loc.item)


def parse_query(obj: dict, loc: Location | None = None) -> Query:
    loc = loc or Location()
    qid = _id(obj, "qid", loc)
    loc = Location(loc.file, loc.line, None, qid)
    text = _optional_str(obj, "query_txt", loc)
    image = _optional_str(obj, "query_img_path", loc)
    modality = _modality(obj, "query_modality", text, image, loc)
    src = obj.get("query_src_content")
    extra = {k: v for k, v in obj.items() if k not in QUERY_FIELDS}
    return Query(qid=qid, text=text, image=image, modality=modality,
                 pos=_id_list(obj, "pos_cand_list", loc, required=True),
                 neg=_id_list(obj, "neg_cand_list", loc, required=False),
                 src_content=src if isinstance(src, str) else None, extra=extra)


def parse_candidate(obj: dict, loc: Location | None = None) -> Candidate:
    loc = loc or Location()
    did = _id(obj, "did", loc)
    loc = Location(loc.file, loc.line, None, did)
    text = _optional_str(obj, "txt", loc)
    image = _optional_str(obj, "img_path", loc)
    modality = _modality(obj, "modality", text, image, loc)
    src = obj.get("src_content")
    extra = {k: v for k, v in obj.items() if k not in CANDIDATE_FIELDS}
    return Candidate(did=did, text=text, image=image, modality=modality,
                     src_content=src if isinstance(src, str) else None, extra=extra)


def query_to_dict(q: Query) -> dict:
    row = {"qid": q.qid, "query_txt": q.text, "query_img_path": q.image, "query_modality": q.modality.value,
           "query_src_content": q.src_content, "pos_cand_list": list(q.pos), "neg_cand_list": list(q.neg)}
    row.update(q.extra)
    return row


def candidate_to_dict(c: Candidate) -> dict:
    row = {"txt": c.text, "img_path": c.image, "modality": c.modality.value, "did": c.did,
           "src_content": c.src_content}
    row.update(c.extra)
    return row


def iter_queries(path: str | os.PathLike) -> Iterator[Query]:
    """Stream the queries of an M-BEIR query JSONL file."""
    for lineno, obj in iter_jsonl(path):
        yield parse_query(obj, Location(str(path), lineno))


def iter_candidates(path: str | os.PathLike) -> Iterator[Candidate]:
    """Stream the candidates of an M-BEIR candidate-pool JSONL file."""
    for lineno, obj in iter_jsonl(path):
        yield parse_candidate(obj, Location(str(path), lineno))


def read_queries(path: str | os.PathLike) -> list[Query]:
    """All queries of a file; a duplicate qid is an error naming both lines."""
    return _unique(iter_queries(path), path)


def read_candidates(path: str | os.PathLike) -> list[Candidate]:
    """All candidates of a pool file; a duplicate did is an error."""
    return _unique(iter_candidates(path), path)


def _unique(records: Iterable, path) -> list:
    seen: set[str] = set()
    out = []
    for record in records:
        if record.id in seen:
            raise DataError("duplicate id", Location(str(path), None, None, record.id))
        seen.add(record.id)
        out.append(record)
    return out


def write_queries(path: str | os.PathLike, queries: Iterable[Query]) -> int:
    return write_jsonl(path, (query_to_dict(q) for q in queries))


def write_candidates(path: str | os.PathLike, candidates: Iterable[Candidate]) -> int:
    return write_jsonl(path, (candidate_to_dict(c) for c in candidates))


# --- qrels: "qid 0 did relevance task_id" -------------------------------------------------------

def iter_qrels_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int, int | None]]:
    """Stream ``(line, qid, did, relevance, task_id)``; the fifth column is optional (TREC style)."""
    path = Path(path)
    for lineno, line in iter_text_lines(path):  # bytes that are not UTF-8: file:line, never a traceback
        cols = line.split()
        if not cols:
            continue
        loc = Location(str(path), lineno)
        if len(cols) not in (4, 5):
            raise DataError(f"expected 'qid 0 did relevance [task_id]', got {len(cols)} columns", loc)
        qid, _, did, rel = cols[:4]
        try:
            relevance = int(rel)
        except ValueError:
            raise DataError(f"relevance {rel!r} is not an integer",
                            Location(str(path), lineno, "relevance")) from None
        task_id = None
        if len(cols) == 5:
            try:
                task_id = Task.from_id(cols[4]).id
            except DataError as e:
                raise DataError(e.reason, Location(str(path), lineno, "task_id")) from None
        yield lineno, qid, did, relevance, task_id


def read_qrels(path: str | os.PathLike) -> Qrels:
    qrels: Qrels = {}
    for _, qid, did, rel, _ in iter_qrels_lines(path):
        qrels.setdefault(qid, {})[did] = rel
    return qrels


def write_qrels(path: str | os.PathLike, qrels: Qrels, task_ids: dict[str, int] | int | None = None) -> None:
    """Write M-BEIR qrels; ``task_ids`` gives the fifth column (one id, or one per qid)."""
    with atomic_open(path) as f:
        for qid, docs in qrels.items():
            for did, rel in docs.items():
                line = f"{qid} 0 {did} {rel}"
                if task_ids is not None:
                    line += f" {task_ids if isinstance(task_ids, int) else task_ids[qid]}"
                f.write(line + "\n")

