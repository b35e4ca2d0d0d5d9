"""The vector index protocol and the manifest every saved index carries.

An index maps string ids to L2-normalised float32 vectors and answers top-k inner-product
(= cosine) queries. Everything that retrieves (evaluation, mining, the service) depends on
:class:`VectorIndex` only, so another engine can replace FAISS without touching them.

A saved index is a directory whose ``manifest.json`` says what is inside (engine, dimension,
count, encoder). Loading checks it before reading the (possibly huge) vector file, so an index
built for another encoder or dimension is refused with a message instead of returning nonsense.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from mmembed.embeddings.store import ids_fingerprint  # noqa: F401  (re-exported: index manifests carry it)
from mmembed.errors import DataError, IndexMismatchError, Location
from mmembed.fileio import write_json
from mmembed.types import first_repeat

#: Version of the on-disk layout this code writes; it reads this version and older ones.
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
#: The only similarity indexes use: inner product over unit vectors (cosine).
METRIC = "ip"


class SearchResult(NamedTuple):
    """Top-k answers, one row per query, best first; unpacks as ``ids, scores = index.search(...)``.

    Rows have ``min(k, len(index))`` columns. Where an approximate index finds fewer results than
    that, the missing slots hold id ``None`` and score ``-inf`` (never a fake id).
    """

    #: (n_queries, k) object array of str ids (``None`` for a missing result).
    ids: np.ndarray
    #: (n_queries, k) float32 inner products.
    scores: np.ndarray


@runtime_checkable
class VectorIndex(Protocol):
    """What retrieval needs from a vector index."""

    #: Dimension of the vectors.
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Add vectors under unique string ids."""
        ...

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top ``k`` ids and inner-product scores for each query row."""
        ...

    def save(self, directory: str | os.PathLike) -> None:
        """Write the index to ``directory`` atomically (old content survives a crash)."""
        ...

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder_id: str | None = None) -> VectorIndex:
        """Read an index, refusing one written for another dimension or encoder."""
        ...


def check_new_ids(ids: list[str], existing: set[str], *, max_length: int | None = None) -> None:
    """Refuse ids that are not (non-empty, short enough) strings, repeat, or are already in ``existing``.

    Every engine that adds vectors checks its ids with this before anything is stored.
    """
    for did in ids:
        if not isinstance(did, str):
            raise DataError(f"ids must be strings, got {type(did).__name__} {did!r}", Location(item=str(did)[:80]))
        if max_length is not None and not 0 < len(did) <= max_length:
            raise DataError(f"ids must be non-empty strings of at most {max_length} characters",
                            Location(item=did[:80]))
    if len(set(ids)) != len(ids):
        raise DataError("id appears more than once in this batch; ids must be unique", Location(item=first_repeat(ids)))
    dup = next((i for i in ids if i in existing), None)
    if dup is not None:
        raise DataError("id is already in the index; ids must be unique", Location(item=dup))


@dataclass(frozen=True)
class IndexManifest:
    """The ``manifest.json`` of a saved index."""

    engine: str
    dim: int
    count: int
    factory: str
    dtype: str
    encoder_id: str | None
    created_by: str
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    #: Engine-specific settings (search parameters, library version) kept with the index.
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        write_json(directory / MANIFEST_FILE, asdict(self))


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "engine": str,
    "dim": int,
    "count": int,
    "metric": str,
    "factory": str,
    "dtype": str,
    "encoder_id": (str, type(None)),
    "created_by": str,
}


def read_json_fields(path: Path, fields: dict[str, type | tuple[type, ...]], missing_hint: str,
                     prefix: str = "") -> dict[str, Any]:
    """A JSON object with ``fields`` of the given types; :class:`IndexMismatchError` naming what is wrong.

    ``missing_hint`` follows the message of a missing file; ``prefix`` starts the other messages.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexMismatchError(f"{path}: missing; {missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexMismatchError(f"{path}: {prefix}unreadable or corrupt ({e})") from None
    if not isinstance(raw, dict):
        raise IndexMismatchError(f"{path}: {prefix}expected a JSON object, got {type(raw).__name__}")
    for key, kind in fields.items():
        if key not in raw:
            raise IndexMismatchError(f"{path}: {prefix}field {key!r} is missing")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise IndexMismatchError(f"{path}: {prefix}field {key!r} has the wrong type ({raw[key]!r})")
    return raw


def read_manifest(directory: str | os.PathLike) -> IndexManifest:
    """Parse and check ``manifest.json``; raise :class:`IndexMismatchError` saying what is wrong."""
    path = Path(directory) / MANIFEST_FILE
    if not Path(directory).is_dir():
        raise IndexMismatchError(f"{directory}: no index directory here")
    raw = read_json_fields(path, _REQUIRED, f"{directory} is not a saved mmembed index", "corrupt manifest, ")
    if raw["format_version"] > FORMAT_VERSION:
        raise IndexMismatchError(
            f"{path}: index format version {raw['format_version']} was written by a newer mmembed "
            f"({raw['created_by']}); this version reads format {FORMAT_VERSION} and older; upgrade mmembed"
        )
    if raw["metric"] != METRIC:
        raise IndexMismatchError(f"{path}: metric {raw['metric']!r} is not supported (only {METRIC!r})")
    known = {k: raw[k] for k in _REQUIRED}
    return IndexManifest(**known, extra=dict(raw.get("extra") or {}))


def check_expected(manifest: IndexManifest, directory: str | os.PathLike, *, expected_dim: int | None,
                   expected_encoder_id: str | None) -> None:
    """Refuse an index built for another dimension or encoder, naming both values."""
    if expected_dim is not None and manifest.dim != expected_dim:
        raise IndexMismatchError(
            f"{directory}: index holds {manifest.dim}-dimensional vectors but {expected_dim} were expected "
            f"(index encoder: {manifest.encoder_id!r}); rebuild the index with this encoder"
        )
    if expected_encoder_id is not None and manifest.encoder_id != expected_encoder_id:
        raise IndexMismatchError(
            f"{directory}: index was built with encoder {manifest.encoder_id!r} but encoder "
            f"{expected_encoder_id!r} was expected; rebuild the index with this encoder"
        )
