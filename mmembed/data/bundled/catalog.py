"""The emoji catalog: every fully-qualified emoji that has CLDR names, with its structure.

An emoji enters the catalog when the ``emoji`` package lists it as fully qualified and CLDR gives
it a short name in every language the tasks use. Its structure comes from its code points only:
skin-tone modifiers (U+1F3FB..U+1F3FF), the ZWJ gender signs, the person code points, and the
ZWJ-joined parts. Concepts (the unit kept in one split) group all variants of one base emoji.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mmembed.data.bundled.cldr import Annotation, cldr_key

log = logging.getLogger(__name__)

ZWJ = "\u200d"
TONES = tuple(chr(c) for c in range(0x1F3FB, 0x1F400))
GENDER_SIGNS = (ZWJ + "\u2640", ZWJ + "\u2642")  # female sign, male sign (FE0F already removed)
#: Gendered person code points and their gender-neutral counterparts (Unicode's own pairing).
NEUTRAL_PERSON = {"\U0001F468": "\U0001F9D1", "\U0001F469": "\U0001F9D1",  # man, woman -> person
                  "\U0001F466": "\U0001F9D2", "\U0001F467": "\U0001F9D2",  # boy, girl -> child
                  "\U0001F474": "\U0001F9D3", "\U0001F475": "\U0001F9D3"}  # old man/woman -> older person
#: Languages whose CLDR names the tasks use; English first.
LANGUAGES = ("en", "fr", "es", "de", "ja")
FOREIGN = LANGUAGES[1:]
LANGUAGE_NAMES = {"en": "English", "fr": "French", "es": "Spanish", "de": "German", "ja": "Japanese"}


@dataclass(frozen=True)
class Emoji:
    """One fully-qualified emoji with its CLDR names (per language) and English keywords."""

    sequence: str
    names: Mapping[str, str]
    keywords_by_lang: Mapping[str, tuple[str, ...]]
    version: float

    @property
    def key(self) -> str:
        return cldr_key(self.sequence)

    @property
    def codepoints(self) -> str:
        """Lower-case hex code points joined by ``-``: the image file stem, e.g. ``1f44d-1f3fd``."""
        return "-".join(f"{ord(c):x}" for c in self.sequence)

    @property
    def unicode(self) -> str:
        return " ".join(f"U+{ord(c):04X}" for c in self.sequence)

    @property
    def name(self) -> str:
        return self.names["en"]

    @property
    def keywords(self) -> tuple[str, ...]:
        """The English CLDR keywords."""
        return self.keywords_by_lang["en"]

    @property
    def image_path(self) -> str:
        return f"images/emoji/{self.codepoints}.png"

    @property
    def tones(self) -> tuple[str, ...]:
        return tuple(c for c in self.key if c in TONES)

    def facts(self) -> dict:
        """Source facts recorded in ``src_content``."""
        return {"emoji": self.sequence, "codepoints": self.unicode, "cldr_key": self.key,
                "cldr_name_en": self.name, "emoji_version": self.version}


def strip_tones(key: str) -> str:
    return "".join(c for c in key if c not in TONES)


def strip_gender_signs(key: str) -> str:
    for sign in GENDER_SIGNS:
        key = key.replace(sign, "")
    return key


def default_key(key: str) -> str:
    """The default form of a sequence: no skin tone, no gender sign, a gender-neutral lead person.

    This is what remains of the sequence once its modifiers are removed (``🏃🏽‍♀`` -> ``🏃``,
    ``👨‍🚀`` -> ``🧑‍🚀``); it is a real emoji only when the catalog has it.
    """
    base = strip_gender_signs(strip_tones(key))
    if ZWJ in base and base[0] in NEUTRAL_PERSON:
        base = NEUTRAL_PERSON[base[0]] + base[1:]
    return base


def family_key(key: str) -> str:
    """A key shared by all gender and skin-tone variants, with every person code point neutral."""
    return "".join(NEUTRAL_PERSON.get(c, c) for c in strip_gender_signs(strip_tones(key)))


def zwj_parts(key: str) -> list[str]:
    return key.split(ZWJ)


def _is_flag_or_keycap(key: str) -> bool:
    return any(0x1F1E6 <= ord(c) <= 0x1F1FF or 0xE0020 <= ord(c) <= 0xE007F or c == "\u20e3" for c in key)


def _name_head(e: Emoji) -> str:
    """The base name of a sequence (``"kiss: woman, man"`` -> ``"kiss"``); flags and keycaps keep theirs."""
    if len(e.key) > 1 and ":" in e.name and not _is_flag_or_keycap(e.key):
        return e.name.split(":", 1)[0].strip()
    return e.name


class EmojiCatalog:
    """The emoji of the benchmark, sorted by code points, with lookup by CLDR key and concept."""

    def __init__(self, emojis: Iterable[Emoji], concepts: Mapping[str, str] | None = None):
        self.emojis = sorted(emojis, key=lambda e: tuple(ord(c) for c in e.sequence))
        self.by_key = {e.key: e for e in self.emojis}
        self.concepts = dict(concepts) if concepts is not None else _group_concepts(self.emojis)

    def __len__(self) -> int:
        return len(self.emojis)

    def __contains__(self, key: str) -> bool:
        return key in self.by_key

    def concept(self, e: Emoji) -> str:
        return self.concepts[e.key]

    def restrict(self, keep: set[str]) -> EmojiCatalog:
        """A catalog of the emoji whose keys are in ``keep``, concepts kept as computed on the whole."""
        return EmojiCatalog([e for e in self.emojis if e.key in keep],
                            {k: v for k, v in self.concepts.items() if k in keep})


def _group_concepts(emojis: list[Emoji]) -> dict[str, str]:
    """Union-find over shared family keys and shared base names; the concept id is its smallest family key.

    Two emoji are one concept when they differ only in skin tone, gender sign or gendered person code
    points, or when CLDR names a sequence after a base emoji (``"kiss: woman, man"`` and ``"kiss"``).
    """
    parent = {e.key: e.key for e in emojis}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_by: dict[str, str] = {}
    for e in emojis:
        for label in ("family:" + family_key(e.key), "name:" + _name_head(e)):
            if label in first_by:
                union(first_by[label], e.key)
            else:
                first_by[label] = e.key
    members: dict[str, list[str]] = {}
    for e in emojis:
        members.setdefault(find(e.key), []).append(e.key)
    concept: dict[str, str] = {}
    for keys in members.values():
        name = "emoji:" + min(family_key(k) for k in keys)
        for k in keys:
            concept[k] = name
    return concept


def build_catalog(emoji_data: Mapping[str, dict], annotations: Mapping[str, Mapping[str, Annotation]],
                  fully_qualified: int) -> EmojiCatalog:
    """The catalog from ``emoji.EMOJI_DATA`` and the CLDR annotations of :data:`LANGUAGES`."""
    kept, missing = [], 0
    for sequence, info in emoji_data.items():
        if info.get("status") != fully_qualified:
            continue
        key = cldr_key(sequence)
        names = {lang: annotations[lang].get(key) for lang in LANGUAGES}
        if any(a is None or not a.name for a in names.values()):
            missing += 1
            continue
        kept.append(Emoji(sequence, {lang: a.name for lang, a in names.items()},
                          {lang: a.keywords for lang, a in names.items()}, float(info.get("E", 0))))
    log.info("emoji catalog: %d fully-qualified emoji with CLDR names; %d without (newer than CLDR)",
             len(kept), missing)
    return EmojiCatalog(kept)
