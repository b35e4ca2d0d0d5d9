"""A split's queries, embedded ahead of evaluation with the evaluation's seeded instruction choice.

``mmembed encode DIR --queries --split test --out Q`` writes, for every task of the split and every
instruction mode, the query vectors (float32: the evaluation's own arithmetic, so scores reproduce
exactly) with their qids and the instruction each was encoded with. ``mmembed evaluate --embeddings
POOL --query-embeddings Q`` then scores without any encoder: encoding can run on GPU machines and
scoring elsewhere. The manifest keys the vectors by the query files' content, the instructions
file, the seed and the text format; evaluation refuses a store that does not match its data or
settings, naming what differs.

```
Q/
  queries.json                 manifest: encoder, split, seed, text format, modes, file hashes
  <task>.<mode>.npz            qids, instructions (None as has_instruction=False), vectors
```
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmembed.errors import ConfigError, IndexMismatchError
from mmembed.fileio import atomic_open, file_sha256, write_json
from mmembed.version import __version__

if TYPE_CHECKING:
    from mmembed.data.layout import MBEIRDirectory, TaskFiles
    from mmembed.encoders.base import Encoder
    from mmembed.instructions import InstructionRegistry
    from mmembed.types import Query

log = logging.getLogger(__name__)

MANIFEST = "queries.json"
FORMAT_VERSION = 1


def choose_instructions(queries: Sequence[Query], task: TaskFiles, registry: InstructionRegistry | None, mode: str,
                        seed: int) -> list[str | None]:
    """The instruction of each query under ``mode`` (seeded per query): the evaluation's one choice."""
    if mode == "none":
        return [None] * len(queries)
    if registry is None:
        raise ConfigError(f"instruction mode {mode!r} needs the dataset's query_instructions.tsv")
    return [registry.choose(q, task.task.cand_modality, mode, seed) for q in queries]  # type: ignore[arg-type]


@dataclass(frozen=True)
class QueryVectors:
    """The embedded queries of one task under one instruction mode, in query-file order."""

    qids: list[str]
    instructions: list[str | None]
    vectors: np.ndarray


def _path(directory: Path, task: str, mode: str) -> Path:
    return directory / f"{task}.{mode}.npz"


def _inputs(directory: MBEIRDirectory, tasks: Sequence[TaskFiles], modes: Sequence[str]) -> dict[str, str]:
    """Content hashes of what the vectors depend on: every query file, and the instructions when used."""
    files = {task.name: file_sha256(task.queries) for task in tasks}
    if any(m != "none" for m in modes):
        files["query_instructions.tsv"] = file_sha256(directory.instructions_path)
    return files


def encode_split_queries(encoder: Encoder, data_dir: str | os.PathLike, out: str | os.PathLike, *, split: str,
                         modes: Sequence[str], seed: int, text_format: str = "raw",
                         tasks: Sequence[str] | None = None, max_queries: int | None = None, batch_size: int = 64,
                         encoder_spec: str | None = None, show_progress: bool = False) -> Path:
    """Embed every task's queries of ``split`` under each of ``modes``; ``encoder`` already applies ``text_format``."""
    from mmembed.data.layout import MBEIRDirectory, check_task_queries
    from mmembed.data.mbeir import read_queries
    from mmembed.encoders.base import as_items

    directory = MBEIRDirectory(data_dir)
    selected = directory.select_tasks(split, tasks or None)
    registry = directory.instructions() if any(m != "none" for m in modes) else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for task in selected:
        queries = read_queries(task.queries)[:max_queries]
        check_task_queries(task, queries)
        for mode in modes:
            chosen = choose_instructions(queries, task, registry, mode, seed)
            vectors = np.asarray(encoder.encode_queries(as_items(queries, directory.images), chosen,
                                                        batch_size=batch_size, show_progress=show_progress),
                                 dtype=np.float32)
            with atomic_open(_path(out, task.name, mode), "wb") as f:
                np.savez(f, qids=np.array([q.qid for q in queries], dtype=str),
                         instructions=np.array([c or "" for c in chosen], dtype=str),
                         has_instruction=np.array([c is not None for c in chosen]), vectors=vectors)
            log.info("%s/%s: %d queries embedded", task.name, mode, len(queries))
    write_json(out / MANIFEST, {
        "kind": "queries", "format_version": FORMAT_VERSION, "encoder_id": encoder.encoder_id,
        "encoder_spec": encoder_spec, "dim": encoder.dim, "split": split, "seed": seed, "text_format": text_format,
        "instruction_modes": list(modes), "max_queries": max_queries, "tasks": [t.name for t in selected],
        "inputs": _inputs(directory, selected, modes), "created_by": f"mmembed {__version__}"})
    return out


class QueryStore:
    """A directory written by :func:`encode_split_queries`, checked against the evaluation reading it."""

    def __init__(self, directory: str | os.PathLike):
        import json

        self.directory = Path(directory)
        path = self.directory / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IndexMismatchError(f"{path}: missing; write query embeddings with 'mmembed encode DATA --queries'") \
                from None
        except (OSError, ValueError) as e:
            raise IndexMismatchError(f"{path}: unreadable or corrupt ({e})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("kind") != "queries":
            raise IndexMismatchError(f"{path}: not a query-embeddings manifest")

    @property
    def encoder_id(self) -> str:
        return str(self.manifest["encoder_id"])

    def check(self, directory: MBEIRDirectory, tasks: Sequence[TaskFiles], *, split: str, seed: int,
              text_format: str, modes: Sequence[str], encoder_id: str | None) -> None:
        """Refuse vectors made for other data, settings or another encoder, naming the difference."""
        where = self.directory / MANIFEST
        wanted = {"split": split, "seed": seed, "text_format": text_format}
        if encoder_id is not None:
            wanted["encoder_id"] = encoder_id
        for key, value in wanted.items():
            if self.manifest.get(key) != value:
                raise IndexMismatchError(f"{where}: query embeddings were made with {key}={self.manifest.get(key)!r}, "
                                         f"this evaluation uses {value!r}; encode the queries again")
        missing_modes = [m for m in modes if m not in self.manifest.get("instruction_modes", [])]
        if missing_modes:
            raise IndexMismatchError(f"{where}: no query embeddings for instruction mode(s) {', '.join(missing_modes)}")
        inputs = self.manifest.get("inputs", {})
        for name, digest in _inputs(directory, tasks, modes).items():
            if name not in inputs:
                raise IndexMismatchError(f"{where}: no query embeddings for {name}; encode the queries of this split")
            if inputs[name] != digest:
                raise IndexMismatchError(f"{where}: {name} changed since its queries were embedded; encode again")

    def read(self, task: str, mode: str, qids: list[str]) -> QueryVectors:
        """The vectors of ``qids`` (a prefix of the stored queries, in order) of ``task`` under ``mode``."""
        path = _path(self.directory, task, mode)
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = z["qids"].tolist()
                texts, has = z["instructions"].tolist(), z["has_instruction"]
                vectors = z["vectors"]
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise IndexMismatchError(f"{path}: missing or corrupt query embeddings ({e})") from None
        if stored[: len(qids)] != qids:
            raise IndexMismatchError(f"{path}: holds other queries than {task}'s first {len(qids)} (another query file "
                                     "or max_queries?); encode the queries again")
        n = len(qids)
        return QueryVectors(stored[:n], [t if h else None for t, h in zip(texts[:n], has[:n])], vectors[:n])
