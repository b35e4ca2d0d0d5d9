"""Precomputed embeddings on disk: chunk files of ids + vectors, and the manifest that says what they are.

A pool of ``count`` rows is cut into chunks of ``chunk_size`` consecutive rows; chunk ``c`` holds
pool rows ``[c * chunk_size, (c + 1) * chunk_size)`` in pool order. Any process may write any
chunk (a shard is a set of chunks), so chunk files do not depend on how the work was split and
two shards together are the same files as one unsharded run.

```
DIR/
  identity.json           what these embeddings are of (encoder, pool fingerprint, dtype, ...)
  chunks/chunk-000000.npz ids (unicode), vectors (float16/float32), modalities (int8 codes)
  embeddings.json         the manifest, written once every chunk exists (its presence = complete)
```
Each chunk file is written atomically in one piece, so a killed run leaves whole chunks only
and resumes at the first missing one. Files are read without pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.fileio import atomic_open, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "embeddings.json"
IDENTITY = "identity.json"
CHUNKS = "chunks"
DTYPES = ("float16", "float32")


def ids_fingerprint(ids: Iterable[str]) -> str:
    """sha256 of an ordered id list (each id JSON-quoted on its own line, so no id can fake a separator).

    Saved with the vectors as ``extra["ids_sha256"]``: a candidates or ids file that is truncated,
    shuffled or from another pool no longer matches it.
    """
    digest = hashlib.sha256()
    for did in ids:
        digest.update(json.dumps(did, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Identity:
    """Everything chunk files depend on; chunks of another identity are never mixed in."""

    kind: str  # "candidates"
    encoder_id: str
    pool_sha256: str
    ids_sha256: str
    count: int
    dim: int
    dtype: str
    chunk_size: int
    format_version: int = FORMAT_VERSION

    @property
    def num_chunks(self) -> int:
        return -(-self.count // self.chunk_size)

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.count)


@dataclass(frozen=True)
class Manifest:
    """``embeddings.json``: the identity plus provenance, written when the set is complete."""

    identity: Identity
    encoder_spec: str | None
    source_pool: str
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.identity), "encoder_spec": self.encoder_spec, "source_pool": self.source_pool,
                "created_by": self.created_by}


def chunk_path(directory: Path, chunk: int) -> Path:
    return directory / CHUNKS / f"chunk-{chunk:06d}.npz"


def write_chunk(directory: Path, chunk: int, ids: list[str], vectors: np.ndarray, modalities: np.ndarray) -> None:
    """One chunk file, atomically (a reader sees the whole chunk or none)."""
    with atomic_open(chunk_path(directory, chunk), "wb") as f:
        np.savez(f, ids=np.array(ids, dtype=str), vectors=vectors, modalities=modalities)


def read_chunk(directory: Path, chunk: int, identity: Identity) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, vectors (stored dtype) and modality codes of a chunk, checked against ``identity``."""
    path = chunk_path(directory, chunk)
    start, stop = identity.chunk_rows(chunk)
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, vectors, modalities = z["ids"].tolist(), z["vectors"], z["modalities"]
    except FileNotFoundError:
        raise IndexMismatchError(f"{path}: chunk file is missing (rows {start}-{stop - 1} were never encoded); "
                                 "run 'mmembed encode' again to finish it") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise IndexMismatchError(f"{path}: corrupt chunk file ({e}); delete it and run 'mmembed encode' "
                                 "again to redo it") from None
    expected = (stop - start, identity.dim)
    if vectors.shape != expected or len(ids) != expected[0] or modalities.shape != (expected[0],):
        raise IndexMismatchError(f"{path}: chunk holds {len(ids)} ids and vectors of shape {vectors.shape}, "
                                 f"expected {expected[0]} rows of dimension {identity.dim}")
    if vectors.dtype != np.dtype(identity.dtype):
        raise IndexMismatchError(f"{path}: vectors are {vectors.dtype}, the manifest says {identity.dtype}")
    return ids, vectors, modalities


def read_identity(directory: Path) -> Identity | None:
    path = directory / IDENTITY
    if not path.is_file():
        return None
    return _identity_from(_read_json(path), path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexMismatchError(f"{path}: unreadable or corrupt ({e})") from None
    if not isinstance(raw, dict):
        raise IndexMismatchError(f"{path}: corrupt (expected a JSON object)")
    return raw


_FIELD_TYPES: dict[str, type] = {"kind": str, "encoder_id": str, "pool_sha256": str, "ids_sha256": str,
                                 "count": int, "dim": int, "dtype": str, "chunk_size": int, "format_version": int}


def _identity_from(raw: dict[str, Any], path: Path) -> Identity:
    for key, kind in _FIELD_TYPES.items():
        if key not in raw:
            raise IndexMismatchError(f"{path}: field {key!r} is missing")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise IndexMismatchError(f"{path}: field {key!r} has the wrong type ({raw[key]!r})")
    if raw["format_version"] > FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: written by a newer mmembed (format {raw['format_version']}); upgrade")
    if raw["dtype"] not in DTYPES:
        raise IndexMismatchError(f"{path}: field 'dtype' is {raw['dtype']!r}; expected one of {', '.join(DTYPES)}")
    for key in ("count", "dim", "chunk_size"):
        if raw[key] < 1:
            raise IndexMismatchError(f"{path}: field {key!r} must be positive, got {raw[key]}")
    return Identity(**{k: raw[k] for k in _FIELD_TYPES})


def claim_directory(directory: Path, identity: Identity) -> None:
    """Record ``identity`` for a new output directory, or refuse one that holds other embeddings."""
    existing = read_identity(directory)
    if existing is None:
        write_json(directory / IDENTITY, asdict(identity))
        return
    if existing != identity:
        differing = [k for k in _FIELD_TYPES if getattr(existing, k) != getattr(identity, k)]
        raise ConfigError(
            f"{directory} holds embeddings of something else (differs in: {', '.join(differing)}); "
            "choose another --out or delete that directory"
        )


class EmbeddingSet:
    """A complete set of precomputed embeddings, read chunk by chunk (memory bounded) or whole."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.directory = directory
        self.manifest = manifest
        self.identity = manifest.identity

    @classmethod
    def open(cls, directory: str | os.PathLike) -> EmbeddingSet:
        """Open ``directory``; refuse an unfinished or corrupt one, saying what is missing."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not directory.is_dir():
            raise IndexMismatchError(f"{directory}: no embeddings directory here")
        if not path.is_file():
            identity = read_identity(directory)
            if identity is None:
                raise IndexMismatchError(f"{directory}: not an embeddings directory (no {MANIFEST}); "
                                         "write one with 'mmembed encode'")
            missing = [c for c in range(identity.num_chunks) if not chunk_path(directory, c).is_file()]
            raise IndexMismatchError(
                f"{directory}: unfinished embeddings, {len(missing)} of {identity.num_chunks} chunks missing "
                f"(first: {chunk_path(directory, missing[0]).name if missing else 'none'}); run every shard of "
                "'mmembed encode' to the end"
            )
        raw = _read_json(path)
        identity = _identity_from(raw, path)
        for key in ("source_pool", "created_by"):
            if not isinstance(raw.get(key), str):
                raise IndexMismatchError(f"{path}: field {key!r} is missing or not a string")
        spec = raw.get("encoder_spec")
        manifest = Manifest(identity, spec if isinstance(spec, str) else None, raw["source_pool"], raw["created_by"])
        return cls(directory, manifest)

    def __len__(self) -> int:
        return self.identity.count

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def encoder_id(self) -> str:
        return self.identity.encoder_id

    def check(self, *, encoder_id: str | None = None, pool_sha256: str | None = None,
              dim: int | None = None) -> None:
        """Refuse embeddings of another encoder, pool or dimension, naming both values."""
        where = self.directory / MANIFEST
        if encoder_id is not None and encoder_id != self.encoder_id:
            raise IndexMismatchError(f"{where}: embeddings were made by encoder {self.encoder_id!r}, "
                                     f"not {encoder_id!r}")
        if pool_sha256 is not None and pool_sha256 != self.identity.pool_sha256:
            raise IndexMismatchError(f"{where}: embeddings are of another pool (sha256 {self.identity.pool_sha256[:12]}"
                                     f"..., this pool file is {pool_sha256[:12]}...)")
        if dim is not None and dim != self.dim:
            raise IndexMismatchError(f"{where}: embeddings have dimension {self.dim}, expected {dim}")

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """``(ids, vectors, modalities)`` per chunk in pool order; vectors in their stored dtype."""
        seen: list[str] = []
        for chunk in range(self.identity.num_chunks):
            ids, vectors, modalities = read_chunk(self.directory, chunk, self.identity)
            seen.extend(ids)
            yield ids, vectors, modalities
        # A chunk copied in from another run has the right shape but other ids: caught here.
        if ids_fingerprint(seen) != self.identity.ids_sha256:
            raise IndexMismatchError(f"{self.directory}: the chunk files' ids do not match the manifest's id "
                                     "fingerprint (chunks from another run mixed in?); re-encode")

    def id_array(self) -> tuple[np.ndarray, np.ndarray]:
        """All ids (a numpy unicode array, far smaller than a list of str) and modality codes, in pool order.

        Reads only those members of each chunk file and checks them against the manifest's id fingerprint.
        """
        ids: list[np.ndarray] = []
        modalities: list[np.ndarray] = []
        for chunk in range(self.identity.num_chunks):
            path = chunk_path(self.directory, chunk)
            try:
                with np.load(path, allow_pickle=False) as z:
                    ids.append(z["ids"])
                    modalities.append(z["modalities"])
            except (OSError, ValueError, KeyError, EOFError) as e:
                raise IndexMismatchError(f"{path}: unreadable chunk file ({e}); run 'mmembed encode' again") from None
        all_ids = np.concatenate(ids) if ids else np.array([], dtype=str)
        streamed = (did for part in ids for did in part.tolist())  # a chunk's worth of str at a time
        if all_ids.shape != (len(self),) or ids_fingerprint(streamed) != self.identity.ids_sha256:
            raise IndexMismatchError(f"{self.directory}: the chunk files' ids do not match the manifest's id "
                                     "fingerprint (chunks from another run mixed in?); re-encode")
        return all_ids, np.concatenate(modalities)

    def vector_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, vectors)`` per chunk in pool order, vectors in their stored dtype; only vectors are read."""
        for chunk in range(self.identity.num_chunks):
            path = chunk_path(self.directory, chunk)
            start, stop = self.identity.chunk_rows(chunk)
            try:
                with np.load(path, allow_pickle=False) as z:
                    vectors = z["vectors"]
            except (OSError, ValueError, KeyError, EOFError) as e:
                raise IndexMismatchError(f"{path}: corrupt chunk file ({e}); delete it and run 'mmembed encode' "
                                         "again to redo it") from None
            if vectors.shape != (stop - start, self.dim) or vectors.dtype != np.dtype(self.identity.dtype):
                raise IndexMismatchError(f"{path}: vectors of shape {vectors.shape} and dtype {vectors.dtype}, "
                                         f"expected ({stop - start}, {self.dim}) {self.identity.dtype}")
            yield start, vectors

    def read_all(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """All ids, float32 vectors and modality codes (holds the whole set in memory)."""
        ids: list[str] = []
        vectors = np.empty((len(self), self.dim), dtype=np.float32)
        modalities = np.empty(len(self), dtype=np.int8)
        for chunk_ids, chunk_vectors, chunk_modalities in self.chunks():
            start = len(ids)
            vectors[start:start + len(chunk_ids)] = chunk_vectors
            modalities[start:start + len(chunk_ids)] = chunk_modalities
            ids.extend(chunk_ids)
        return ids, vectors, modalities

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """A seeded random sample of ``min(n, count)`` float32 rows (to train an ANN index)."""
        if n >= len(self):
            return self.read_all()[1]
        rows = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        out = np.empty((n, self.dim), dtype=np.float32)
        filled = 0
        for chunk in range(self.identity.num_chunks):
            start, stop = self.identity.chunk_rows(chunk)
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:
                vectors = read_chunk(self.directory, chunk, self.identity)[1]
                out[filled:filled + hi - lo] = vectors[rows[lo:hi] - start]
                filled += hi - lo
        return out
