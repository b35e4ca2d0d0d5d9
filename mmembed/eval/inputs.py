"""What an evaluation reads: the global pool's vectors and the queries' vectors, encoded or precomputed.

With ``embeddings_dir`` the global pool stays on disk (its ids and modality codes are read, its
vectors streamed by the exact search); without it the pool is embedded through the pool-embedding
cache. With ``query_embeddings_dir`` the query vectors come from ``mmembed encode --queries``
output, checked against the data and settings; otherwise the encoder embeds them. Local pools are
masks over the global pool's rows when they are part of it, and embedded on their own otherwise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mmembed.data.mbeir import iter_candidates
from mmembed.embeddings.pool_cache import EmbeddedPool, PoolEmbeddingCache
from mmembed.errors import DataError, IndexMismatchError, Location
from mmembed.eval.split_search import (
    Found,
    PoolRows,
    QueryBlock,
    SearchReport,
    global_index,
    local_search,
    search_split,
)
from mmembed.fileio import file_sha256

if TYPE_CHECKING:
    from mmembed.data.layout import MBEIRDirectory, TaskFiles
    from mmembed.encoders.base import Encoder
    from mmembed.types import Query

logger = logging.getLogger(__name__)


class LocalPool:
    """A task's local pool: a mask over the global pool's rows, or its own embedded pool."""

    def __init__(self, mask: np.ndarray | None, embedded: EmbeddedPool | None, ids: set[str]):
        self.mask, self.embedded, self.ids = mask, embedded, ids

    @property
    def size(self) -> int:
        return len(self.ids)


class EvalInputs:
    """The vectors of one evaluation, read or embedded once (``config``: an ``EvalConfig``)."""

    def __init__(self, encoder: Encoder | None, directory: MBEIRDirectory, config: Any,
                 tasks: list[TaskFiles]):
        self.encoder, self.directory, self.config = encoder, directory, config
        self.cache = (PoolEmbeddingCache(encoder, directory.images, config.cache_dir, config.batch_size,
                                         config.show_progress) if encoder is not None else None)
        self.embeddings = None
        self.queries = None
        if config.embeddings_dir:
            from mmembed.embeddings.store import EmbeddingSet

            self.embeddings = EmbeddingSet.open(config.embeddings_dir)
        self.encoder_id = encoder.encoder_id if encoder is not None else self.embeddings.encoder_id  # type: ignore
        if config.query_embeddings_dir:
            from mmembed.embeddings.queries import QueryStore

            self.queries = QueryStore(config.query_embeddings_dir)
            self.queries.check(directory, tasks, split=config.split, seed=config.seed, text_format=config.text_format,
                               modes=config.instruction_modes, encoder_id=self.encoder_id)
        self._vectors: np.ndarray | None = None
        self.pool: PoolRows | None = None
        if "global" in config.pools or self.embeddings is not None:
            self.pool = self._global_pool()

    def _global_pool(self) -> PoolRows:
        path = self.directory.global_pool(self.config.split)
        if not path.is_file():
            raise DataError("global candidate pool not found (needed for the global-pool setting and for "
                            "precomputed embeddings)", Location(str(path)))
        if self.embeddings is not None:
            self.embeddings.check(encoder_id=self.encoder_id, pool_sha256=file_sha256(path))
            ids, modalities = self.embeddings.id_array()
            return PoolRows(ids, modalities)
        assert self.cache is not None
        embedded = self.cache.embed_file(path)
        self._vectors = embedded.vectors
        return PoolRows(np.array(embedded.ids, dtype=str), embedded.modalities)

    def local_pool(self, task: TaskFiles) -> LocalPool:
        if not task.local_pool.is_file():
            raise DataError("local candidate pool not found", Location(str(task.local_pool)))
        ids = [c.did for c in iter_candidates(task.local_pool)]
        if not ids:
            raise DataError("the candidate pool is empty", Location(str(task.local_pool)))
        if self.pool is not None:
            rows = self.pool.rows_of(ids)
            if (rows >= 0).all():  # part of the union: a mask over its rows, nothing embedded again
                mask = np.zeros(len(self.pool), dtype=bool)
                mask[rows] = True
                return LocalPool(mask, None, set(ids))
        if self.cache is None:
            raise IndexMismatchError(f"{task.local_pool}: this local pool is not part of the global pool's "
                                     "precomputed embeddings, and there is no encoder to embed it")
        embedded = self.cache.embed_file(task.local_pool)
        return LocalPool(None, embedded, set(embedded.ids))

    def contains(self, pool_name: str, local: LocalPool | None):
        if pool_name == "global":
            assert self.pool is not None
            return self.pool.contains
        assert local is not None
        return lambda ids: np.array([did in local.ids for did in ids], dtype=bool)

    def query_vectors(self, task: TaskFiles, queries: list[Query], chosen: list[str | None], mode: str) -> np.ndarray:
        if self.queries is not None:
            stored = self.queries.read(task.name, mode, [q.qid for q in queries])
            if stored.instructions != chosen:
                raise IndexMismatchError(f"{self.queries.directory}: {task.name}/{mode} queries were embedded with "
                                         "other instructions than this evaluation chooses; encode the queries again")
            return stored.vectors
        from mmembed.encoders.base import as_items

        assert self.encoder is not None
        return self.encoder.encode_queries(as_items(queries, self.directory.images), chosen,
                                           batch_size=self.config.batch_size, show_progress=self.config.show_progress)

    def search(self, prepared: list) -> tuple[dict[tuple[str, str, str], Found], SearchReport]:
        """Every prepared (task, mode) block searched: one exact pass for the split, plus the chosen index."""
        config = self.config
        blocks = []
        embedded_locals = []
        for task, _, _, _, mode, local, vectors in prepared:
            block = QueryBlock(task.name, mode, np.asarray(vectors, dtype=np.float32))
            if local is not None and local.mask is not None:
                block.local, block.local_depth = local.mask, min(config.depth, local.size)
            elif local is not None:
                embedded_locals.append((task.name, mode, local.embedded, block.vectors))
            blocks.append(block)
        found: dict[tuple[str, str, str], Found] = {}
        report = SearchReport(index=config.index)
        if self.pool is not None:
            exact, other = global_index(config.index, self.pool, vectors=self._vectors, embeddings=self.embeddings,
                                        encoder_id=self.encoder_id, memory_limit=config.memory_limit,
                                        device=config.search_device)
            found, report = search_split(blocks, self.pool, exact, other, kind=config.index, depth=config.depth,
                                         search_global="global" in config.pools, recall_sample=config.recall_sample,
                                         seed=config.seed)
        for task_name, mode, embedded, vectors in embedded_locals:
            found[(task_name, mode, "local")] = local_search(embedded, vectors, config.depth, config.memory_limit)
        return found, report
