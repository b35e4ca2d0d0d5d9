"""Atomic writes and line-numbered JSONL streaming: the only places files are written or read raw.

A crash during a write leaves either the old content or the new, never a half-written file, so a
long job that is killed can be resumed from what is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from mmembed.errors import DataError, Location


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """mmembed's cache directory: ``$MMEMBED_CACHE``, else ``$XDG_CACHE_HOME/mmembed``, else ``~/.cache/mmembed``."""
    env = os.environ.get("MMEMBED_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mmembed"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success, fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line atomically; returns the number of rows."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` as a whole on success.

    The old directory is moved aside before the new one is renamed into place, so a crash at any
    point leaves either the complete old directory, the complete new one, or no directory at all
    (never a mixture that would load as a wrong result).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
    try:
        yield staging
        _fsync_tree(staging)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def iter_text_lines(path: str | os.PathLike, start_line: int = 1) -> Iterator[tuple[int, str]]:
    """Stream ``(line_number, text)`` of a UTF-8 text file from ``start_line`` on, line ends removed.

    Lines are decoded one by one, so bytes that are not UTF-8 are a :class:`DataError` naming the
    file, the line and the column rather than a ``UnicodeDecodeError`` naming nothing; lines before
    ``start_line`` are not decoded, so a reader can go on after a bad line. A UTF-8 byte order mark
    at the start is dropped.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", Location(file=str(path))) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a file", Location(file=str(path))) from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if lineno < start_line:
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield lineno, _decode_line(raw, path, lineno).rstrip("\r\n")


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                        Location(str(path), lineno)) from None


def iter_jsonl(path: str | os.PathLike, start_line: int = 1) -> Iterator[tuple[int, dict]]:
    """Stream ``(line_number, object)`` pairs from ``start_line`` on.

    Blank lines are skipped; bad JSON or bytes that are not UTF-8 raise :class:`DataError` naming
    the line (a caller that wants to go on after it restarts at the next line).
    """
    path = Path(path)
    for lineno, line in iter_text_lines(path, start_line):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", Location(str(path), lineno)) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", Location(str(path), lineno))
        yield lineno, obj
