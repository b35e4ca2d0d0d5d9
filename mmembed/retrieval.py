"""Encoder + index (+ candidates and instructions): the one retrieval object the CLI and service use.

A retrieval directory is self-contained apart from the images and the encoder weights:

```
INDEX_DIR/
  retrieval.json        what to load: encoder spec and id, image root, format version
  candidates.jsonl      the indexed pool (M-BEIR candidate records), to show results
  instructions.tsv      the task instructions (optional), to search by task
  vectors/              the vector index (manifest.json + engine files)
```
It is written atomically as a whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmembed.data.images import ImageLike, ImageStore
from mmembed.data.mbeir import read_candidates
from mmembed.encoders.base import Encoder, Item
from mmembed.errors import ConfigError, DataError, IndexMismatchError, Location
from mmembed.eval.pool_cache import PoolEmbeddingCache
from mmembed.fileio import atomic_directory, write_json
from mmembed.index.faiss_index import FaissIndex
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.types import Candidate

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "retrieval.json"


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    id: str
    score: float
    candidate: Candidate


class Retriever:
    """Searches an indexed candidate pool with queries of any modality."""

    def __init__(self, encoder: Encoder, index: FaissIndex, candidates: list[Candidate],
                 images: ImageStore | None = None, instructions: InstructionRegistry | None = None):
        if index.dim != encoder.dim:
            raise IndexMismatchError(f"index dimension {index.dim} does not match encoder dimension {encoder.dim}")
        self.encoder = encoder
        self.index = index
        self.candidates = {c.did: c for c in candidates}
        self.images = images
        self.instructions = instructions or InstructionRegistry()

    # --- building and loading ------------------------------------------------------------------

    @classmethod
    def build(cls, encoder: Encoder, pool_path: str | os.PathLike, out_dir: str | os.PathLike, *,
              encoder_spec: str, image_root: str | os.PathLike | None = None,
              instructions_path: str | os.PathLike | None = None, factory: str = "Flat", dtype: str = "float32",
              batch_size: int = 64, show_progress: bool = True,
              cache_dir: str | os.PathLike | None = None) -> Retriever:
        """Embed every candidate of ``pool_path`` and write a retrieval directory to ``out_dir``."""
        pool_path = Path(pool_path)
        candidates = read_candidates(pool_path)
        if not candidates:
            raise DataError("the candidate pool is empty", Location(str(pool_path)))
        images = ImageStore(image_root or _guess_image_root(pool_path))
        # Embeddings go through the evaluation's pool cache: an evaluated pool is not embedded again.
        pool = PoolEmbeddingCache(encoder, images, cache_dir, batch_size, show_progress).embed_file(pool_path)
        index = FaissIndex(encoder.dim, factory, dtype=dtype, encoder_id=encoder.encoder_id)
        index.add(pool.ids, pool.vectors)
        instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path else None
        with atomic_directory(out_dir) as staging:
            index.save(staging / "vectors")
            shutil.copyfile(pool_path, staging / "candidates.jsonl")
            if instructions is not None:
                instructions.to_tsv(staging / "instructions.tsv")
            write_json(staging / MANIFEST, {
                "format_version": FORMAT_VERSION, "encoder": encoder_spec, "encoder_id": encoder.encoder_id,
                "image_root": str(images.root), "source_pool": str(pool_path.resolve()), "count": len(candidates)})
        logger.info("indexed %d candidates into %s", len(candidates), out_dir)
        return cls(encoder, index, candidates, images, instructions)

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder: Encoder | None = None) -> Retriever:
        """Open a retrieval directory; the encoder is loaded from its recorded spec unless given."""
        directory = Path(directory)
        manifest = read_retrieval_manifest(directory)
        if encoder is None:
            from mmembed.encoders.registry import load_encoder

            encoder = load_encoder(manifest["encoder"])
        index = FaissIndex.load(directory / "vectors", expected_dim=encoder.dim,
                                expected_encoder_id=encoder.encoder_id)
        candidates = read_candidates(directory / "candidates.jsonl")
        instructions_path = directory / "instructions.tsv"
        instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path.is_file() else None
        return cls(encoder, index, candidates, ImageStore(manifest["image_root"]), instructions)

    # --- searching -----------------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageLike | None = None, *, instruction: str | None = None,
               k: int = 10) -> list[Hit]:
        """Top ``k`` candidates for one query (text, image, or both), with an optional instruction."""
        return self.search_items([Item("query", text, image)], [instruction], k=k)[0]

    def search_items(self, queries: list[Item], instructions: list[str | None], k: int = 10) -> list[list[Hit]]:
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        vectors = self.encoder.encode_queries(queries, instructions)
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        ids, scores = self.index.search(vectors, min(k, len(self.index)))
        return [[Hit(rank, did, float(score), self.candidates[did])
                 for rank, (did, score) in enumerate(zip(row_ids, row_scores), start=1) if did is not None]
                for row_ids, row_scores in zip(ids, scores)]

    # --- tasks ---------------------------------------------------------------------------------

    def tasks(self) -> list[InstructionEntry]:
        """The task instructions known to this index (for task pickers)."""
        return sorted(self.instructions, key=lambda e: (e.dataset_id, e.query_modality.value, e.cand_modality.value))

    def task_instruction(self, task: str) -> str:
        """The first prompt of a task named ``"{dataset}:{query modality}->{candidate modality}"``."""
        for entry in self.instructions:
            if task_name(entry) == task:
                return entry.prompts[0]
        known = ", ".join(task_name(e) for e in self.tasks()) or "none (this index has no instructions)"
        raise ConfigError(f"unknown task {task!r}; known tasks: {known}")


def task_name(entry: InstructionEntry) -> str:
    return f"{entry.dataset_name}:{entry.query_modality.value}->{entry.cand_modality.value}"


def read_retrieval_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise IndexMismatchError(f"{directory}: not a retrieval index (no {MANIFEST}); build one with "
                                 "'mmembed index build'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IndexMismatchError(f"{path}: corrupt manifest ({e.msg})") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: written by a newer mmembed (format {manifest['format_version']}); "
                                 "upgrade mmembed to read it")
    for key in ("encoder", "encoder_id", "image_root"):
        if key not in manifest:
            raise IndexMismatchError(f"{path}: missing key {key!r}")
    return manifest


def _guess_image_root(pool_path: Path) -> Path:
    """M-BEIR image paths are relative to the dataset root, two levels above cand_pool/<kind>/."""
    parents = pool_path.resolve().parents
    if len(parents) >= 3 and parents[1].name == "cand_pool":
        return parents[2]
    return pool_path.resolve().parent
