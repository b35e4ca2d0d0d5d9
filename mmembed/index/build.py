"""Indexes built from precomputed embeddings, on either engine, and the retrieval directory around them.

``index_from_embeddings`` streams an embeddings directory (see :mod:`mmembed.embeddings`) chunk by
chunk into a FAISS or Milvus index: nothing is re-encoded, and memory holds one chunk plus the
index (plus a training sample for IVF/PQ), which the estimate checks before the first chunk is read.
``write_retrieval_directory`` lays out what :meth:`mmembed.retrieval.Retriever.load` opens.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmembed.embeddings.store import EmbeddingSet
from mmembed.errors import ConfigError, DataError, Location
from mmembed.fileio import atomic_directory, write_json
from mmembed.index.base import VectorIndex
from mmembed.index.faiss_index import FaissIndex
from mmembed.index.memory import check_fits, estimate

log = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")


def make_index(backend: str, dim: int, *, encoder_id: str | None, factory: str = "Flat", dtype: str = "float32",
               search_params: Mapping[str, Any] | None = None, uri: str | None = None,
               collection: str | None = None, milvus_index: str | None = None) -> VectorIndex:
    """An empty index of ``backend`` (FAISS takes factory/dtype; Milvus takes uri/collection/index type)."""
    if backend == "faiss":
        return FaissIndex(dim, factory, dtype=dtype, encoder_id=encoder_id, search_params=search_params)
    if backend == "milvus":
        from mmembed.index.milvus_index import MilvusIndex

        return MilvusIndex(dim, uri=uri, collection=collection, index_type=milvus_index,
                           search_params=search_params, encoder_id=encoder_id)
    raise ConfigError(f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_memory(backend: str, factory: str, dtype: str, dim: int, count: int, *, train_rows: int | None = None,
                 chunk_rows: int = 65_536, force: bool = False, on_disk: bool = False) -> None:
    """Estimate a FAISS build's memory and refuse one that cannot fit (Milvus holds vectors server-side)."""
    if backend != "faiss":
        return
    check_fits(estimate(factory, dtype, dim, count, chunk_rows=chunk_rows, train_rows=train_rows, on_disk=on_disk),
               force=force)


def index_from_embeddings(embeddings: EmbeddingSet, *, backend: str = "faiss", factory: str = "Flat",
                          dtype: str = "float32", search_params: Mapping[str, Any] | None = None,
                          uri: str | None = None, collection: str | None = None, milvus_index: str | None = None,
                          train_rows: int | None = None, force: bool = False, on_disk: Path | None = None,
                          show_progress: bool = False) -> VectorIndex:
    """Fill a new index with every vector of ``embeddings``, chunk by chunk, in pool order.

    ``on_disk``: a work directory (on the output's file system) where an IVF index keeps its
    inverted lists instead of memory; the saved index links them in.
    """
    if on_disk is not None and backend != "faiss":
        raise ConfigError("on-disk inverted lists are a FAISS option; Milvus keeps its own storage")
    check_memory(backend, factory, dtype, embeddings.dim, len(embeddings), train_rows=train_rows,
                 chunk_rows=embeddings.identity.chunk_size, force=force, on_disk=on_disk is not None)
    index = make_index(backend, embeddings.dim, encoder_id=embeddings.encoder_id, factory=factory, dtype=dtype,
                       search_params=search_params, uri=uri, collection=collection, milvus_index=milvus_index)
    if isinstance(index, FaissIndex) and not index.is_trained:
        rows = min(len(embeddings), train_rows or index.train_sample_size)
        log.info("training on a seeded sample of %d of the %d vectors", rows, len(embeddings))
        index.train(embeddings.sample(rows))
    chunks = embeddings.chunks()
    if show_progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=embeddings.identity.num_chunks, desc="indexing", unit="chunk")
    if on_disk is not None:
        from mmembed.index.ondisk import fill_on_disk

        assert isinstance(index, FaissIndex)
        fill_on_disk(index, ((ids, vectors) for ids, vectors, _ in chunks), on_disk)
        return index
    for ids, vectors, _ in chunks:
        index.add(ids, vectors)
    return index


def write_retrieval_directory(out: str | os.PathLike, index: VectorIndex, pool_path: str | os.PathLike, *,
                              encoder_spec: str, encoder_id: str, image_root: str | os.PathLike,
                              instructions_path: str | os.PathLike | None = None,
                              encoder_settings: dict | None = None) -> None:
    """Write the retrieval directory :meth:`Retriever.load` opens, atomically, around ``index``.

    Same layout and ``retrieval.json`` as :meth:`Retriever.build` writes (retrieval.json,
    candidates.jsonl, instructions.tsv, vectors/).
    """
    from mmembed.instructions import InstructionRegistry
    from mmembed.retrieval import MANIFEST, retrieval_manifest

    pool_path = Path(pool_path)
    if len(index) == 0:
        raise DataError("the candidate pool is empty", Location(str(pool_path)))
    instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path else None
    with atomic_directory(out) as staging:
        index.save(staging / "vectors")
        shutil.copyfile(pool_path, staging / "candidates.jsonl")
        if instructions is not None:
            instructions.to_tsv(staging / "instructions.tsv")
        write_json(staging / MANIFEST, retrieval_manifest(encoder_spec, encoder_id, image_root, pool_path, len(index),
                                                          encoder_settings))
    _reopen_after_move(index, Path(out) / "vectors")
    log.info("indexed %d candidates into %s", len(index), out)


def _reopen_after_move(index: VectorIndex, vectors_dir: Path) -> None:
    """A Milvus Lite index saved in a staging directory that was renamed must follow its database."""
    reopen = getattr(index, "reopen", None)
    if reopen is not None:
        reopen(vectors_dir)

