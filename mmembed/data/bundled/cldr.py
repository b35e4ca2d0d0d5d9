"""CLDR emoji annotations: the human-written short name and keywords of each emoji, per language.

``common/annotations/{lang}.xml`` holds names (``type="tts"``) and ``|``-separated keywords written
by CLDR contributors; ``common/annotationsDerived/{lang}.xml`` holds the names and keywords of
skin-tone and gender sequences, composed by CLDR from those. Keys are emoji sequences with U+FE0F
removed (as CLDR writes them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mmembed.errors import DataError, Location

VS16 = "\ufe0f"


@dataclass(frozen=True)
class Annotation:
    """One emoji's CLDR entry in one language."""

    name: str | None
    keywords: tuple[str, ...]
    derived: bool


def cldr_key(sequence: str) -> str:
    """The key CLDR uses for an emoji sequence: the sequence without variation selector 16."""
    return sequence.replace(VS16, "")


def load_annotations(cldr_root: Path, lang: str) -> dict[str, Annotation]:
    """Merge the plain and the derived annotation files of ``lang`` (plain entries win)."""
    merged: dict[str, Annotation] = {}
    for folder, derived in (("annotations", False), ("annotationsDerived", True)):
        for key, ann in _parse_file(cldr_root / folder / f"{lang}.xml", derived).items():
            merged.setdefault(key, ann)
    return merged


def _parse_file(path: Path, derived: bool) -> dict[str, Annotation]:
    if not path.is_file():
        raise DataError("CLDR annotation file not found", Location(file=str(path)))
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"malformed CLDR XML: {e}", Location(file=str(path))) from None
    names: dict[str, str] = {}
    keywords: dict[str, tuple[str, ...]] = {}
    for element in root.iter("annotation"):
        cp = element.get("cp")
        text = (element.text or "").strip()
        if not cp or not text:
            continue
        if element.get("type") == "tts":
            names[cp] = text
        else:
            keywords[cp] = tuple(k.strip() for k in text.split("|") if k.strip())
    return {key: Annotation(names.get(key), keywords.get(key, ()), derived) for key in sorted(names.keys() | keywords)}


def load_languages(cldr_root: Path, langs: tuple[str, ...]) -> Mapping[str, dict[str, Annotation]]:
    """``{lang: {key: Annotation}}`` for each requested language."""
    return {lang: load_annotations(cldr_root, lang) for lang in langs}
