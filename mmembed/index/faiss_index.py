"""A :class:`~mmembed.index.base.VectorIndex` over FAISS (CPU): exact by default, any factory string as an option.

Vectors are L2-normalised on the way in (``add``, ``train``) and on the way out (``search``),
always: the index answers cosine similarity whatever the caller passes, and an encoder that
forgot to normalise cannot silently skew the ranking. The cost is one copy of each batch.

String ids live next to the FAISS index (FAISS only knows row numbers); they must be unique.
A saved index is a directory with ``manifest.json``, ``index.faiss`` and ``ids.json`` (a JSON
array, one id per line), written atomically. No pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, DataError, IndexMismatchError, Location, MissingDependencyError
from mmembed.fileio import atomic_directory
from mmembed.index.base import (
    IndexManifest,
    SearchResult,
    check_expected,
    check_new_ids,
    ids_fingerprint,
    read_manifest,
)
from mmembed.index.integrity import check_retrieval_siblings
from mmembed.version import __version__

log = logging.getLogger(__name__)

ENGINE = "faiss"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
LISTS_FILE = "lists.ivfdata"
DTYPES = ("float32", "float16")
#: Rows normalised and handed to FAISS at a time (bounds the extra memory of the normalised copy).
ADD_BATCH = 65_536
#: Queries searched at a time (bounds the result and copy buffers, not the answer).
SEARCH_BATCH = 4_096
#: Training uses a seeded random sample of at most this many rows (or 256 per IVF list if more).
TRAIN_SAMPLE = 262_144
_FACTORY_EXAMPLES = "'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF1024,PQ48'"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("vector search needs FAISS: pip install faiss-cpu") from None
    return faiss


def _reason(error: Exception) -> str:
    """The human part of a FAISS C++ error (which starts with a source location)."""
    text = str(error).strip()
    for marker in ("failed: ", "set_index_parameter:", "index_factory.cpp"):
        if marker in text:
            text = text.rsplit(marker, 1)[1].lstrip(":0123456789 ")
    return text.splitlines()[-1] if text else type(error).__name__


def storage_factory(factory: str, dtype: str) -> str:
    """The FAISS factory string for ``factory`` with vectors stored as ``dtype``.

    float16 halves memory for flat storage: ``Flat`` -> ``SQfp16``, ``IVF256,Flat`` ->
    ``IVF256,SQfp16``, ``HNSW32`` -> ``HNSW32,SQfp16``. Compressed codes (PQ, SQ8) already
    choose their own precision, so float16 is refused for them.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"index dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return factory
    parts = factory.split(",")
    last = parts[-1].strip()
    if last == "Flat":
        return ",".join([*parts[:-1], "SQfp16"])
    if re.fullmatch(r"HNSW\d+", last):
        return f"{factory},SQfp16"
    if last == "SQfp16":
        return factory
    raise ConfigError(
        f"dtype 'float16' applies to flat vector storage (Flat, IVF<n>,Flat, HNSW<m>); "
        f"factory {factory!r} stores {last!r} codes, which set their own precision; use dtype 'float32'"
    )


class FaissIndex:
    """FAISS inner-product index over unit vectors, with string ids and atomic save/load.

    Example::

        index = FaissIndex(384)                      # exact search (IndexFlatIP)
        index.add(["9:1", "9:2"], vectors)
        ids, scores = index.search(query_vectors, k=10)
        index.save("runs/index")
        index = FaissIndex.load("runs/index", expected_dim=384, expected_encoder_id=encoder.encoder_id)

    ``factory`` is any FAISS ``index_factory`` string (``"HNSW32"``, ``"IVF1024,Flat"``,
    ``"IVF1024,PQ48"``); indexes that need training are trained on the first ``add`` unless
    :meth:`train` was called. ``search_params`` (e.g. ``{"nprobe": 16}`` or ``{"efSearch": 128}``)
    are applied now, saved with the index and re-applied on load.
    """

    def __init__(self, dim: int, factory: str = "Flat", *, dtype: str = "float32", encoder_id: str | None = None,
                 search_params: Mapping[str, float] | None = None):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"index dimension must be a positive integer, got {dim!r}")
        faiss = _faiss()
        faiss_factory = storage_factory(factory, dtype)
        try:
            index = faiss.index_factory(dim, faiss_factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ConfigError(
                f"FAISS cannot build index {factory!r}: {_reason(e)}; examples: {_FACTORY_EXAMPLES}"
            ) from None
        _skip_polysemous_training(index)
        self._setup(index, factory, dtype, encoder_id, [])
        self.set_search_params(**(search_params or {}))

    def _setup(self, index: Any, factory: str, dtype: str, encoder_id: str | None, ids: list[str]) -> None:
        self._index = index
        self.dim: int = int(index.d)
        self.factory = factory
        self.dtype = dtype
        self.encoder_id = encoder_id
        self._ids = ids
        self._id_array: np.ndarray | None = None  # ids as an object array, for vectorised lookup
        self._id_set: set[str] | None = None  # built on the first add after a load
        self._search_params: dict[str, float] = {}
        #: The inverted-lists file of an IVF index whose lists live on disk (see mmembed.index.ondisk).
        self._lists_file: Path | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"FaissIndex(dim={self.dim}, factory={self.factory!r}, dtype={self.dtype!r}, "
                f"count={len(self)}, encoder_id={self.encoder_id!r})")

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (row ``i`` is ``ids()[i]``), for tuning and inspection."""
        return self._index

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def train_sample_size(self) -> int:
        """How many rows :meth:`train` uses at most (a seeded sample of anything larger)."""
        return max(TRAIN_SAMPLE, 256 * _nlist(self._index))

    @property
    def search_params(self) -> dict[str, float]:
        return dict(self._search_params)

    def ids(self) -> list[str]:
        """The ids in insertion order (a copy)."""
        return list(self._ids)

    def set_search_params(self, **params: float) -> None:
        """Set search-time knobs such as ``nprobe`` (IVF) or ``efSearch`` (HNSW)."""
        space = _faiss().ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(self._index, name, value)
            except RuntimeError:
                raise ConfigError(
                    f"search parameter {name!r} does not apply to index {self.factory!r} "
                    "(IVF indexes take 'nprobe', HNSW indexes take 'efSearch')"
                ) from None
            self._search_params[name] = value

    # --- adding ---------------------------------------------------------------------------

    def train(self, vectors: np.ndarray) -> None:
        """Train the coarse quantizer / codebooks on (a seeded sample of) ``vectors``."""
        x = _matrix(vectors, self.dim, "training vectors")
        limit = self.train_sample_size
        if x.shape[0] > limit:
            rows = np.sort(np.random.default_rng(0).choice(x.shape[0], limit, replace=False))
            x = x[rows]
        sample = _normalised(x, "training vector")
        log.info("training FAISS index %r on %d vectors", self.factory, sample.shape[0])
        try:
            self._index.train(sample)
        except RuntimeError as e:
            raise ConfigError(
                f"cannot train index {self.factory!r} on {sample.shape[0]} vectors: {_reason(e)}; "
                "call train() with more vectors (IVF wants ~39 per list, PQ at least 256) or use a smaller index"
            ) from None

    def add(self, ids: Iterable[str], vectors: np.ndarray, *, batch_size: int = ADD_BATCH) -> None:
        """Add ``vectors`` under ``ids`` (unique, not yet in the index). All or nothing on bad input."""
        if self._lists_file is not None:
            raise ConfigError("an index with on-disk inverted lists is read-only; rebuild it to add vectors")
        ids = list(ids)
        x = _matrix(vectors, self.dim, "vectors")
        if len(ids) != x.shape[0]:
            raise DataError(f"got {len(ids)} ids for {x.shape[0]} vectors")
        if not ids:
            return
        self._check_new_ids(ids)
        for start in range(0, x.shape[0], batch_size):
            _check_finite(x[start:start + batch_size], "vector", ids[start:start + batch_size])
        if not self.is_trained:
            self.train(x)
        buffer = np.empty((min(batch_size, x.shape[0]), self.dim), dtype=np.float32)
        for start in range(0, x.shape[0], batch_size):
            self._index.add(_normalised(x[start:start + batch_size], "vector", out=buffer, check=False))
        self._ids.extend(ids)
        self._id_array = None
        if self._id_set is not None:
            self._id_set.update(ids)

    def _check_new_ids(self, ids: list[str]) -> None:
        if self._id_set is None:
            self._id_set = set(self._ids)
        check_new_ids(ids, self._id_set)

    # --- searching ------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, batch_size: int = SEARCH_BATCH) -> SearchResult:
        """Top ``min(k, len(self))`` ids and cosine scores per query row, best first.

        Queries go to FAISS ``batch_size`` at a time. Slots an approximate index could not fill
        get id ``None`` and score ``-inf``.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = _matrix(queries, self.dim, "queries")
        kk = min(k, len(self))
        labels = np.full((q.shape[0], kk), -1, dtype=np.int64)
        scores = np.empty((q.shape[0], kk), dtype=np.float32)
        for start in range(0, q.shape[0] if kk else 0, batch_size):
            stop = start + batch_size
            batch = _normalised(q[start:stop], "query", offset=start)
            self._index.search(batch, kk, D=scores[start:stop], I=labels[start:stop])
        return SearchResult(self._lookup(labels), _mask_missing(scores, labels))

    def _lookup(self, labels: np.ndarray) -> np.ndarray:
        if self._id_array is None:
            self._id_array = np.array(self._ids, dtype=object)
        if not labels.size:
            return np.empty(labels.shape, dtype=object)
        missing = labels < 0
        ids = self._id_array[np.where(missing, 0, labels)]
        ids[missing] = None
        return ids

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``manifest.json``, ``index.faiss`` and ``ids.json`` to ``directory``, atomically."""
        faiss = _faiss()
        if self._index.ntotal != len(self._ids):  # an invariant; saving would write a broken index
            raise IndexMismatchError(f"index holds {self._index.ntotal} vectors but {len(self._ids)} ids")
        manifest = IndexManifest(
            engine=ENGINE, dim=self.dim, count=len(self), factory=self.factory, dtype=self.dtype,
            encoder_id=self.encoder_id, created_by=f"mmembed {__version__}",
            extra={"faiss_factory": storage_factory(self.factory, self.dtype), "faiss_version": faiss.__version__,
                   "search_params": self.search_params, "ids_sha256": ids_fingerprint(self._ids)},
        )
        if self._lists_file is not None:
            manifest.extra["on_disk_lists"] = LISTS_FILE
        with atomic_directory(directory) as staging:
            faiss.write_index(self._index, str(staging / INDEX_FILE))
            if self._lists_file is not None:
                _link_or_copy(self._lists_file, staging / LISTS_FILE)
            _write_ids(staging / IDS_FILE, self._ids)
            manifest.write(staging)
        log.info("saved %r to %s", self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder_id: str | None = None) -> FaissIndex:
        """Read a saved index; refuse one for another dimension/encoder or with inconsistent files.

        :func:`mmembed.index.load_index` opens an index of any engine.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.engine != ENGINE:
            raise IndexMismatchError(f"{directory}: manifest describes a {manifest.engine!r} index, not {ENGINE!r}; "
                                     "open any saved index with mmembed.index.load_index")
        check_expected(manifest, directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
        if manifest.dtype not in DTYPES:
            raise IndexMismatchError(
                f"{directory}: manifest describes a {manifest.engine!r} index of dtype {manifest.dtype!r}; "
                f"this loader reads {ENGINE!r} indexes of dtype {' or '.join(DTYPES)}"
            )
        on_disk = manifest.extra.get("on_disk_lists") == LISTS_FILE
        if on_disk and not (directory / LISTS_FILE).is_file():
            raise IndexMismatchError(f"{directory / LISTS_FILE}: the on-disk inverted lists of this index are missing")
        index = _read_faiss(directory / INDEX_FILE, on_disk=on_disk)
        ids = _read_ids(directory / IDS_FILE)
        _check_consistent(directory, manifest, index, ids)
        check_retrieval_siblings(directory, ids)
        loaded = cls.__new__(cls)
        loaded._setup(index, manifest.factory, manifest.dtype, manifest.encoder_id, ids)
        loaded._lists_file = directory / LISTS_FILE if on_disk else None
        loaded.set_search_params(**dict(manifest.extra.get("search_params") or {}))
        return loaded


def _matrix(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``x`` as a 2-D array of ``dim`` columns (no copy when it already is one)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise IndexMismatchError(f"{what} must be a 2-D array of shape (n, {dim}), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} must be floating point, got dtype {x.dtype}")
    return x


def _check_finite(x: np.ndarray, what: str, names: Sequence[str] | None = None, offset: int = 0) -> None:
    """Refuse rows whose squared norm is not finite: NaN, inf, or values too large to normalise.

    One pass computing row norms (no temporary of the size of ``x``), naming the id (vectors) or
    the row number (queries) of the first bad row.
    """
    x32 = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    finite = np.isfinite(np.einsum("ij,ij->i", x32, x32))
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        problem = "has NaN, infinite or too large values"
        if names is not None:
            raise DataError(f"{what} {problem}", Location(item=names[row]))
        raise DataError(f"{what} at row {row + offset} {problem}")


def _normalised(x: np.ndarray, what: str, *, offset: int = 0, out: np.ndarray | None = None,
                check: bool = True) -> np.ndarray:
    """``x`` as C-contiguous float32 with unit rows (zero rows stay zero), in ``out`` if given.

    Reusing ``out`` across batches avoids paging in fresh memory for every batch, which cost
    more than the normalisation itself on large adds.
    """
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    out = out[: x.shape[0]]
    np.copyto(out, x, casting="same_kind")
    if check:
        _check_finite(out, what, offset=offset)
    _faiss().normalize_L2(out)
    return out


def _mask_missing(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    scores[labels < 0] = -np.inf
    return scores


def _skip_polysemous_training(index: Any) -> None:
    """Turn off FAISS's polysemous training of PQ codes.

    It only serves the polysemous Hamming filter (``polysemous_ht``), which this wrapper does not
    use, and it dominates PQ training: measured 189 s instead of 21 s for IVF64,PQ48 on
    20,000 x 384 vectors (2 cores). Code quality and search results are otherwise unchanged.
    """
    faiss = _faiss()
    parts = [index]
    if _nlist(index):
        parts.append(faiss.downcast_index(faiss.extract_index_ivf(index)))
    for part in parts:
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _nlist(index: Any) -> int:
    """Number of IVF lists (0 for a non-IVF index), to size the training sample."""
    try:
        return int(_faiss().extract_index_ivf(index).nlist)
    except (RuntimeError, AttributeError):
        return 0


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where possible (an on-disk list file can be larger than the free disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    # indent=0 puts one id per line: greppable, and still one JSON document any id can go in.
    path.write_text(json.dumps(list(ids), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def _read_ids(path: Path) -> list[str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexMismatchError(f"{path}: ids file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexMismatchError(f"{path}: corrupt ids file ({e})") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IndexMismatchError(f"{path}: corrupt ids file (expected a JSON array of strings)")
    return ids


def _read_faiss(path: Path, on_disk: bool = False) -> Any:
    if not path.is_file():
        raise IndexMismatchError(f"{path}: FAISS index file is missing")
    faiss = _faiss()
    try:
        # on-disk lists are memory-mapped from the file next to the index, wherever it was moved
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR if on_disk else 0)
    except RuntimeError as e:
        raise IndexMismatchError(f"{path}: corrupt or truncated FAISS index file ({_reason(e)})") from None


def _check_consistent(directory: Path, manifest: IndexManifest, index: Any, ids: list[str]) -> None:
    if index.d != manifest.dim:
        raise IndexMismatchError(f"{directory}: manifest says dimension {manifest.dim}, index file has {index.d}")
    if not (index.ntotal == manifest.count == len(ids)):
        raise IndexMismatchError(
            f"{directory}: counts disagree: manifest says {manifest.count} vectors, "
            f"{INDEX_FILE} holds {index.ntotal}, {IDS_FILE} holds {len(ids)}"
        )
    if index.metric_type != _faiss().METRIC_INNER_PRODUCT:
        raise IndexMismatchError(f"{directory}: {INDEX_FILE} does not use inner product")
    check_ids_fingerprint(directory, manifest, ids)


def check_ids_fingerprint(directory: Path, manifest: IndexManifest, ids: list[str]) -> None:
    """The ids file must be the one saved with these vectors (indexes saved before fingerprints pass)."""
    expected = manifest.extra.get("ids_sha256")
    if expected is not None and ids_fingerprint(ids) != expected:
        raise IndexMismatchError(
            f"{directory / IDS_FILE}: the ids are not those saved with these vectors (same count, other ids or "
            "another order); the index directory was mixed with another one, rebuild it"
        )
