"""Task instructions: M-BEIR's ``query_instructions.tsv`` and the choice of one prompt per query.

The TSV has a header line, then rows ``query_modality, cand_modality, dataset_name, dataset_id,
prompt_1 .. prompt_n``, keyed by (dataset id, query modality, candidate modality). Queries get an
instruction; candidates never do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmembed.errors import ConfigError, DataError, Location
from mmembed.fileio import atomic_open, iter_text_lines
from mmembed.types import Modality, Query

HEADER = ("query_modality", "cand_modality", "dataset_name", "dataset_id")
InstructionMode = Literal["random", "fixed", "none"]
INSTRUCTION_MODES = ("random", "fixed", "none")


@dataclass(frozen=True)
class InstructionEntry:
    dataset_name: str
    dataset_id: int
    query_modality: Modality
    cand_modality: Modality
    prompts: tuple[str, ...]


def mbeir_task_name(entry: InstructionEntry) -> str:
    """``{dataset}_task{id}``, as M-BEIR files and the evaluation name a task."""
    from mmembed.types import Task

    return f"{entry.dataset_name}_task{Task(entry.query_modality, entry.cand_modality).id}"


class InstructionRegistry:
    """Instructions keyed by (dataset id, query modality, candidate modality)."""

    def __init__(self, entries: Iterable[InstructionEntry] = ()):
        self._entries: dict[tuple[int, Modality, Modality], InstructionEntry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: InstructionEntry) -> None:
        key = (entry.dataset_id, entry.query_modality, entry.cand_modality)
        if key in self._entries:
            raise DataError(f"duplicate instructions for dataset {entry.dataset_id} "
                            f"{entry.query_modality.value} -> {entry.cand_modality.value}")
        if not entry.prompts:
            raise DataError(f"no prompts for dataset {entry.dataset_id} "
                            f"{entry.query_modality.value} -> {entry.cand_modality.value}")
        self._entries[key] = entry

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def prompts(self, dataset_id: int, query_modality: Modality, cand_modality: Modality) -> tuple[str, ...]:
        key = (dataset_id, Modality.parse(query_modality), Modality.parse(cand_modality))
        entry = self._entries.get(key)
        if entry is None:
            known = ", ".join(f"{d}:{q.value}->{c.value}" for d, q, c in sorted(self._entries, key=str)[:12])
            raise DataError(f"no instruction for dataset {key[0]} {key[1].value} -> {key[2].value}; "
                            f"known: {known or 'none'}")
        return entry.prompts

    def choose(self, query: Query, cand_modality: Modality, mode: InstructionMode = "random",
               seed: int = 0, fixed_index: int = 0) -> str | None:
        """The instruction for one query.

        ``random`` draws one prompt per query from a hash of (seed, qid), so the choice does not
        depend on the order or the subset of queries evaluated; ``fixed`` takes prompt
        ``fixed_index``; ``none`` gives no instruction.
        """
        if mode == "none":
            return None
        prompts = self.prompts(query.dataset_id, query.modality, cand_modality)
        if mode == "fixed":
            return prompts[fixed_index % len(prompts)]
        if mode == "random":
            digest = hashlib.sha256(f"{seed}\x00{query.qid}".encode()).digest()
            return prompts[int.from_bytes(digest[:8], "big") % len(prompts)]
        raise ConfigError(f"unknown instruction mode {mode!r}; expected one of {', '.join(INSTRUCTION_MODES)}")

    # --- the TSV file -----------------------------------------------------------------------------

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> InstructionRegistry:
        path = Path(path)
        if not path.is_file():
            raise DataError("file not found", Location(str(path)))
        registry = cls()
        for lineno, line in iter_text_lines(path):
            if lineno == 1 or not line.strip():
                continue  # header
            loc = Location(str(path), lineno)
            try:
                registry.add(_parse_row(line.split("\t"), loc))
            except DataError as e:  # a duplicate or empty entry: say on which line
                raise DataError(e.reason, e.location if e.location.file else loc) from None
        return registry

    def to_tsv(self, path: str | os.PathLike) -> None:
        width = max((len(e.prompts) for e in self), default=4)
        header = [*HEADER, *(f"prompt_{i + 1}" for i in range(width))]
        with atomic_open(path) as f:
            f.write("\t".join(header) + "\n")
            for e in sorted(self, key=lambda e: (e.dataset_id, e.query_modality.value, e.cand_modality.value)):
                for prompt in e.prompts:
                    if "\t" in prompt or "\n" in prompt:
                        raise DataError(f"prompt {prompt!r} contains a tab or newline")
                row = [e.query_modality.value, e.cand_modality.value, e.dataset_name, str(e.dataset_id), *e.prompts]
                f.write("\t".join(row) + "\n")


def _parse_row(cols: list[str], loc: Location) -> InstructionEntry:
    if len(cols) < 5:
        raise DataError(f"expected at least 5 tab-separated columns ({', '.join(HEADER)}, prompts), "
                        f"got {len(cols)}", loc)
    try:
        qm = Modality.parse(cols[0].strip())
    except DataError as e:
        raise DataError(e.reason, Location(loc.file, loc.line, "query_modality")) from None
    try:
        cm = Modality.parse(cols[1].strip())
    except DataError as e:
        raise DataError(e.reason, Location(loc.file, loc.line, "cand_modality")) from None
    if not cols[3].strip().isdigit():
        raise DataError(f"dataset id {cols[3]!r} is not an integer", Location(loc.file, loc.line, "dataset_id"))
    prompts = tuple(p.strip() for p in cols[4:] if p.strip())
    if not prompts:
        raise DataError("no prompts on this row", loc)
    return InstructionEntry(cols[2].strip(), int(cols[3]), qm, cm, prompts)
