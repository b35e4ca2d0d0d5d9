"""A :class:`~mmembed.index.base.VectorIndex` on Milvus, for pools that outgrow one machine's FAISS index.

Two places the vectors can live:

* **Milvus Lite** (default, ``uri=None``): the embedded Milvus of the ``milvus-lite`` wheel, a
  database directory that :meth:`MilvusIndex.save` puts inside the index directory
  (``milvus.db``), so a saved index is self-contained and moves as one directory, like FAISS's.
* **A Milvus server** (``uri="http://host:19530"``, standalone or cluster): the collection lives
  on the server; the saved directory records the URI and collection name (and the ids, to check
  the server still holds what was indexed). Saving does not copy server data.

The metric is inner product over L2-normalised vectors (cosine), as for FAISS: vectors and
queries are normalised here whatever the caller passes. String ids are the collection's
primary key. The Milvus index type is chosen by size unless given (:func:`choose_index`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.errors import ConfigError, DataError, IndexMismatchError, MissingDependencyError
from mmembed.fileio import atomic_directory
from mmembed.index.base import (
    IndexManifest,
    SearchResult,
    check_expected,
    check_new_ids,
    ids_fingerprint,
    read_manifest,
)
from mmembed.index.faiss_index import IDS_FILE, _check_finite, _matrix, _read_ids, _write_ids
from mmembed.index.integrity import check_retrieval_siblings
from mmembed.version import __version__

log = logging.getLogger(__name__)

ENGINE = "milvus"
LITE_DB = "milvus.db"
ID_FIELD, VECTOR_FIELD = "id", "vector"
#: Longest id Milvus will store (VARCHAR primary key); M-BEIR ids are ~10 characters.
MAX_ID_LENGTH = 512
#: Rows sent per insert call (bounds the request size: 4096-d float32 x 2,048 = 32 MiB).
INSERT_BATCH = 2_048
#: Milvus refuses larger top-k.
MAX_K = 16_384
#: Below this many vectors an exact (FLAT) index is fast enough and exact.
EXACT_UP_TO = 200_000
TOKEN_ENV = "MILVUS_TOKEN"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "AUTOINDEX")


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise MissingDependencyError(
            "the Milvus backend needs pymilvus (and milvus-lite for a local database): "
            "pip install 'mmembed[milvus]'  (or: pip install pymilvus milvus-lite)"
        ) from None
    return pymilvus


def choose_index(count: int, dim: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(index type, build params, search params) for ``count`` vectors of ``dim``.

    Exact FLAT up to :data:`EXACT_UP_TO` vectors; HNSW (graph, the best recall/QPS in memory)
    while float32 vectors fit in 64 GiB of query-node memory; beyond that IVF_SQ8 (1 byte per
    dimension) with ~4*sqrt(n) lists. Override with ``index_type``/``index_params``.
    """
    if count <= EXACT_UP_TO:
        return "FLAT", {}, {}
    if count * dim * 4 <= 64 * 2**30:
        return "HNSW", {"M": 32, "efConstruction": 200}, {"ef": 128}
    nlist = int(min(65_536, 4 * np.sqrt(count)))
    return "IVF_SQ8", {"nlist": nlist}, {"nprobe": 64}


def is_lite(uri: str | None) -> bool:
    return uri is None or not uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class MilvusIndex:
    """Milvus collection of unit vectors under string ids, with the :class:`VectorIndex` interface.

    Example::

        index = MilvusIndex(384, encoder_id=encoder.encoder_id)               # Milvus Lite
        index = MilvusIndex(384, uri="http://milvus:19530", collection="mbeir_global")
        index.add(ids, vectors)
        ids, scores = index.search(query_vectors, k=10)
        index.save("runs/index")  # Lite: the database moves into runs/index/milvus.db
    """

    def __init__(self, dim: int, *, uri: str | None = None, collection: str | None = None,
                 index_type: str | None = None, index_params: Mapping[str, Any] | None = None,
                 search_params: Mapping[str, Any] | None = None, encoder_id: str | None = None,
                 token: str | None = None):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"index dimension must be a positive integer, got {dim!r}")
        if index_type is not None and index_type not in INDEX_TYPES:
            raise ConfigError(f"Milvus index type {index_type!r} is not supported; choose one of "
                              f"{', '.join(INDEX_TYPES)}")
        _pymilvus()
        self.dim = dim
        self.encoder_id = encoder_id
        self._lite = is_lite(uri)
        self._private_dir: Path | None = None
        if uri is None:
            # A private database until save() copies it into the index directory; removed with
            # this object if never saved.
            self._private_dir = Path(tempfile.mkdtemp(prefix="mmembed-milvus-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._private_dir, True)
            uri = str(self._private_dir / LITE_DB)
        self.uri = uri
        self._token = token
        self.collection = collection or "mmembed_" + hashlib.sha256(os.urandom(16)).hexdigest()[:12]
        self._index_type, self._index_params = index_type, dict(index_params or {})
        self._search_params: dict[str, Any] = dict(search_params or {})
        self._indexed = False
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._client_handle: Any = None
        self._create_collection()

    # --- connection and collection ----------------------------------------------------------

    @property
    def _client(self) -> Any:
        """The Milvus client, (re)connected on first use (a saved Lite index reconnects where it now lies)."""
        if self._client_handle is None:
            self._client_handle = self._connect(self.uri)
            if self._indexed:
                self._client_handle.load_collection(self.collection)
        return self._client_handle

    def _connect(self, uri: str) -> Any:
        pymilvus = _pymilvus()
        try:
            # a server's credentials come from the caller or MILVUS_TOKEN ("user:password" or an API key),
            # never from the saved index
            token = self._token or (None if is_lite(uri) else os.environ.get(TOKEN_ENV))
            return pymilvus.MilvusClient(uri=uri, **({"token": token} if token else {}))
        except Exception as e:  # pymilvus raises its own and gRPC errors; say where it failed
            hint = " (is milvus-lite installed? pip install milvus-lite)" if is_lite(uri) else \
                " (is the Milvus server running and reachable?)"
            raise IndexMismatchError(f"cannot open Milvus at {uri}: {e}{hint}") from None

    def _create_collection(self) -> None:
        pymilvus = _pymilvus()
        if self._client.has_collection(self.collection):
            raise ConfigError(f"Milvus at {self.uri} already has a collection {self.collection!r}; "
                              "choose another collection name or drop it")
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, pymilvus.DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
        schema.add_field(VECTOR_FIELD, pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        self._client.create_collection(self.collection, schema=schema)

    def _flush(self) -> None:
        """Seal inserted rows on a server (bulk loads index sealed segments); Milvus Lite has no flush
        to call (pymilvus's flush asks it for a timestamp it does not implement and logs an error)."""
        if not self._lite:
            self._client.flush(self.collection)

    def close(self) -> None:
        """Release the connection (Milvus Lite: the database files); the next call reconnects."""
        if self._client_handle is not None:
            self._client_handle.close()
            self._client_handle = None

    def reopen(self, directory: str | os.PathLike) -> None:
        """Follow a saved Milvus Lite index whose directory was moved to ``directory``."""
        if self._lite:
            self.close()
            self.uri = str(Path(directory) / LITE_DB)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"MilvusIndex(dim={self.dim}, uri={self.uri!r}, collection={self.collection!r}, "
                f"index_type={self.index_type!r}, count={len(self)}, encoder_id={self.encoder_id!r})")

    @property
    def index_type(self) -> str:
        return self._index_type or choose_index(len(self), self.dim)[0]

    @property
    def search_params(self) -> dict[str, Any]:
        return dict(self._search_params)

    def ids(self) -> list[str]:
        return list(self._ids)

    def set_search_params(self, **params: Any) -> None:
        """Search-time knobs of the Milvus index type: ``ef`` (HNSW), ``nprobe`` (IVF_*)."""
        self._search_params.update(params)

    # --- adding -----------------------------------------------------------------------------

    def add(self, ids: Iterable[str], vectors: np.ndarray, *, batch_size: int = INSERT_BATCH) -> None:
        """Insert ``vectors`` under new unique ``ids``; bad input is refused before anything is sent."""
        ids = list(ids)
        x = _matrix(vectors, self.dim, "vectors")
        if len(ids) != x.shape[0]:
            raise DataError(f"got {len(ids)} ids for {x.shape[0]} vectors")
        check_new_ids(ids, self._id_set, max_length=MAX_ID_LENGTH)
        _check_finite(x, "vector", names=ids)
        for start in range(0, len(ids), batch_size):
            batch = _unit_rows(x[start:start + batch_size])
            rows = [{ID_FIELD: did, VECTOR_FIELD: row} for did, row in zip(ids[start:start + batch_size], batch)]
            self._client.insert(self.collection, rows)
        self._ids.extend(ids)
        self._id_set.update(ids)

    def build_index(self) -> None:
        """Build the vector index (chosen by size unless given) and load the collection for search."""
        if self._indexed:
            return
        chosen, params, search = choose_index(len(self), self.dim)
        if self._index_type is None:
            self._index_type, self._index_params = chosen, params
            self._search_params = {**search, **self._search_params}
        index_params = self._client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=self._index_type, metric_type="IP",
                               params=self._index_params)
        log.info("building Milvus %s index over %d vectors", self._index_type, len(self))
        self._flush()
        try:
            self._client.create_index(self.collection, index_params)
        except Exception as e:
            # A build of minutes can outlive the gRPC connection (Milvus Lite answers keep-alive
            # pings with GOAWAY); pymilvus then retries and finds the index its first call made.
            if "already exists" not in str(e):
                raise
            log.info("Milvus reports the index as created by the first attempt; waiting for it")
        self._wait_for_index()
        self._client.load_collection(self.collection)
        self._indexed = True

    def _wait_for_index(self, poll_s: float = 2.0) -> None:
        """Until every row is indexed (a retried build may still be running server-side)."""
        while True:
            info = self._client.describe_index(self.collection, VECTOR_FIELD)
            if info.get("index_type") != self._index_type or info.get("metric_type") != "IP":
                raise IndexMismatchError(f"Milvus collection {self.collection!r} has a {info.get('index_type')} "
                                         f"index with metric {info.get('metric_type')}, not {self._index_type} / IP")
            if info.get("state") in (None, "Finished") and int(info.get("pending_index_rows", 0) or 0) == 0:
                return
            if info.get("state") == "Failed":
                raise IndexMismatchError(f"Milvus failed to build the index: {info.get('index_state_fail_reason')}")
            time.sleep(poll_s)

    # --- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, batch_size: int = 1024, filter: str | None = None) -> SearchResult:
        """Top ``min(k, len(self))`` ids and cosine scores per query, best first (missing: None, -inf).

        ``filter``: a Milvus boolean expression the results must satisfy (see :mod:`mmembed.index.filters`).
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        q = _matrix(queries, self.dim, "queries")
        _check_finite(q, "query")
        kk = min(k, len(self))
        if kk > MAX_K:
            raise ConfigError(f"Milvus answers at most k={MAX_K}, got k={k}")
        ids = np.full((q.shape[0], kk), None, dtype=object)
        scores = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        if kk == 0 or q.shape[0] == 0:
            return SearchResult(ids, scores)
        self.build_index()
        params = {"metric_type": "IP", "params": dict(self._search_params)}
        for start in range(0, q.shape[0], batch_size):
            found = self._client.search(self.collection, data=list(_unit_rows(q[start:start + batch_size])),
                                        limit=kk, anns_field=VECTOR_FIELD, output_fields=[ID_FIELD],
                                        search_params=params, filter=filter or "")
            for row, hits in enumerate(found, start=start):
                for col, hit in enumerate(hits[:kk]):
                    ids[row, col] = hit["id"]
                    scores[row, col] = hit["distance"]
        return SearchResult(ids, scores)

    # --- persistence ------------------------------------------------------------------------

    def _manifest(self) -> IndexManifest:
        return IndexManifest(
            engine=ENGINE, dim=self.dim, count=len(self), factory=self.index_type, dtype="float32",
            encoder_id=self.encoder_id, created_by=f"mmembed {__version__}",
            extra={"uri": None if self._lite else self.uri, "collection": self.collection,
                   "index_type": self._index_type, "index_params": self._index_params,
                   "search_params": self._search_params, "ids_sha256": ids_fingerprint(self._ids),
                   "pymilvus_version": _pymilvus().__version__},
        )

    def save(self, directory: str | os.PathLike) -> None:
        """Write manifest and ids (and, for Milvus Lite, the database) to ``directory`` atomically."""
        self.build_index()
        self._flush()
        directory = Path(directory)
        if not self._lite:
            with atomic_directory(directory) as staging:
                _write_ids(staging / IDS_FILE, self._ids)
                self._manifest().write(staging)
            return
        # Milvus Lite keeps its files open: close, copy the database into the new directory; the
        # next use reconnects there (a private temporary database is then removed). Closed while
        # saved, so a staging directory holding it can be renamed (see reopen()).
        manifest = self._manifest()
        self.close()
        source = Path(self.uri)
        with atomic_directory(directory) as staging:
            shutil.copytree(source, staging / LITE_DB)
            _write_ids(staging / IDS_FILE, self._ids)
            manifest.write(staging)
        self.uri = str(directory / LITE_DB)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
        log.info("saved %r to %s", self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None,
             expected_encoder_id: str | None = None, token: str | None = None) -> MilvusIndex:
        """Open a saved Milvus index; refuse another dimension/encoder or a collection that does not match."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        check_expected(manifest, directory, expected_dim=expected_dim, expected_encoder_id=expected_encoder_id)
        if manifest.engine != ENGINE:
            raise IndexMismatchError(f"{directory}: manifest describes a {manifest.engine!r} index, not {ENGINE!r}")
        extra = manifest.extra
        collection = extra.get("collection")
        if not isinstance(collection, str):
            raise IndexMismatchError(f"{directory}/manifest.json: field 'extra.collection' is missing")
        uri = extra.get("uri") or str(directory / LITE_DB)
        if is_lite(uri) and not Path(uri).is_dir():
            raise IndexMismatchError(f"{uri}: the Milvus Lite database of this index is missing")
        ids = _read_ids(directory / IDS_FILE)
        if len(ids) != manifest.count or ids_fingerprint(ids) != extra.get("ids_sha256"):
            raise IndexMismatchError(f"{directory / IDS_FILE}: the ids are not those saved with this index "
                                     f"({len(ids)} ids, manifest count {manifest.count}); rebuild it")
        check_retrieval_siblings(directory, ids)
        index = cls.__new__(cls)
        index.dim, index.encoder_id, index.uri, index._token = manifest.dim, manifest.encoder_id, uri, token
        index._lite, index._private_dir, index.collection = is_lite(uri), None, collection
        index._index_type, index._index_params = extra.get("index_type"), dict(extra.get("index_params") or {})
        index._search_params = dict(extra.get("search_params") or {})
        index._ids, index._id_set, index._indexed = ids, set(ids), False
        index._client_handle = None
        index._check_collection(directory, manifest)
        index._client.load_collection(collection)
        index._indexed = True
        return index

    def _check_collection(self, directory: Path, manifest: IndexManifest) -> None:
        """The collection must exist with the manifest's dimension, row count and an inner-product index."""
        where = f"{directory}: Milvus collection {self.collection!r} at {self.uri}"
        if not self._client.has_collection(self.collection):
            raise IndexMismatchError(f"{where} does not exist (dropped, or another server?)")
        fields = {f["name"]: f for f in self._client.describe_collection(self.collection)["fields"]}
        dim = int((fields.get(VECTOR_FIELD) or {}).get("params", {}).get("dim", -1))
        if dim != manifest.dim:
            raise IndexMismatchError(f"{where} holds {dim}-dimensional vectors, the manifest says {manifest.dim}")
        rows = int(self._client.get_collection_stats(self.collection)["row_count"])
        if rows != manifest.count:
            raise IndexMismatchError(f"{where} holds {rows} vectors, the manifest says {manifest.count}")
        try:
            metric = self._client.describe_index(self.collection, VECTOR_FIELD).get("metric_type")
        except Exception as e:  # pymilvus: no index on the field
            raise IndexMismatchError(f"{where} has no vector index ({e})") from None
        if metric != "IP":
            raise IndexMismatchError(f"{where} uses metric {metric!r}; mmembed indexes use inner product ('IP')")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit rows (zero rows stay zero)."""
    out = np.asarray(x, dtype=np.float32).copy()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
