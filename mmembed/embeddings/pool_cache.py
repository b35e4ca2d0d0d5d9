"""Candidate-pool embeddings, computed once per (encoder, pool content, image content) and cached on disk.

The cache key is the encoder id, the sha256 of the pool file and a digest of the content of every
image the pool names, so editing a pool, replacing an image behind the same path or changing the
weights (a new encoder id) never serves stale vectors. Image content is hashed once and then
trusted while the file's size, modification time and inode stay the same
(:class:`ImageFingerprints`). Files are written atomically and read without pickle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmembed.data.images import ImageStore
from mmembed.data.mbeir import read_candidates
from mmembed.encoders.base import Encoder, as_items
from mmembed.errors import DataError, ImageError, Location
from mmembed.fileio import atomic_open, file_sha256, write_json
from mmembed.types import Candidate, Modality

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedPool:
    """A candidate pool with its embeddings (row i belongs to ``ids[i]``)."""

    ids: list[str]
    modalities: np.ndarray  # int8 codes, see MODALITY_CODES
    vectors: np.ndarray  # float32 (n, dim), L2-normalised

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Row of each id."""
        return {did: i for i, did in enumerate(self.ids)}

    def subset(self, ids: list[str]) -> EmbeddedPool:
        rows = np.array([self.position[did] for did in ids], dtype=np.int64)
        return EmbeddedPool(list(ids), self.modalities[rows], self.vectors[rows])


MODALITY_CODES = {m: i for i, m in enumerate(Modality)}
#: The stat + content-hash record of images, in the cache directory.
IMAGE_FINGERPRINTS = "image-fingerprints.json"


class ImageFingerprints:
    """Content hashes of image files, recomputed only for files whose stat changed.

    Hashing every image on every run would cost as much reading as embedding them; a stat record
    (size, mtime in ns, inode) per file, kept in ``store`` (JSON), lets unchanged files reuse their
    hash. A file whose stat changed is hashed again, so a touched but identical image still matches.
    """

    def __init__(self, store: str | os.PathLike | None = None):
        self.store = Path(store) if store else None
        self._known: dict[str, list] = self._read()
        self._dirty = False

    def _read(self) -> dict[str, list]:
        if self.store is None or not self.store.is_file():
            return {}
        try:
            known = json.loads(self.store.read_bytes().decode("utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable image fingerprint store %s: %s", self.store, e)
            return {}
        return known if isinstance(known, dict) else {}

    def file(self, path: Path) -> str:
        """The content hash of ``path`` (``"missing"`` when it is not a file)."""
        try:
            st = path.stat()
        except OSError:
            return "missing"
        stat = [st.st_size, st.st_mtime_ns, st.st_ino]
        key = str(path)
        known = self._known.get(key)
        if known is not None and known[:3] == stat:
            return known[3]
        digest = file_sha256(path)
        self._known[key] = [*stat, digest]
        self._dirty = True
        return digest

    def digest(self, paths: list[Path]) -> str:
        """One hash over every file's path and content hash (order-independent)."""
        h = hashlib.sha256()
        for path in sorted(set(paths)):
            h.update(f"{path}\0{self.file(path)}\n".encode())
        self.save()
        return h.hexdigest()

    def save(self) -> None:
        if self.store is not None and self._dirty:
            write_json(self.store, {"files": self._known})
            self._dirty = False


def candidate_image_paths(candidates: list[Candidate], images: ImageStore) -> list[Path]:
    """The files behind the candidates' images (unsafe paths are left to the loader to refuse)."""
    paths = []
    for c in candidates:
        if c.image:
            try:
                paths.append(images.resolve(c.image, c.did))
            except ImageError:
                continue
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]


class PoolEmbeddingCache:
    """Embeds candidate pools with an encoder, reusing vectors cached under ``cache_dir``."""

    def __init__(self, encoder: Encoder, images: ImageStore, cache_dir: str | os.PathLike | None,
                 batch_size: int = 64, show_progress: bool = True):
        self.encoder = encoder
        self.images = images
        self.cache_dir = Path(cache_dir) / _slug(encoder.encoder_id) if cache_dir else None
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._memory: dict[str, EmbeddedPool] = {}
        # shared by every encoder's cache under cache_dir: image content does not depend on the encoder
        self.fingerprints = ImageFingerprints(Path(cache_dir) / IMAGE_FINGERPRINTS if cache_dir else None)

    def key(self, file_key: str, candidates: list[Candidate]) -> str:
        """The on-disk cache key of a pool: its file's hash (``file_key``) and the content of its images."""
        images = self.fingerprints.digest(candidate_image_paths(candidates, self.images))
        return hashlib.sha256(f"{file_key}\0{images}".encode()).hexdigest()

    def embed_file(self, pool_path: str | os.PathLike) -> EmbeddedPool:
        # In memory, vectors live as long as this command: the pool file's hash keys them. On disk
        # they outlive it, so the content of every image joins the key there.
        file_key = file_sha256(pool_path)
        if file_key in self._memory:
            return self._memory[file_key]
        candidates = read_candidates(pool_path)
        if not candidates:  # nothing to search: say so here, not as "k must be positive" later
            raise DataError("the candidate pool is empty", Location(str(pool_path)))
        key = self.key(file_key, candidates) if self.cache_dir is not None else file_key
        pool = self._load(key)
        if pool is None:
            logger.info("embedding %d candidates of %s", len(candidates), Path(pool_path).name)
            pool = self.embed_candidates(candidates)
            self._store(key, pool, Path(pool_path).name)
        self._memory[file_key] = pool
        return pool

    def embed_candidates(self, candidates: list[Candidate]) -> EmbeddedPool:
        vectors = self.encoder.encode_candidates(as_items(candidates, self.images), batch_size=self.batch_size,
                                                 show_progress=self.show_progress)
        modalities = np.array([MODALITY_CODES[c.modality] for c in candidates], dtype=np.int8)
        return EmbeddedPool([c.did for c in candidates], modalities, np.ascontiguousarray(vectors, np.float32))

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        assert self.cache_dir is not None
        return (self.cache_dir / f"{key}.vectors.npy", self.cache_dir / f"{key}.modalities.npy",
                self.cache_dir / f"{key}.ids.json")

    def _load(self, key: str) -> EmbeddedPool | None:
        if self.cache_dir is None:
            return None
        vec_path, mod_path, ids_path = self._paths(key)
        if not (vec_path.is_file() and mod_path.is_file() and ids_path.is_file()):
            return None
        try:
            ids = json.loads(ids_path.read_text(encoding="utf-8"))["ids"]
            vectors = np.load(vec_path, allow_pickle=False)
            modalities = np.load(mod_path, allow_pickle=False)
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable embedding cache %s: %s", vec_path, e)
            return None
        if len(ids) != len(vectors) or len(ids) != len(modalities):
            logger.warning("ignoring inconsistent embedding cache %s", vec_path)
            return None
        logger.info("reusing cached embeddings %s", vec_path)
        return EmbeddedPool(ids, modalities, vectors)

    def _store(self, key: str, pool: EmbeddedPool, source_name: str) -> None:
        if self.cache_dir is None:
            return
        vec_path, mod_path, ids_path = self._paths(key)
        # Arrays first, the ids file last: _load requires all three, so a crash in between
        # leaves an incomplete entry that is recomputed rather than a wrong one.
        with atomic_open(vec_path, "wb") as f:
            np.save(f, pool.vectors, allow_pickle=False)
        with atomic_open(mod_path, "wb") as f:
            np.save(f, pool.modalities, allow_pickle=False)
        write_json(ids_path, {"source": source_name, "encoder_id": self.encoder.encoder_id, "ids": pool.ids})
