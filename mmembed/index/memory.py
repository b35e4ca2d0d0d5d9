"""How much memory building a FAISS index will take, worked out before any vector is read.

A 5.6M x 4096 pool is 86 GiB as float32; finding that out by being killed halfway through an
hours-long build is the failure this prevents. The estimate asks FAISS itself for the code size
of the chosen factory string (so PQ, SQ8, fp16 and OPQ are counted as FAISS stores them) and
adds what the build holds beside the codes: the string ids, the training sample, add buffers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import ConfigError

log = logging.getLogger(__name__)

#: Bytes a Python str id costs in the index (object header + text + list slot + lookup array/set),
#: measured with sys.getsizeof on 12-character ids, rounded up.
ID_OVERHEAD = 120


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a build needs, by part."""

    count: int
    dim: int
    factory: str
    #: Bytes per stored vector in the index (codes, plus the 8-byte id of IVF lists, HNSW links).
    bytes_per_vector: float
    #: Size-independent parts: centroids, codebooks, OPQ rotation.
    fixed_bytes: int
    train_bytes: int
    buffer_bytes: int
    #: The inverted lists stay on disk (mmapped), not in memory.
    on_disk: bool = False

    @property
    def index_bytes(self) -> int:
        return int(self.bytes_per_vector * self.count) + self.fixed_bytes

    @property
    def ids_bytes(self) -> int:
        return ID_OVERHEAD * self.count

    @property
    def total_bytes(self) -> int:
        codes = 0 if self.on_disk else self.index_bytes
        return codes + self.ids_bytes + self.train_bytes + self.buffer_bytes

    def describe(self) -> str:
        where = " (lists on disk)" if self.on_disk else ""
        return (f"{self.factory} over {self.count:,} x {self.dim}: {self.bytes_per_vector:.1f} B/vector, "
                f"index {gib(self.index_bytes)}{where}, ids {gib(self.ids_bytes)}, training sample "
                f"{gib(self.train_bytes)}, buffers {gib(self.buffer_bytes)}; peak about {gib(self.total_bytes)}")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def estimate(factory: str, dtype: str, dim: int, count: int, *, chunk_rows: int = 65_536,
             on_disk: bool = False, train_rows: int | None = None) -> MemoryEstimate:
    """Estimate the peak memory of building ``factory`` (as FaissIndex stores it) over ``count`` vectors.

    ``train_rows``: the training sample size asked for (default: what FaissIndex.train uses).
    """
    from mmembed.index.faiss_index import ADD_BATCH, TRAIN_SAMPLE, FaissIndex

    index = FaissIndex(dim, factory, dtype=dtype)  # empty: costs only the (untrained) structure
    faiss_index = index.faiss_index
    import faiss

    nlist = _ivf_lists(faiss_index)
    fixed = nlist * dim * 4
    if nlist:
        ivf = faiss.extract_index_ivf(faiss_index)
        per_vector = float(ivf.code_size + 8)  # code + the int64 id FAISS keeps in each list
    else:
        storage = faiss.downcast_index(faiss_index.storage) if hasattr(faiss_index, "storage") else faiss_index
        per_vector = float(storage.sa_code_size())
    hnsw = re.search(r"HNSW(\d+)", factory)
    if hnsw and not nlist:
        # level 0 keeps 2M int32 neighbours per vector; upper levels add ~1/M of that again
        m = int(hnsw.group(1))
        per_vector += 4 * 2 * m * (1 + 1 / m) + 12
    opq = re.match(r"OPQ(\d+)", factory)
    if opq:
        fixed += dim * dim * 4
    if "PQ" in factory:
        fixed += 256 * dim * 4  # codebooks: 2^8 centroids of the sub-vectors, all together dim wide
    trained = not faiss_index.is_trained
    if train_rows is None:
        train_rows = max(TRAIN_SAMPLE, 256 * nlist)
    train_rows = min(count, train_rows) if trained else 0
    # the sample is held once raw and once normalised while training
    train_bytes = 2 * train_rows * dim * 4
    buffer_bytes = 2 * min(count, max(ADD_BATCH, chunk_rows)) * dim * 4
    return MemoryEstimate(count, dim, factory, per_vector, fixed, train_bytes, buffer_bytes, on_disk)


def _ivf_lists(faiss_index) -> int:
    import faiss

    try:
        return int(faiss.extract_index_ivf(faiss_index).nlist)
    except (RuntimeError, AttributeError):
        return 0


def available_memory() -> int | None:
    """Memory this process may still use: the smaller of MemAvailable and a cgroup limit's headroom."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            found.append(int(limit) - usage)
    return min(found) if found else None


def check_fits(estimate_: MemoryEstimate, *, force: bool = False, available: int | None = None) -> None:
    """Log the estimate; refuse a build that cannot fit in memory unless ``force``."""
    available = available_memory() if available is None else available
    log.info("memory estimate: %s; available: %s", estimate_.describe(),
             "unknown" if available is None else gib(available))
    if available is None or estimate_.total_bytes <= available:
        return
    if force:
        log.warning("building anyway (--force): the estimate %s exceeds the %s available",
                    gib(estimate_.total_bytes), gib(available))
        return
    raise ConfigError(
        f"this build needs about {gib(estimate_.total_bytes)} but {gib(available)} is available "
        f"({estimate_.describe()}); use a compressed index (e.g. --dtype float16, --factory IVF4096,SQ8 or "
        "OPQ64,IVF4096,PQ64), --on-disk lists for an IVF index, the Milvus backend, or --force to try anyway"
    )

