"""IVF indexes whose inverted lists stay on disk: for pools whose codes do not fit in memory.

Built block by block: each block of rows goes into an empty copy of the trained index, which is
written to a work directory and dropped; the blocks are then read back memory-mapped and merged
into one FAISS ``OnDiskInvertedLists`` file. Memory holds one block plus the coarse quantizer, and
searches page in only the lists they probe. The saved index keeps the lists file beside
``index.faiss`` (see :class:`~mmembed.index.faiss_index.FaissIndex`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mmembed.errors import ConfigError
from mmembed.index.faiss_index import LISTS_FILE, FaissIndex, _faiss, _nlist, _normalised

log = logging.getLogger(__name__)

#: Rows per block (bounded memory: 1M x 4096 float32 is 16 GiB before encoding; codes are smaller).
BLOCK_ROWS = 262_144


def _blocks(chunks: Iterable[tuple[list[str], np.ndarray]], rows: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Group consecutive chunks into blocks of at least ``rows`` rows (the last may be smaller)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for chunk_ids, vectors in chunks:
        ids.extend(chunk_ids)
        parts.append(vectors)
        if len(ids) >= rows:
            yield ids, parts
            ids, parts = [], []
    if ids:
        yield ids, parts


def fill_on_disk(index: FaissIndex, chunks: Iterable[tuple[list[str], np.ndarray]], workdir: Path, *,
                 block_rows: int = BLOCK_ROWS) -> None:
    """Add every chunk to the trained, empty IVF ``index``, with its lists in ``workdir/lists.ivfdata``."""
    faiss = _faiss()
    if not _nlist(index.faiss_index):
        raise ConfigError(f"on-disk inverted lists need an IVF index (e.g. IVF4096,PQ64), not {index.factory!r}")
    if not index.is_trained or len(index):
        raise ConfigError("on-disk lists are filled into a trained, empty index")
    workdir.mkdir(parents=True, exist_ok=True)
    all_ids: list[str] = []
    block_files = []
    for number, (ids, parts) in enumerate(_blocks(chunks, block_rows)):
        block = faiss.clone_index(index.faiss_index)
        x = _normalised(np.concatenate(parts), "vector")
        # row numbers continue across blocks, so the merged lists point at the right ids
        block.add_with_ids(x, np.arange(len(all_ids), len(all_ids) + len(ids), dtype=np.int64))
        path = workdir / f"block-{number:05d}.faiss"
        faiss.write_index(block, str(path))
        block_files.append(path)
        all_ids.extend(ids)
        del block, x
        log.info("on-disk build: %d vectors in %d blocks", len(all_ids), len(block_files))
    index._check_new_ids(all_ids)
    _merge(index, block_files, workdir / LISTS_FILE)
    index._ids.extend(all_ids)
    index._lists_file = workdir / LISTS_FILE
    for path in block_files:
        path.unlink()


def _merge(index: FaissIndex, block_files: list[Path], lists_path: Path) -> None:
    faiss = _faiss()
    blocks = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in block_files]  # mapped, not loaded
    ivf = faiss.extract_index_ivf(index.faiss_index)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    sources = faiss.InvertedListsPtrVector()
    for block in blocks:
        sources.push_back(faiss.extract_index_ivf(block).invlists)
    total = lists.merge_from_multiple(sources.data(), sources.size(), False, False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the IVF index owns and frees it now
    ivf.ntotal = index.faiss_index.ntotal = total
