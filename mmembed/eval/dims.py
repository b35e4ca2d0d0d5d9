"""Evaluation at several embedding dimensions (``evaluate --set dims=[384,192,96,48]``).

Every item is embedded once at the full dimension; each dimension is then scored on those vectors
cut to their first ``d`` coordinates and renormalised (:class:`~mmembed.encoders.matryoshka.TruncatedEncoder`),
so the dimensions differ only in the truncation. Any dimension up to the model's is scored (a model
not trained for truncation is scored too, to compare); those the model was not trained for are
named in the log. Results of dimension ``d`` go to ``OUT/dim-d/``, and ``OUT/dims.json`` holds the
per-task table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mmembed.encoders.matryoshka import TruncatedEncoder, trained_dims
from mmembed.errors import ConfigError
from mmembed.fileio import write_json

logger = logging.getLogger(__name__)


class _Remembered:
    """An encoder whose answers are remembered by (items' ids, instructions): the same chunk is embedded once."""

    def __init__(self, encoder: Any):
        self.inner = encoder
        self.dim = encoder.dim
        self.encoder_id = encoder.encoder_id
        self._seen: dict[tuple, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, queries: Sequence[Any], instruction: Any = None, **kwargs: Any) -> np.ndarray:
        key = ("q", tuple(q.id for q in queries), instruction if isinstance(instruction, str | None)
               else tuple(instruction))
        if key not in self._seen:
            self._seen[key] = self.inner.encode_queries(queries, instruction, **kwargs)
        return self._seen[key]

    def encode_candidates(self, candidates: Sequence[Any], **kwargs: Any) -> np.ndarray:
        key = ("c", tuple(c.id for c in candidates))
        if key not in self._seen:
            self._seen[key] = self.inner.encode_candidates(candidates, **kwargs)
        return self._seen[key]


def run_dims_evaluation(encoder: Any, data_dir: str | os.PathLike, config: Any,
                        output_dir: str | os.PathLike | None = None) -> dict[int, Any]:
    """``{dimension: EvalResults}`` for every dimension of ``config.dims`` (an ``EvalConfig``)."""
    from mmembed.eval.mbeir_runner import run_evaluation

    if encoder is None:
        raise ConfigError("dims: scoring several dimensions needs an encoder (precomputed embeddings are stored "
                          "at one dimension)")
    untrained = [d for d in config.dims if d not in trained_dims(encoder)]
    if untrained:
        logger.warning("dims %s: the model was not trained for them (trained: %s); scored by truncation all the same",
                       untrained, ", ".join(map(str, trained_dims(encoder))))
    remembered = _Remembered(encoder)
    results = {}
    for dim in sorted(config.dims, reverse=True):
        truncated = TruncatedEncoder(remembered, dim)
        out = Path(output_dir) / f"dim-{dim}" if output_dir else None
        results[dim] = run_evaluation(truncated, data_dir, replace(config, dims=None), out)
        logger.info("dimension %d scored", dim)
    if output_dir:
        write_json(Path(output_dir) / "dims.json", dims_table(results))
    return results


def dims_table(results: dict[int, Any]) -> dict:
    """``{"dims": [...], "rows": [{task, pool, instructions, metric, scores: {dim: score}}], "averages": ...}``."""
    dims = sorted(results, reverse=True)
    rows: dict[tuple, dict] = {}
    for dim in dims:
        for r in results[dim].results:
            row = rows.setdefault((r.task, r.pool, r.instructions),
                                  {"task": r.task, "pool": r.pool, "instructions": r.instructions,
                                   "metric": r.metric, "scores": {}})
            row["scores"][str(dim)] = r.score
    settings = sorted({(k[1], k[2]) for k in rows})
    averages = {f"{p}/{i}": {str(d): results[d].average(p, i) for d in dims} for p, i in settings}
    return {"dims": dims, "rows": list(rows.values()), "averages": averages}


def dims_markdown(results: dict[int, Any]) -> str:
    """The per-task table, one column per dimension (scores x 100)."""
    table = dims_table(results)
    dims = table["dims"]
    lines = ["| task | pool | instructions | metric | " + " | ".join(str(d) for d in dims) + " |",
             "|---|---|---|---|" + "---:|" * len(dims)]
    for row in table["rows"]:
        lines.append(f"| {row['task']} | {row['pool']} | {row['instructions']} | {row['metric']} | "
                     + " | ".join(f"{100 * row['scores'][str(d)]:.1f}" for d in dims) + " |")
    for setting, by_dim in table["averages"].items():
        lines.append(f"| **average** | {setting.replace('/', ' | ')} | | "
                     + " | ".join(f"**{100 * by_dim[str(d)]:.1f}**" for d in dims) + " |")
    return "\n".join(lines)
