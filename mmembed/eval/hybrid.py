"""Hybrid evaluation (``evaluate --set hybrid=rrf``): every dense run fused with BM25 before scoring.

Each pool gets its own BM25 index over its candidates' texts (a local pool over its own file, so
its term statistics are its own; the global pool over the union), built once per pool file and
shared by the tasks and instruction modes that search it. The query's text (not its instruction)
is the BM25 query; queries without text keep their dense ranking. Both lists are cut at the
evaluation depth and fused by :func:`mmembed.index.hybrid.fuse`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.data.mbeir import iter_candidates
from mmembed.embeddings.pool_cache import MODALITY_CODES
from mmembed.eval.split_search import Found
from mmembed.index.hybrid import BM25Index, fuse

logger = logging.getLogger(__name__)


class _PoolText:
    """BM25 over one pool file, and the modality code of each of its candidates."""

    def __init__(self, path: Path):
        ids, texts, codes = [], [], {}
        for c in iter_candidates(path):
            ids.append(c.did)
            texts.append(c.text)
            codes[c.did] = MODALITY_CODES[c.modality]
        self.bm25 = BM25Index(ids, texts)
        self.codes = codes


def fuse_found(found: dict[tuple[str, str, str], Found], prepared: list, global_pool: Path, mode: str,
               depth: int) -> dict[tuple[str, str, str], Found]:
    """``found`` with every run replaced by its fusion with BM25 (``mode``: ``rrf`` or ``weighted``)."""
    pools: dict[Path, _PoolText] = {}
    fused = {}
    for task, queries, _qrels, _unjudged, task_mode, *_ in prepared:
        texts = [q.text for q in queries]
        for pool_name in ("local", "global"):
            key = (task.name, task_mode, pool_name)
            if key not in found:
                continue
            path = Path(task.local_pool if pool_name == "local" else global_pool)
            if path not in pools:
                logger.info("BM25 index of %s", path.name)
                pools[path] = _PoolText(path)
            pool = pools[path]
            dense = found[key]
            sparse = pool.bm25.search(texts, depth)
            ids, scores = fuse(_as_result(dense), sparse, depth, mode)
            codes = np.array([[pool.codes.get(d, -1) if d is not None else -1 for d in row] for row in ids],
                             dtype=np.int8).reshape(ids.shape)
            fused[key] = Found(ids, scores, codes, dense.recall)
    return fused


def _as_result(found: Found) -> Any:
    from mmembed.index.base import SearchResult

    return SearchResult(found.ids, found.scores)
