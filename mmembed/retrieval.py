"""Encoder + index (+ candidates and instructions): the one retrieval object the CLI and service use.

A :class:`Retriever` searches any :class:`~mmembed.index.base.VectorIndex` (exact or approximate
FAISS, the streamed exact index, Milvus). It opens a retrieval directory, self-contained apart from
the images and the encoder weights, whose layout and builder live in :mod:`mmembed.index.directory`
(``retrieval.json``, ``candidates.jsonl``, ``instructions.tsv``, ``vectors/``).
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
from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.index import load_index
from mmembed.index.base import VectorIndex
from mmembed.index.directory import (  # noqa: F401  (MANIFEST, FORMAT_VERSION, retrieval_manifest: re-exported)
    FORMAT_VERSION,
    INSTRUCTIONS_FILE,
    MANIFEST,
    VECTORS_DIR,
    build_retrieval_directory,
    read_retrieval_manifest,
    retrieval_manifest,
)
from mmembed.index.integrity import CANDIDATES_FILE
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.rerank.base import Reranker, RerankResult, can_read_images
from mmembed.types import Candidate

logger = logging.getLogger(__name__)


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

    def __init__(self, encoder: Encoder, index: VectorIndex, candidates: list[Candidate],
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
        are recorded, so that :meth:`load` loads the same encoder from ``encoder_spec``. Other engines
        and precomputed embeddings: :func:`mmembed.index.directory.build_retrieval_directory`.
        """
        index = build_retrieval_directory(pool_path, out_dir, encoder_spec=encoder_spec, encoder=encoder,
                                          image_root=image_root, instructions_path=instructions_path,
                                          factory=factory, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                                          encoder_settings=encoder_settings, show_progress=show_progress)
        return cls._open(Path(out_dir), encoder, index)

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
        index = load_index(directory / VECTORS_DIR, expected_dim=encoder.dim, expected_encoder_id=encoder.encoder_id)
        return cls._open(directory, encoder, index, reranker)

    @classmethod
    def _open(cls, directory: Path, encoder: Encoder, index: VectorIndex,
              reranker: Reranker | None = None) -> Retriever:
        """The retriever of a retrieval directory whose index is open."""
        manifest = read_retrieval_manifest(directory)
        candidates = read_candidates(directory / CANDIDATES_FILE)
        instructions_path = directory / INSTRUCTIONS_FILE
        instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path.is_file() else None
        return cls(encoder, index, candidates, ImageStore(manifest["image_root"]), instructions, reranker)

    # --- searching -----------------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageLike | None = None, *, instruction: str | None = None,
               k: int = 10, rerank: bool | None = None, where: str | None = None,
               modality: str | list[str] | None = None, hybrid: str | None = None) -> list[Hit]:
        """Top ``k`` candidates for one query (text, image, or both), with an optional instruction.

        ``where`` and ``modality`` restrict the candidates (see :mod:`mmembed.index.filters`;
        e.g. ``where='dataset == "10"'``, ``modality="image"``). ``hybrid`` (``"rrf"`` or
        ``"weighted"``) fuses the dense ranking with BM25 over the candidates' texts
        (:mod:`mmembed.index.hybrid`).

        ``rerank``: ``None`` reranks when a reranker is attached, ``False`` never, ``True`` always
        (a :class:`ConfigError` without a reranker). With reranking, the retriever's top
        ``max(k, reranker.top_k)`` are fetched, the reranker reorders the first ``top_k`` of them
        (see :class:`Hit`), and the first ``k`` are returned.
        """
        return self.search_items([Item("query", text, image)], [instruction], k=k, rerank=rerank, where=where,
                                 modality=modality, hybrid=hybrid)[0]

    def search_items(self, queries: list[Item], instructions: list[str | None], k: int = 10, *,
                     rerank: bool | None = None, where: str | None = None, modality: str | list[str] | None = None,
                     hybrid: str | None = None) -> list[list[Hit]]:
        """:meth:`search` for many queries (their reranking pairs are batched together)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        reranker = self._reranker_for(rerank)
        depth = k if reranker is None else max(k, reranker.top_k)
        allowed = self.filter_mask(where, modality)  # a bad filter fails before anything is encoded
        vectors = self.encoder.encode_queries(queries, instructions)
        if hybrid is not None:
            from mmembed.index.hybrid import hybrid_search

            hits = self.hits_for(*hybrid_search(self, vectors, [q.text for q in queries], depth, allowed, hybrid))
        else:
            hits = self.search_vectors(vectors, depth, allowed=allowed)
        if reranker is not None:
            hits = self._rerank(reranker, queries, instructions, hits)
        return [row[:k] for row in hits]

    def search_vectors(self, vectors: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> list[list[Hit]]:
        """Retrieval only (query vectors carry nothing a reranker could read); ``allowed``: see :meth:`filter_mask`."""
        from mmembed.index.filters import search_allowed

        return self.hits_for(*search_allowed(self.index, vectors, min(k, len(self.index)), allowed))

    def filter_mask(self, where: str | None = None, modality: str | list[str] | None = None) -> np.ndarray | None:
        """Bool over the index's rows: the candidates ``where`` and ``modality`` keep (None: no filter)."""
        if where is None and modality is None:
            return None
        filt = self.fields.parse(where, modality)
        return None if filt is None else self.fields.mask(filt)

    @property
    def fields(self) -> Any:
        """The filterable fields of the candidates (:class:`mmembed.index.filters.CandidateFields`), built once."""
        if getattr(self, "_fields", None) is None:
            from mmembed.index.filters import CandidateFields

            self._fields = CandidateFields.of(self.index.ids(), self.candidates)  # type: ignore[attr-defined]
        return self._fields

    def hits_for(self, ids: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
        """Rows of (candidate ids, scores) from an index search as :class:`Hit` lists (``None`` ids skipped)."""
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
