"""The one data vocabulary of mmembed: modalities, tasks, queries, candidates, qrels and runs.

Field names follow M-BEIR (UniIR) so that records round-trip through its JSONL files unchanged.
Modality is decided in exactly one place, :meth:`Modality.of`.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmembed.errors import DataError

#: qid -> did -> graded relevance (as in pytrec_eval and TREC qrels files).
Qrels = dict[str, dict[str, int]]
#: qid -> did -> retrieval score (higher is better).
Run = dict[str, dict[str, float]]


def has_visible_text(text: str | None) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor an invisible format/control
    character (zero-width spaces and joiners, BOM, bidi marks): text made of those alone is no text."""
    return bool(text) and any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc") for ch in text)


class Modality(str, enum.Enum):
    """What an item carries, spelled as in M-BEIR."""

    TEXT = "text"
    IMAGE = "image"
    IMAGE_TEXT = "image,text"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> Modality:
        """Read M-BEIR's spelling; raise :class:`DataError` listing the valid ones otherwise."""
        if isinstance(value, Modality):
            return value
        for member in cls:
            if value == member.value:
                return member
        valid = ", ".join(repr(m.value) for m in cls)
        raise DataError(f"unknown modality {value!r}; expected one of {valid}")

    @classmethod
    def of(cls, has_text: bool, has_image: bool) -> Modality:
        """The modality of an item from what it carries (the single place this is decided)."""
        if has_text and has_image:
            return cls.IMAGE_TEXT
        if has_image:
            return cls.IMAGE
        if has_text:
            return cls.TEXT
        raise DataError("an item needs text, an image, or both; this one has neither")

    @property
    def has_image(self) -> bool:
        return self is not Modality.TEXT

    @property
    def has_text(self) -> bool:
        return self is not Modality.IMAGE

    @property
    def short(self) -> str:
        """Compact label used in task names: t, i, it."""
        return {"text": "t", "image": "i", "image,text": "it"}[self.value]


_TASK_IDS: dict[tuple[Modality, Modality], int] = {
    (Modality.TEXT, Modality.IMAGE): 0,
    (Modality.TEXT, Modality.TEXT): 1,
    (Modality.TEXT, Modality.IMAGE_TEXT): 2,
    (Modality.IMAGE, Modality.TEXT): 3,
    (Modality.IMAGE, Modality.IMAGE): 4,
    (Modality.IMAGE, Modality.IMAGE_TEXT): 5,
    (Modality.IMAGE_TEXT, Modality.TEXT): 6,
    (Modality.IMAGE_TEXT, Modality.IMAGE): 7,
    (Modality.IMAGE_TEXT, Modality.IMAGE_TEXT): 8,
}
_TASK_BY_ID = {task_id: pair for pair, task_id in _TASK_IDS.items()}


@dataclass(frozen=True, order=True)
class Task:
    """An M-BEIR task type: query modality -> candidate modality, with ids 0-8."""

    query_modality: Modality
    cand_modality: Modality

    @property
    def id(self) -> int:
        return _TASK_IDS[(self.query_modality, self.cand_modality)]

    @classmethod
    def from_id(cls, task_id: int | str) -> Task:
        try:
            return cls(*_TASK_BY_ID[int(task_id)])
        except (KeyError, ValueError):
            raise DataError(f"unknown task id {task_id!r}; M-BEIR task ids are 0-8") from None

    @property
    def arrow(self) -> str:
        """Human label such as ``t->i``."""
        return f"{self.query_modality.short}->{self.cand_modality.short}"

    def __str__(self) -> str:
        return f"task{self.id} ({self.arrow})"


def dataset_id_of(item_id: str) -> int:
    """The dataset id prefix of an M-BEIR id such as ``"9:1234"``."""
    head, sep, _ = item_id.partition(":")
    if not sep or not head.isdigit():
        raise DataError(f"id {item_id!r} is not of the form '<dataset_id>:<n>'")
    return int(head)


@dataclass(frozen=True)
class Query:
    """An M-BEIR query record. ``image`` is a path relative to the image root."""

    qid: str
    text: str | None
    image: str | None
    modality: Modality
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    src_content: str | None = None
    #: Fields M-BEIR does not define, kept so that a record round-trips unchanged.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.qid

    @property
    def dataset_id(self) -> int:
        return dataset_id_of(self.qid)


@dataclass(frozen=True)
class Candidate:
    """An M-BEIR candidate record. ``image`` is a path relative to the image root."""

    did: str
    text: str | None
    image: str | None
    modality: Modality
    src_content: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return self.did

    @property
    def dataset_id(self) -> int:
        return dataset_id_of(self.did)


def first_repeat(values: Iterable[str]) -> str | None:
    """The first value seen twice (to name a duplicate id in an error), or ``None``."""
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
