"""A short first pass, full-dimension rescoring: ``mmembed index build --dims D --rescore``.

For embeddings trained for truncation (Matryoshka), the first ``D`` coordinates of each vector
(renormalised) are a good embedding on their own: the searched index holds those (``D / dim`` of
the memory), and the ``depth`` best candidates of each query are then rescored exactly with the
full vectors, read from a file on disk (``full.npy``, memory-mapped: only the rows a query
touches are read). Queries come in at the full dimension, as from the encoder; the index cuts
them itself. Without rescoring the first pass's scores are returned (``depth`` 0).

A saved index is a directory: ``manifest.json`` (engine ``rescore``), ``short/`` (the FAISS
index of the prefixes) and ``full.npy`` (unit vectors at the full dimension, the store's dtype).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.fileio import atomic_directory
from mmembed.index.base import IndexManifest, SearchResult, check_expected, ids_fingerprint, read_manifest
from mmembed.index.faiss_index import FaissIndex, _link_or_copy, _matrix, _normalised
from mmembed.index.integrity import check_retrieval_siblings
from mmembed.version import __version__

log = logging.getLogger(__name__)

ENGINE = "rescore"
SHORT_DIR = "short"
FULL_FILE = "full.npy"
#: Candidates of the first pass rescored per query (at least k).
DEFAULT_DEPTH = 100


def prefix(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` coordinates of each row, renormalised (float32)."""
    head = np.array(np.asarray(vectors)[:, :dims], dtype=np.float32)
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return head / np.where(norms > 0, norms, 1.0)


class RescoredIndex:
    """A FAISS index over ``short_dim``-prefixes, rescored with the full vectors from disk."""

    def __init__(self, short: FaissIndex, full: np.ndarray | None, *, dim: int, depth: int = DEFAULT_DEPTH,
                 full_path: Path | None = None, workdir: Path | None = None):
        if depth and full is None:
            raise ConfigError("rescoring needs the full vectors")
        self.short = short
        self.dim = dim
        self.short_dim = short.dim
        self.depth = depth
        self.encoder_id = short.encoder_id
        self._full = full
        self._full_path = full_path
        self._workdir = workdir  # the build's temporary full-vector file, removed with the index

    def __len__(self) -> int:
        return len(self.short)

    def __repr__(self) -> str:
        return (f"RescoredIndex(dim={self.dim}, short_dim={self.short_dim}, depth={self.depth}, count={len(self)}, "
                f"encoder_id={self.encoder_id!r})")

    def __del__(self) -> None:
        if getattr(self, "_workdir", None) is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def ids(self) -> list[str]:
        return self.short.ids()

    @property
    def memory_bytes(self) -> int:
        """What the searched index holds in memory (the prefixes), not the full vectors on disk."""
        return int(self.short.faiss_index.sa_code_size() * len(self)) if len(self) else 0

    # --- building -----------------------------------------------------------------------------

    @classmethod
    def build(cls, chunks: Iterable[tuple[Sequence[str], np.ndarray]], *, count: int, dim: int, short_dim: int,
              rescore: bool = True, depth: int = DEFAULT_DEPTH, factory: str = "Flat", dtype: str = "float32",
              full_dtype: str = "float32", encoder_id: str | None = None,
              workdir: str | os.PathLike | None = None) -> RescoredIndex:
        """Fill the index from ``(ids, vectors)`` chunks of ``count`` rows in all (one pass; the full
        vectors go to a temporary file in ``workdir``, copied into the saved index)."""
        if not isinstance(short_dim, int) or not 0 < short_dim < dim:
            raise ConfigError(f"--dims must be between 1 and the embeddings' dimension {dim} (exclusive), "
                              f"got {short_dim!r}")
        if rescore and depth < 1:
            raise ConfigError(f"the rescoring depth must be at least 1, got {depth}")
        short = FaissIndex(short_dim, factory, dtype=dtype, encoder_id=encoder_id)
        full = path = work = None
        if rescore:
            work = Path(tempfile.mkdtemp(prefix=".rescore-", dir=workdir))
            path = work / FULL_FILE
            full = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(full_dtype), shape=(count, dim))
        start = 0
        for ids, vectors in chunks:
            x = _matrix(vectors, dim, "vectors")
            if not short.is_trained:
                short.train(prefix(x, short_dim))
            short.add(list(ids), prefix(x, short_dim))
            if full is not None:
                full[start:start + len(ids)] = _normalised(x, "vector")
            start += len(ids)
        if start != count:
            raise IndexMismatchError(f"expected {count} vectors, got {start}")
        if full is not None:
            full.flush()
            full = np.load(path, mmap_mode="r")
        return cls(short, full, dim=dim, depth=depth if rescore else 0, full_path=path, workdir=work)

    # --- searching ----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        return self.search_filtered(queries, k, None)

    def search_filtered(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> SearchResult:
        """Top ``k`` by the full vectors among the first pass's ``max(k, depth)`` (restricted to ``allowed``)."""
        from mmembed.index.faiss_index import _mask_missing
        from mmembed.index.filters import faiss_rows

        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if allowed is not None and allowed.shape != (len(self),):
            raise ConfigError(f"a filter mask must have one entry per indexed vector ({len(self)}), "
                              f"got shape {allowed.shape}")
        kept = len(self) if allowed is None else int(np.count_nonzero(allowed))
        q = _normalised(_matrix(queries, self.dim, "queries"), "query")
        first = min(max(k, self.depth) if self.depth else k, kept)
        if first == 0:
            return SearchResult(np.empty((q.shape[0], 0), dtype=object), np.empty((q.shape[0], 0), dtype=np.float32))
        rows, scores = faiss_rows(self.short.faiss_index, prefix(q, self.short_dim), first, allowed)
        if self.depth:
            rows, scores = self._rescored(q, rows, min(k, first))
        return SearchResult(self.short._lookup(rows), _mask_missing(scores, rows))

    def _rescored(self, q: np.ndarray, rows: np.ndarray, k: int, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of each query's first-pass ``rows`` by the full vectors (blocks of queries, one
        sorted read of the rows they touch); ties: id descending, as everywhere in mmembed."""
        ranks = self._id_ranks()
        out_rows = np.full((q.shape[0], k), -1, dtype=np.int64)
        out_scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        for start in range(0, q.shape[0], block):
            part = rows[start:start + block]
            valid = part >= 0
            touched, where = np.unique(np.where(valid, part, 0), return_inverse=True)
            vectors = np.asarray(self._full[touched], dtype=np.float32)  # ascending rows: read front to back
            exact = np.einsum("qd,qmd->qm", q[start:start + block], vectors[where.reshape(part.shape)])
            exact[~valid] = -np.inf
            order = np.lexsort((np.where(valid, ranks[np.maximum(part, 0)], -1), exact), axis=-1)[:, ::-1][:, :k]
            out_rows[start:start + block] = np.where(np.take_along_axis(valid, order, 1),
                                                     np.take_along_axis(part, order, 1), -1)
            out_scores[start:start + block] = np.take_along_axis(exact, order, 1)
        return out_rows, out_scores

    def _id_ranks(self) -> np.ndarray:
        """Each row's id rank in sorted order (the tie-breaker)."""
        if getattr(self, "_ranks", None) is None:
            ids = np.asarray(self.short.ids(), dtype=object)
            self._ranks = np.empty(len(ids), dtype=np.int64)
            self._ranks[np.argsort(ids, kind="stable")] = np.arange(len(ids))
        return self._ranks

    def add(self, ids, vectors) -> None:
        raise ConfigError("a rescored index is built in one pass ('mmembed index build --dims D --rescore'); "
                          "rebuild it to add vectors")

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        manifest = IndexManifest(engine=ENGINE, dim=self.dim, count=len(self), factory=self.short.factory,
                                 dtype=self.short.dtype, encoder_id=self.encoder_id,
                                 created_by=f"mmembed {__version__}",
                                 extra={"short_dim": self.short_dim, "depth": self.depth,
                                        "full_file": FULL_FILE if self.depth else None,
                                        "ids_sha256": ids_fingerprint(self.ids())})
        with atomic_directory(directory) as staging:
            self.short.save(staging / SHORT_DIR)
            if self.depth:
                assert self._full_path is not None
                _link_or_copy(self._full_path, staging / FULL_FILE)
            manifest.write(staging)
        log.info("saved %r to %s", self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder_id: str | None = None) -> RescoredIndex:
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.engine != ENGINE:
            raise IndexMismatchError(f"{directory}: manifest describes a {manifest.engine!r} index, not {ENGINE!r}")
        check_expected(manifest, directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
        short_dim, depth = manifest.extra.get("short_dim"), manifest.extra.get("depth")
        if not isinstance(short_dim, int) or not isinstance(depth, int):
            raise IndexMismatchError(f"{directory}/manifest.json: fields 'extra.short_dim' and 'extra.depth' must be "
                                     "integers")
        short = FaissIndex.load(directory / SHORT_DIR, expected_dim=short_dim, expected_encoder_id=manifest.encoder_id)
        full = None
        if depth:
            path = directory / FULL_FILE
            try:
                full = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise IndexMismatchError(f"{path}: the full vectors are missing or unreadable ({e})") from None
            if full.shape != (manifest.count, manifest.dim):
                raise IndexMismatchError(f"{path}: holds {full.shape} vectors, the manifest says "
                                         f"({manifest.count}, {manifest.dim})")
        if ids_fingerprint(short.ids()) != manifest.extra.get("ids_sha256"):
            raise IndexMismatchError(f"{directory}: the first-pass index holds other ids than the index was saved "
                                     "with; rebuild it")
        check_retrieval_siblings(directory, short.ids())
        return cls(short, full, dim=manifest.dim, depth=depth, full_path=directory / FULL_FILE if depth else None)


def from_embeddings(store: Any, short_dim: int, *, rescore: bool = True, depth: int = DEFAULT_DEPTH,
                    factory: str = "Flat", dtype: str = "float32", workdir: str | os.PathLike | None = None
                    ) -> RescoredIndex:
    """A rescored index over an ``mmembed encode`` store (:class:`~mmembed.embeddings.store.EmbeddingSet`)."""
    return RescoredIndex.build(((ids, vectors) for ids, vectors, _ in store.chunks()), count=len(store),
                               dim=store.dim, short_dim=short_dim, rescore=rescore, depth=depth, factory=factory,
                               dtype=dtype, full_dtype=store.identity.dtype, encoder_id=store.encoder_id,
                               workdir=workdir)
