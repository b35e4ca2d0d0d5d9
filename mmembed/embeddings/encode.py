"""Sharded, resumable encoding of a candidate pool into an embeddings directory (see :mod:`.store`).

``shard=(i, n)`` encodes chunks ``i, i + n, i + 2n, ...``; under ``torchrun`` it defaults to
(RANK, WORLD_SIZE). Finished chunks are skipped on a rerun, so a killed job loses at most the
chunk it was on. Whichever shard finds every chunk present writes the manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmembed.data.images import ImageStore
from mmembed.data.mbeir import iter_candidates
from mmembed.embeddings.pool_cache import MODALITY_CODES, file_sha256
from mmembed.embeddings.store import (
    CHUNKS,
    DTYPES,
    MANIFEST,
    EmbeddingSet,
    Identity,
    Manifest,
    chunk_path,
    claim_directory,
    ids_fingerprint,
    write_chunk,
)
from mmembed.encoders.base import Encoder, as_items
from mmembed.errors import ConfigError, DataError, IndexMismatchError, Location
from mmembed.fileio import write_json
from mmembed.hashing import stable_hash
from mmembed.types import Candidate
from mmembed.version import __version__

log = logging.getLogger(__name__)

#: Rows per chunk: the unit of resumption (a kill loses at most this much work).
DEFAULT_CHUNK_SIZE = 4096


@dataclass(frozen=True)
class EncodeResult:
    directory: Path
    #: Chunks this process encoded now / found already done.
    encoded: int
    reused: int
    #: True when every chunk of every shard exists and the manifest is written.
    complete: bool


def default_shard() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate, else (0, 1)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ConfigError("RANK / WORLD_SIZE must be integers (as torchrun sets them)") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    check_shard((index, count))
    return index, count


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")


def guess_image_root(pool_path: Path) -> Path:
    """M-BEIR image paths are relative to the dataset root, two levels above cand_pool/<kind>/."""
    parents = pool_path.resolve().parents
    if len(parents) >= 3 and parents[1].name == "cand_pool":
        return parents[2]
    return pool_path.resolve().parent


def encode_pool(encoder: Encoder, pool_path: str | os.PathLike, out: str | os.PathLike, *,
                image_root: str | os.PathLike | None = None, shard: tuple[int, int] | None = None,
                dtype: str = "float16", chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 64,
                encoder_spec: str | None = None, show_progress: bool = False) -> EncodeResult:
    """Encode this shard's chunks of the pool at ``pool_path`` into ``out``; resume where it stopped."""
    if dtype not in DTYPES:
        raise ConfigError(f"embedding dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be positive, got {chunk_size}")
    shard = shard or default_shard()
    check_shard(shard)
    pool_path, out = Path(pool_path), Path(out)
    count, fingerprint = scan_pool(pool_path)
    identity = Identity("candidates", encoder.encoder_id, file_sha256(pool_path), fingerprint, count, encoder.dim,
                        dtype, chunk_size)
    claim_directory(out, identity)
    images = ImageStore(image_root or guess_image_root(pool_path))
    mine = set(range(shard[0], identity.num_chunks, shard[1]))
    _remove_stale_temporaries(out, sorted(mine))
    log.info("shard %d/%d: %d chunks (%d rows each) into %s", shard[0], shard[1], len(mine), chunk_size, out)
    encoded = reused = 0
    # the pool is read as a stream, one chunk of candidates at a time: memory holds one chunk
    chunks = (rows for chunk, rows in enumerate(_chunked(iter_candidates(pool_path), chunk_size)) if chunk in mine)
    for chunk, rows in _progress(zip(sorted(mine), chunks), show_progress, len(mine),
                                 f"encoding shard {shard[0]}/{shard[1]}"):
        if _chunk_done(out, chunk, rows):
            reused += 1
            continue
        _encode_chunk(encoder, rows, images, out, chunk, dtype, batch_size)
        encoded += 1
    complete = _finish(out, identity, Manifest(identity, encoder_spec, str(pool_path.resolve()),
                                               f"mmembed {__version__}"))
    return EncodeResult(out, encoded, reused, complete)


def scan_pool(pool_path: Path) -> tuple[int, str]:
    """(candidates, ids fingerprint) of a pool file, read as a stream; an empty pool or a repeated id is refused.

    Repeats are found among 64-bit hashes of the ids (8 bytes per candidate, not a set of strings);
    a hash collision is confirmed on the strings before it is reported.
    """
    hashes: list[int] = []

    def ids():
        for candidate in iter_candidates(pool_path):
            hashes.append(stable_hash(candidate.did))
            yield candidate.did

    fingerprint = ids_fingerprint(ids())
    if not hashes:
        raise DataError("the candidate pool is empty", Location(str(pool_path)))
    ordered = np.sort(np.array(hashes, dtype=np.uint64))
    if (ordered[1:] == ordered[:-1]).any():
        seen: set[str] = set()
        for candidate in iter_candidates(pool_path):
            if candidate.did in seen:
                raise DataError("duplicate id", Location(str(pool_path), None, None, candidate.did))
            seen.add(candidate.did)
    return len(hashes), fingerprint


def _chunked(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_chunk(encoder: Encoder, rows: list[Candidate], images: ImageStore, out: Path, chunk: int,
                  dtype: str, batch_size: int) -> None:
    vectors = np.asarray(encoder.encode_candidates(as_items(rows, images), batch_size=batch_size), dtype=np.float32)
    if vectors.shape != (len(rows), encoder.dim):
        raise IndexMismatchError(f"encoder {encoder.encoder_id!r} returned shape {vectors.shape} for "
                                 f"{len(rows)} candidates of dimension {encoder.dim}")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError("the encoder returned NaN or infinite values", Location(item=rows[int(np.argmax(bad))].did))
    modalities = np.array([MODALITY_CODES[c.modality] for c in rows], dtype=np.int8)
    write_chunk(out, chunk, [c.did for c in rows], vectors.astype(dtype), modalities)


def _chunk_done(out: Path, chunk: int, rows: list[Candidate]) -> bool:
    """A chunk counts as done when its file opens and holds the pool's ids for its rows.

    Only the ids are read (chunks are written whole, atomically): resuming a 5.6M x 4096 run must
    not read 43 GB of vectors back. A damaged vector array is refused when the set is read.
    """
    path = chunk_path(out, chunk)
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            ids = z["ids"].tolist()
    except (OSError, ValueError, KeyError, EOFError) as e:
        log.warning("redoing %s: unreadable (%s)", path, e)
        return False
    if ids != [c.did for c in rows]:
        log.warning("redoing %s: its ids are not the pool's rows of that chunk", path)
        return False
    return True


def _remove_stale_temporaries(out: Path, chunks: list[int]) -> None:
    """Half-written temporaries of *this shard's* chunks (a killed run) go; other shards' are theirs."""
    names = {chunk_path(out, c).name for c in chunks}
    folder = out / CHUNKS
    for tmp in folder.glob(".chunk-*.tmp") if folder.is_dir() else []:
        if tmp.name[1:].split(".npz.")[0] + ".npz" in names:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _finish(out: Path, identity: Identity, manifest: Manifest) -> bool:
    """Write the manifest once every chunk exists (any shard may be the last to finish)."""
    missing = [c for c in range(identity.num_chunks) if not chunk_path(out, c).is_file()]
    if missing:
        log.info("%d chunks of other shards are still missing; the last shard to finish writes %s", len(missing),
                 MANIFEST)
        return False
    write_json(out / MANIFEST, manifest.to_dict())
    EmbeddingSet.open(out)  # reads the manifest back: a corrupt write shows here, not at index time
    return True


def _progress(items, show: bool, total: int, desc: str):
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="chunk")
