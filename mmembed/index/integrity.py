"""Checks that the files around a saved index belong to its vectors.

A retrieval directory (see :mod:`mmembed.retrieval`) keeps the vectors under ``vectors/`` and
the candidate records in ``candidates.jsonl`` next to it. If that file is truncated, shuffled or
replaced by another pool's, results silently point at the wrong records (or fail with a bare
``KeyError``), so loading an index that sits in a retrieval directory compares the candidate ids,
in order, with the index's ids; and ``retrieval.json`` is checked field by field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmembed.errors import DataError, IndexMismatchError
from mmembed.index.base import read_json_fields

CANDIDATES_FILE = "candidates.jsonl"
RETRIEVAL_MANIFEST = "retrieval.json"

#: Fields of ``retrieval.json`` and their types (what :mod:`mmembed.retrieval` reads).
_RETRIEVAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "encoder": str, "encoder_id": str, "image_root": str,
}


def check_retrieval_manifest(path: Path) -> dict[str, Any]:
    """Parse ``retrieval.json``, refusing a malformed one with the field that is wrong."""
    raw = read_json_fields(path, _RETRIEVAL_FIELDS, "not a retrieval index, build one with 'mmembed index build'")
    if not isinstance(raw.get("encoder_settings", {}), dict):
        raise IndexMismatchError(f"{path}: field 'encoder_settings' must be an object, got {raw['encoder_settings']!r}")
    if "count" in raw and (not isinstance(raw["count"], int) or isinstance(raw["count"], bool) or raw["count"] < 0):
        raise IndexMismatchError(f"{path}: field 'count' must be a non-negative integer, got {raw['count']!r}")
    return raw


def check_candidates_file(path: Path, ids: list[str]) -> None:
    """``path`` (a candidates JSONL) must list exactly ``ids``, in this order."""
    from mmembed.fileio import iter_jsonl

    row = -1
    try:
        for row, (lineno, obj) in enumerate(iter_jsonl(path)):
            did = obj.get("did")
            if row >= len(ids):
                raise IndexMismatchError(f"{path}:{lineno}: more candidates than the {len(ids)} indexed vectors "
                                         "(a candidates file of another pool?); rebuild the index")
            if did != ids[row]:
                raise IndexMismatchError(
                    f"{path}:{lineno}: candidate {did!r} where the index has {ids[row]!r} at row {row + 1} "
                    "(truncated, shuffled or another pool's candidates file?); rebuild the index or restore the file"
                )
    except DataError as e:
        raise IndexMismatchError(f"candidates file does not match the index: {e}") from None
    if row + 1 != len(ids):
        raise IndexMismatchError(f"{path}: {row + 1} candidates for {len(ids)} indexed vectors (truncated file?); "
                                 "rebuild the index or restore the file")


def check_retrieval_siblings(index_dir: Path, ids: list[str]) -> None:
    """When ``index_dir`` is the ``vectors/`` of a retrieval directory, check the files beside it."""
    parent = index_dir.parent
    if not (parent / RETRIEVAL_MANIFEST).is_file():
        return  # a bare index: nothing beside it to check
    check_retrieval_manifest(parent / RETRIEVAL_MANIFEST)
    if (parent / CANDIDATES_FILE).is_file():
        check_candidates_file(parent / CANDIDATES_FILE, ids)
