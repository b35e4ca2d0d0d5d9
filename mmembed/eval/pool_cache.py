"""Candidate-pool embeddings, computed once per (encoder, pool content) and cached on disk.

The cache key is the encoder id plus the sha256 of the pool file, so editing a pool or changing
the weights (a new encoder id) never serves stale vectors. Files are written atomically and read
without pickle.
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
from mmembed.fileio import atomic_open, write_json
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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

    def embed_file(self, pool_path: str | os.PathLike) -> EmbeddedPool:
        key = file_sha256(pool_path)
        if key in self._memory:
            return self._memory[key]
        pool = self._load(key)
        if pool is None:
            candidates = read_candidates(pool_path)
            logger.info("embedding %d candidates of %s", len(candidates), Path(pool_path).name)
            pool = self.embed_candidates(candidates)
            self._store(key, pool, Path(pool_path).name)
        self._memory[key] = pool
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
