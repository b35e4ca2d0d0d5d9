"""Task specifications before ids exist, and the concept-based split that keeps them leak-free.

Task builders describe candidates by a stable key and queries by the keys of their positives; the
build numbers them afterwards. Splits are decided per *concept* (all variants of one base emoji,
every sense of one word) by a hash, so the same sources always give the same split, and a query
is kept only when all its concepts fall in one split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmembed.types import Modality, Task

SPLIT_SALT = "mmembed-bundled-split-v1"
SPLITS = ("train", "val", "test")
#: Share of concepts per split (train, val, test).
SPLIT_SHARES = (0.7, 0.1, 0.2)


def fraction(key: str, salt: str = SPLIT_SALT) -> float:
    """A uniform number in [0, 1) from a string: the deterministic coin of every random choice here."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(concept: str) -> str:
    """The split of a concept: train, val or test, by :data:`SPLIT_SHARES`."""
    x = fraction(concept)
    if x < SPLIT_SHARES[0]:
        return "train"
    return "val" if x < SPLIT_SHARES[0] + SPLIT_SHARES[1] else "test"


def src_json(facts: dict) -> str:
    """``src_content``: the source facts as a compact, key-sorted JSON string."""
    return json.dumps(facts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass
class CandSpec:
    """A candidate before numbering; ``key`` is stable and unique within its dataset."""

    key: str
    text: str | None
    image: str | None
    facts: dict
    concepts: frozenset[str]

    @property
    def modality(self) -> Modality:
        return Modality.of(self.text is not None, self.image is not None)

    def split(self) -> str | None:
        """The one split of this candidate's concepts (None when they disagree)."""
        splits = {split_of(c) for c in self.concepts}
        return splits.pop() if len(splits) == 1 else None


@dataclass
class QuerySpec:
    """A query before numbering; ``positives`` are candidate keys."""

    text: str | None
    image: str | None
    positives: tuple[str, ...]
    concepts: frozenset[str]
    facts: dict
    merged: int = 1

    @property
    def modality(self) -> Modality:
        return Modality.of(self.text is not None, self.image is not None)

    @property
    def order_key(self) -> str:
        return f"{self.image or ''}\x00{self.text or ''}"

    def split(self) -> str | None:
        splits = {split_of(c) for c in self.concepts}
        return splits.pop() if len(splits) == 1 else None


@dataclass
class TaskSpec:
    """One task of one dataset: its queries, its local pool (candidate keys) and its instructions."""

    dataset: str
    dataset_id: int
    task: Task
    title: str
    how: str
    prompts: tuple[str, ...]
    queries: list[QuerySpec]
    pool: list[str]
    #: Most queries kept per split (val and test); None keeps all.
    cap: dict[str, int | None] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.dataset}_task{self.task.id}"


def merge_queries(queries: Iterable[QuerySpec]) -> list[QuerySpec]:
    """One query per (image, text): positives and concepts of identical queries are united.

    Two sources that ask the same thing (the same keyword of two emoji, the same gloss of two
    synsets) make one query with every positive the sources name.
    """
    merged: dict[str, QuerySpec] = {}
    for q in queries:
        seen = merged.get(q.order_key)
        if seen is None:
            merged[q.order_key] = QuerySpec(q.text, q.image, tuple(sorted(set(q.positives))), q.concepts,
                                            dict(q.facts))
            continue
        seen.positives = tuple(sorted(set(seen.positives) | set(q.positives)))
        seen.concepts = seen.concepts | q.concepts
        seen.merged += 1
        seen.facts.setdefault("also", []).append(q.facts)
    return [merged[k] for k in sorted(merged)]


def assign_splits(spec: TaskSpec) -> dict[str, list[QuerySpec]]:
    """Queries per split; a query whose concepts span splits is dropped, then val/test are capped.

    The cap keeps the queries with the smallest hash of their text and image, so it is an unbiased,
    reproducible sample.
    """
    by_split: dict[str, list[QuerySpec]] = {s: [] for s in SPLITS}
    crossing = 0
    for q in spec.queries:
        split = q.split()
        if split is None:
            crossing += 1
        else:
            by_split[split].append(q)
    spec.dropped["concepts in several splits"] = crossing
    for split, cap in spec.cap.items():
        queries = by_split[split]
        if cap is not None and len(queries) > cap:
            keep = set(sorted(range(len(queries)), key=lambda i: fraction(queries[i].order_key, "cap"))[:cap])
            spec.dropped[f"over the {split} cap"] = len(queries) - cap
            by_split[split] = [q for i, q in enumerate(queries) if i in keep]
    return by_split
