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

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.data.images import ImageLike, ImageStore
from mmembed.data.mbeir import read_candidates
from mmembed.encoders.base import Encoder, Item, as_items
from mmembed.errors import ConfigError, DataError, IndexMismatchError, Location
from mmembed.eval.pool_cache import PoolEmbeddingCache
from mmembed.index.faiss_index import FaissIndex
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.rerank.base import Reranker, RerankResult, can_read_images
from mmembed.types import Candidate

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "retrieval.json"


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is what the results are ordered by: the retrieval score, or after reranking the
    reranker's score (fused with the retrieval score when the reranker's ``alpha`` is above 0).
    Hits below the reranker's ``top_k`` are not reranked: they follow in retrieval order, with
    ``rerank_score`` ``None`` and their retrieval score as ``score``.
    """

    rank: int
    id: str
    score: float
    candidate: Candidate
    #: The retriever's similarity, whether or not the hit was reranked.
    retrieval_score: float
    #: The reranker's raw score; ``None`` without reranking (or below the reranker's ``top_k``).
    rerank_score: float | None = None


class Retriever:
    """Searches an indexed candidate pool with queries of any modality, optionally reranking the top."""

    def __init__(self, encoder: Encoder, index: FaissIndex, candidates: list[Candidate],
                 images: ImageStore | None = None, instructions: InstructionRegistry | None = None,
                 reranker: Reranker | None = None):
        if index.dim != encoder.dim:
            raise IndexMismatchError(f"index dimension {index.dim} does not match encoder dimension {encoder.dim}")
        self.encoder = encoder
        self.index = index
        self.candidates = {c.did: c for c in candidates}
        self.images = images
        self.instructions = instructions or InstructionRegistry()
        self.reranker = reranker

    @property
    def reranker(self) -> Reranker | None:
        """The reranker :meth:`search` uses by default (``None``: retrieval only); assignable."""
        return self._reranker

    @reranker.setter
    def reranker(self, reranker: Reranker | None) -> None:
        self._reranker = reranker
        if reranker is not None and not can_read_images(reranker):
            with_images = sum(c.image is not None for c in self.candidates.values())
            if with_images:
                # refused per query (a clear error), not at attach time: text queries may never reach them
                logger.warning("%d of the %d indexed candidates have images, which the text-only reranker %s "
                               "refuses: a search whose top %d includes one fails", with_images,
                               len(self.candidates), reranker.reranker_id, reranker.top_k)

    # --- building and loading ------------------------------------------------------------------

    @classmethod
    def build(cls, encoder: Encoder, pool_path: str | os.PathLike, out_dir: str | os.PathLike, *,
              encoder_spec: str, image_root: str | os.PathLike | None = None,
              instructions_path: str | os.PathLike | None = None, factory: str = "Flat", dtype: str = "float32",
              batch_size: int = 64, show_progress: bool = True,
              cache_dir: str | os.PathLike | None = None, encoder_settings: Mapping[str, Any] | None = None
              ) -> Retriever:
        """Embed every candidate of ``pool_path`` and write a retrieval directory to ``out_dir``.

        ``encoder_settings`` (the loading options the encoder was made with, e.g. ``nvembed_config``)
        are recorded, so that :meth:`load` loads the same encoder from ``encoder_spec``.
        """
        pool_path = Path(pool_path)
        candidates = read_candidates(pool_path)
        if not candidates:
            raise DataError("the candidate pool is empty", Location(str(pool_path)))
        images = ImageStore(image_root or _guess_image_root(pool_path))
        # Embeddings go through the evaluation's pool cache: an evaluated pool is not embedded again.
        pool = PoolEmbeddingCache(encoder, images, cache_dir, batch_size, show_progress).embed_file(pool_path)
        index = FaissIndex(encoder.dim, factory, dtype=dtype, encoder_id=encoder.encoder_id)
        index.add(pool.ids, pool.vectors)
        from mmembed.index.build import write_retrieval_directory

        write_retrieval_directory(out_dir, index, pool_path, encoder_spec=encoder_spec, encoder_id=encoder.encoder_id,
                                  image_root=images.root, instructions_path=instructions_path,
                                  encoder_settings=encoder_settings)
        instructions = InstructionRegistry.from_tsv(Path(out_dir) / "instructions.tsv") if instructions_path else None
        return cls(encoder, index, candidates, images, instructions)

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder: Encoder | None = None,
             reranker: Reranker | None = None, *, encoder_settings: Mapping[str, Any] | None = None) -> Retriever:
        """Open a retrieval directory; the encoder is loaded from its recorded spec and loading options
        (``encoder_settings`` replace or add options, e.g. ``device``) unless given."""
        directory = Path(directory)
        manifest = read_retrieval_manifest(directory)
        if encoder is None:
            from mmembed.encoders.registry import load_encoder

            encoder = load_encoder(manifest["encoder"], **{**manifest.get("encoder_settings", {}),
                                                          **(encoder_settings or {})})
        index = FaissIndex.load(directory / "vectors", expected_dim=encoder.dim,
                                expected_encoder_id=encoder.encoder_id)
        candidates = read_candidates(directory / "candidates.jsonl")
        instructions_path = directory / "instructions.tsv"
        instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path.is_file() else None
        return cls(encoder, index, candidates, ImageStore(manifest["image_root"]), instructions, reranker)

    # --- searching -----------------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageLike | None = None, *, instruction: str | None = None,
               k: int = 10, rerank: bool | None = None) -> list[Hit]:
        """Top ``k`` candidates for one query (text, image, or both), with an optional instruction.

        ``rerank``: ``None`` reranks when a reranker is attached, ``False`` never, ``True`` always
        (a :class:`ConfigError` without a reranker). With reranking, the retriever's top
        ``max(k, reranker.top_k)`` are fetched, the reranker reorders the first ``top_k`` of them
        (see :class:`Hit`), and the first ``k`` are returned.
        """
        return self.search_items([Item("query", text, image)], [instruction], k=k, rerank=rerank)[0]

    def search_items(self, queries: list[Item], instructions: list[str | None], k: int = 10, *,
                     rerank: bool | None = None) -> list[list[Hit]]:
        """:meth:`search` for many queries (their reranking pairs are batched together)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        reranker = self._reranker_for(rerank)
        depth = k if reranker is None else max(k, reranker.top_k)
        vectors = self.encoder.encode_queries(queries, instructions)
        hits = self.search_vectors(vectors, depth)
        if reranker is not None:
            hits = self._rerank(reranker, queries, instructions, hits)
        return [row[:k] for row in hits]

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Retrieval only (query vectors carry nothing a reranker could read)."""
        ids, scores = self.index.search(vectors, min(k, len(self.index)))
        return [[Hit(rank, did, float(score), self.candidates[did], retrieval_score=float(score))
                 for rank, (did, score) in enumerate(zip(row_ids, row_scores), start=1) if did is not None]
                for row_ids, row_scores in zip(ids, scores)]

    def _reranker_for(self, rerank: bool | None) -> Reranker | None:
        if rerank and self.reranker is None:
            raise ConfigError("rerank=True, but this retriever has no reranker; pass reranker= to Retriever or "
                              "Retriever.load (or set retriever.reranker)")
        return None if rerank is False else self.reranker

    def _rerank(self, reranker: Reranker, queries: list[Item], instructions: list[str | None],
                hits: list[list[Hit]]) -> list[list[Hit]]:
        candidates = [as_items([h.candidate for h in row], self.images) for row in hits]
        scores = [[h.retrieval_score for h in row] for row in hits]
        results = reranker.rerank_many(queries, candidates, instructions, retrieval_scores=scores)
        reranked = []
        for row, rows in zip(hits, results):
            by_id = {h.id: h for h in row}
            reranked.append([_reranked_hit(r, by_id[r.id]) for r in rows])
        return reranked

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


def _reranked_hit(result: RerankResult, hit: Hit) -> Hit:
    score = hit.retrieval_score if result.score is None else result.score
    return Hit(result.rank, hit.id, score, hit.candidate, retrieval_score=hit.retrieval_score,
               rerank_score=result.rerank_score)


def task_name(entry: InstructionEntry) -> str:
    return f"{entry.dataset_name}:{entry.query_modality.value}->{entry.cand_modality.value}"


def retrieval_manifest(encoder_spec: str, encoder_id: str, image_root: str | os.PathLike, pool_path: Path,
                       count: int, encoder_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``retrieval.json`` of a retrieval directory (every writer goes through this)."""
    return {"format_version": FORMAT_VERSION, "encoder": encoder_spec, "encoder_id": encoder_id,
            "encoder_settings": dict(encoder_settings or {}), "image_root": str(Path(image_root).resolve()),
            "source_pool": str(Path(pool_path).resolve()), "count": count}


def read_retrieval_manifest(directory: Path) -> dict:
    """``retrieval.json`` of an index directory, every field checked (a clear error naming it)."""
    from mmembed.index.integrity import check_retrieval_manifest

    path = directory / MANIFEST
    if not path.is_file():
        raise IndexMismatchError(f"{directory}: not a retrieval index (no {MANIFEST}); build one with "
                                 "'mmembed index build'")
    manifest = check_retrieval_manifest(path)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: written by a newer mmembed (format {manifest['format_version']}); "
                                 "upgrade mmembed to read it")
    return manifest


def _guess_image_root(pool_path: Path) -> Path:
    """M-BEIR image paths are relative to the dataset root, two levels above cand_pool/<kind>/."""
    parents = pool_path.resolve().parents
    if len(parents) >= 3 and parents[1].name == "cand_pool":
        return parents[2]
    return pool_path.resolve().parent
