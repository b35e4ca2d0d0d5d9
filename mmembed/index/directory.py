"""Retrieval directories: the one function that builds them, and their layout.

```
INDEX_DIR/
  retrieval.json        what to load: encoder spec and id, loading options, image root, format version
  candidates.jsonl      the indexed pool (M-BEIR candidate records), to show results
  instructions.tsv      the task instructions (optional), to search by task
  vectors/              the vector index (manifest.json + engine files)
```
:func:`build_retrieval_directory` makes one from a pool file, with an encoder (embedding the pool
here) or from an ``mmembed encode`` store, on any engine; :func:`write_retrieval_directory` lays
one out around an index that exists; :class:`mmembed.retrieval.Retriever` opens it. Written
atomically as a whole.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmembed.errors import ConfigError, DataError, IndexMismatchError, Location
from mmembed.fileio import atomic_directory, file_sha256, write_json
from mmembed.index.base import VectorIndex
from mmembed.index.integrity import CANDIDATES_FILE, RETRIEVAL_MANIFEST, check_retrieval_manifest

if TYPE_CHECKING:
    from mmembed.encoders.base import Encoder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = RETRIEVAL_MANIFEST
INSTRUCTIONS_FILE = "instructions.tsv"
VECTORS_DIR = "vectors"


def retrieval_manifest(encoder_spec: str, encoder_id: str, image_root: str | os.PathLike, pool_path: Path,
                       count: int, encoder_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``retrieval.json`` of a retrieval directory (every writer goes through this)."""
    return {"format_version": FORMAT_VERSION, "encoder": encoder_spec, "encoder_id": encoder_id,
            "encoder_settings": dict(encoder_settings or {}), "image_root": str(Path(image_root).resolve()),
            "source_pool": str(Path(pool_path).resolve()), "count": count}


def read_retrieval_manifest(directory: Path) -> dict:
    """``retrieval.json`` of an index directory, every field checked (a clear error naming it)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise IndexMismatchError(f"{directory}: not a retrieval index (no {MANIFEST}); build one with "
                                 "'mmembed index build'")
    manifest = check_retrieval_manifest(path)
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: written by a newer mmembed (format {manifest['format_version']}); "
                                 "upgrade mmembed to read it")
    return manifest


def write_retrieval_directory(out: str | os.PathLike, index: VectorIndex, pool_path: str | os.PathLike, *,
                              encoder_spec: str, encoder_id: str, image_root: str | os.PathLike,
                              instructions_path: str | os.PathLike | None = None,
                              encoder_settings: Mapping[str, Any] | None = None) -> None:
    """Write the retrieval directory :meth:`Retriever.load` opens, atomically, around ``index``."""
    from mmembed.instructions import InstructionRegistry

    pool_path = Path(pool_path)
    if len(index) == 0:
        raise DataError("the candidate pool is empty", Location(str(pool_path)))
    instructions = InstructionRegistry.from_tsv(instructions_path) if instructions_path else None
    with atomic_directory(out) as staging:
        index.save(staging / VECTORS_DIR)
        shutil.copyfile(pool_path, staging / CANDIDATES_FILE)
        if instructions is not None:
            instructions.to_tsv(staging / INSTRUCTIONS_FILE)
        write_json(staging / MANIFEST, retrieval_manifest(encoder_spec, encoder_id, image_root, pool_path, len(index),
                                                          encoder_settings))
    reopen = getattr(index, "reopen", None)
    if reopen is not None:  # a Milvus Lite index saved in a staging directory that was renamed follows its database
        reopen(Path(out) / VECTORS_DIR)
    log.info("indexed %d candidates into %s", len(index), out)


def build_retrieval_directory(pool_path: str | os.PathLike, out: str | os.PathLike, *, encoder_spec: str | None,
                              encoder: Encoder | None = None, embeddings: str | os.PathLike | None = None,
                              image_root: str | os.PathLike | None = None,
                              instructions_path: str | os.PathLike | None = None, backend: str = "faiss",
                              factory: str = "Flat", dtype: str = "float32",
                              search_params: Mapping[str, Any] | None = None, train_rows: int | None = None,
                              on_disk: bool = False, force: bool = False, uri: str | None = None,
                              collection: str | None = None, milvus_index: str | None = None, batch_size: int = 64,
                              cache_dir: str | os.PathLike | None = None,
                              encoder_settings: Mapping[str, Any] | None = None,
                              show_progress: bool = False, dims: int | None = None, rescore: bool = False,
                              rescore_depth: int | None = None) -> VectorIndex:
    """Index the pool at ``pool_path`` and write a retrieval directory to ``out``; return the index.

    The vectors come from ``embeddings`` (an ``mmembed encode`` store of this pool, checked by
    content; ``encoder``, when also given, must be the one that made it) or from ``encoder``
    (the pool embedded here, through the pool-embedding cache). ``backend``: ``faiss`` (any
    ``factory``, ``dtype``, ``on_disk`` IVF lists), ``milvus`` (``uri``, ``collection``,
    ``milvus_index``) or ``exact`` (a streamed exact index over ``embeddings``, not copied).
    The memory of a FAISS build is estimated before any vector is read; ``force`` builds anyway.
    ``dims``: index the first ``dims`` coordinates of ``embeddings`` (FAISS), rescoring the top
    ``rescore_depth`` with the full vectors when ``rescore`` (:mod:`mmembed.index.rescore`).
    """
    from mmembed.embeddings.encode import guess_image_root
    from mmembed.index.build import fill_index, index_from_embeddings

    pool_path = Path(pool_path)
    if not pool_path.is_file():
        raise DataError("candidate pool file not found", Location(file=str(pool_path)))
    if embeddings is None and encoder is None:
        raise ConfigError("give an encoder or precomputed embeddings to index a pool")
    if on_disk and (backend != "faiss" or embeddings is None):
        raise ConfigError("on-disk inverted lists need precomputed embeddings and the faiss backend")
    root = Path(image_root) if image_root else guess_image_root(pool_path)
    out_path = Path(out)
    workdir = out_path.parent / f".{out_path.name}.ondisk-work" if on_disk else None
    try:
        if embeddings is not None:
            store = _checked_store(embeddings, pool_path, encoder)
            spec = encoder_spec or store.manifest.encoder_spec
            if spec is None:
                raise ConfigError(f"{embeddings} does not record its encoder; give the encoder spec")
            encoder_spec, encoder_id = spec, store.encoder_id
            if dims is not None:
                from mmembed.index.rescore import DEFAULT_DEPTH, from_embeddings

                if backend != "faiss" or on_disk:
                    raise ConfigError("--dims builds a FAISS index in memory (not with --backend "
                                      f"{backend}{' or --on-disk' if on_disk else ''})")
                index = from_embeddings(store, dims, rescore=rescore, depth=rescore_depth or DEFAULT_DEPTH,
                                        factory=factory, dtype=dtype, workdir=out_path.parent)
            else:
                index = index_from_embeddings(store, backend=backend, factory=factory, dtype=dtype,
                                              search_params=search_params, uri=uri, collection=collection,
                                              milvus_index=milvus_index, train_rows=train_rows, force=force,
                                              on_disk=workdir, show_progress=show_progress)
        else:
            assert encoder is not None
            if dims is not None:
                raise ConfigError("--dims indexes the prefixes of precomputed embeddings: give --from-embeddings "
                                  "('mmembed encode' output, also where rescoring reads the full vectors)")
            if encoder_spec is None:
                raise ConfigError("give the encoder spec to record in the retrieval directory")
            if backend == "exact":
                raise ConfigError("an exact streamed index searches an 'mmembed encode' store: encode the pool "
                                  "first and index it with --from-embeddings")
            encoder_id = encoder.encoder_id
            index = _embedded_index(encoder, pool_path, root, backend=backend, factory=factory, dtype=dtype,
                                    search_params=search_params, train_rows=train_rows, force=force, uri=uri,
                                    collection=collection, milvus_index=milvus_index, batch_size=batch_size,
                                    cache_dir=cache_dir, show_progress=show_progress, fill=fill_index)
        write_retrieval_directory(out_path, index, pool_path, encoder_spec=encoder_spec, encoder_id=encoder_id,
                                  image_root=root, instructions_path=instructions_path,
                                  encoder_settings=encoder_settings)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return index


def _checked_store(embeddings: str | os.PathLike, pool_path: Path, encoder: Encoder | None):
    from mmembed.embeddings.store import EmbeddingSet

    store = EmbeddingSet.open(embeddings)
    store.check(pool_sha256=file_sha256(pool_path))
    if encoder is not None:  # an explicit encoder must be the one the embeddings were made with
        store.check(encoder_id=encoder.encoder_id, dim=encoder.dim)
    return store


def _embedded_index(encoder: Encoder, pool_path: Path, root: Path, *, backend: str, factory: str, dtype: str,
                    search_params, train_rows, force: bool, uri, collection, milvus_index, batch_size: int,
                    cache_dir, show_progress: bool, fill) -> VectorIndex:
    """Embed the pool here (through the pool-embedding cache) and fill a new index with it."""
    from mmembed.data.images import ImageStore
    from mmembed.embeddings.pool_cache import PoolEmbeddingCache
    from mmembed.index.build import check_memory, make_index

    index = make_index(backend, encoder.dim, encoder_id=encoder.encoder_id, factory=factory, dtype=dtype,
                       search_params=search_params, uri=uri, collection=collection, milvus_index=milvus_index)
    check_memory(backend, factory, dtype, encoder.dim, _count_lines(pool_path), train_rows=train_rows, force=force)
    pool = PoolEmbeddingCache(encoder, ImageStore(root), cache_dir, batch_size, show_progress).embed_file(pool_path)
    fill(index, pool.ids, pool.vectors, train_rows=train_rows)
    return index


def _count_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file (= candidates), counted without parsing, for the memory estimate."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def sample_rows(count: int, rows: int, seed: int = 0) -> np.ndarray:
    """A seeded, sorted sample of ``min(rows, count)`` row numbers (the training sample of an index)."""
    return np.sort(np.random.default_rng(seed).choice(count, min(count, rows), replace=False))
