"""WordNet 3.0 database files, parsed directly (format: the ``wndb(5WN)`` manual page).

A ``data.{noun,verb,adj,adv}`` line is ``offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt
(pointer)* [frames] | gloss``, with ``w_cnt`` in hexadecimal. The gloss is a definition followed by
quoted example sentences. ``index.*`` lines give, per lemma, how many of its senses were tagged in
the SemCor corpus (``tagsense_cnt``); the benchmark keeps those senses, the ones people use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import DataError, Location

log = logging.getLogger(__name__)

FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # adjective position markers such as galore(ip)
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its words, its definition and its example sentences."""

    file_pos: str  # n, v, a, r: the data file it lives in
    ss_type: str  # n, v, a, s (adjective satellite), r
    offset: str
    lex_file: int
    lemmas: tuple[str, ...]  # with spaces instead of underscores, markers removed
    definition: str
    examples: tuple[str, ...]

    @property
    def id(self) -> str:
        """``n02084071``: the part-of-speech letter of its data file and its byte offset."""
        return f"{self.file_pos}{self.offset}"

    @property
    def pos_name(self) -> str:
        return POS_NAMES[self.ss_type]

    def facts(self) -> dict:
        return {"synset": self.id, "offset": self.offset, "ss_type": self.ss_type, "lex_filenum": self.lex_file,
                "lemmas": list(self.lemmas)}


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into its definition and its quoted example sentences."""
    head = gloss.split('"', 1)[0]
    definition = head.strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if e.strip())
    return definition, examples


def parse_data_line(line: str, file_pos: str, loc: Location) -> Synset:
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 6:
        raise DataError("expected 'offset lex_filenum ss_type w_cnt words ... | gloss'", loc)
    try:
        w_cnt = int(fields[3], 16)
        lex_file = int(fields[1])
    except ValueError:
        raise DataError(f"bad word count {fields[3]!r} or lexicographer file {fields[1]!r}", loc) from None
    words = fields[4:4 + 2 * w_cnt:2]
    if len(words) != w_cnt:
        raise DataError(f"expected {w_cnt} words, found {len(words)}", loc)
    lemmas = tuple(dict.fromkeys(_MARKER.sub("", w).replace("_", " ") for w in words))
    definition, examples = parse_gloss(gloss)
    return Synset(file_pos, fields[2], fields[0], lex_file, lemmas, definition, examples)


def iter_synsets(root: Path, file_pos: str, wanted: Callable[[str], bool] | None = None) -> Iterator[Synset]:
    """The synsets of one data file whose id is ``wanted`` (all by default); licence lines are skipped."""
    path = root / f"data.{FILES[file_pos]}"
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith(" ") or not line.strip():
                continue
            if wanted is not None and not wanted(file_pos + line[:line.find(" ")]):
                continue
            yield parse_data_line(line.rstrip("\n"), file_pos, Location(str(path), lineno))


def tagged_synsets(root: Path) -> set[str]:
    """Ids of the synsets that are a SemCor-tagged sense of at least one lemma (``index.*`` files)."""
    tagged: set[str] = set()
    for file_pos, name in FILES.items():
        path = root / f"index.{name}"
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if line.startswith(" ") or not line.strip():
                    continue
                fields = line.split()
                try:
                    synset_cnt, p_cnt = int(fields[2]), int(fields[3])
                    tag_cnt = int(fields[5 + p_cnt])
                except (IndexError, ValueError):
                    raise DataError("malformed index line", Location(str(path), lineno)) from None
                offsets = fields[6 + p_cnt:6 + p_cnt + synset_cnt]
                tagged.update(file_pos + o for o in offsets[:tag_cnt])
    return tagged


def load_synsets(root: Path, keep: Callable[[str], bool] | None = None) -> list[Synset]:
    """The tagged synsets of all four parts of speech, sorted by id; ``keep(id)`` may narrow them."""
    tagged = tagged_synsets(root)
    if keep is not None:
        tagged = {sid for sid in tagged if keep(sid)}
    found = [s for file_pos in FILES for s in iter_synsets(root, file_pos, tagged.__contains__)]
    log.info("wordnet: %d SemCor-tagged synsets kept", len(found))
    return sorted(found, key=lambda s: s.id)
