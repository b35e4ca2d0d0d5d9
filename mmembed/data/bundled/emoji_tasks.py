"""The eight emoji tasks (dataset ``emoji``, id 10): every M-BEIR modality pair except task 5.

Relevance always follows from the sources: CLDR names and keywords say which text belongs to which
emoji, and the code points of a sequence say how it is built (skin tone, gender sign, ZWJ parts).
Candidates are shared between tasks: one image, one image+name entry per emoji, and one text
candidate per distinct name string (so that two languages spelling a name alike give one text,
not two identical candidates of which one would count as a false negative).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping

from mmembed.data.bundled.catalog import (
    FOREIGN,
    GENDER_SIGNS,
    LANGUAGE_NAMES,
    LANGUAGES,
    Emoji,
    EmojiCatalog,
    default_key,
    strip_tones,
    zwj_parts,
)
from mmembed.data.bundled.specs import CandSpec, QuerySpec, TaskSpec, merge_queries
from mmembed.types import Task

DATASET = "emoji"
DATASET_ID = 10
#: A keyword query is kept only when the source gives it at most this many positive emoji.
MAX_KEYWORD_POSITIVES = 20
#: Most queries per split for val and test.
EVAL_CAP = 1000

PROMPTS: dict[int, tuple[str, ...]] = {
    0: ("Retrieve the emoji image that matches this keyword.",
        "Find an emoji picture that this keyword describes.",
        "Identify the emoji image associated with the given keyword.",
        "Show me an emoji image that can be described by this word."),
    1: ("Retrieve the English name of the emoji that has this name in another language.",
        "Translate this emoji name into the English name of the same emoji.",
        "Find the English short name of the emoji named here in another language.",
        "Match this foreign-language emoji name to its English emoji name."),
    2: ("Retrieve the emoji, with its name, that is described by all of these keywords.",
        "Find the emoji image and name that match this list of keywords.",
        "Identify the emoji, shown with its name, that these keywords describe.",
        "Given these keywords, retrieve the emoji picture and its name."),
    3: ("Retrieve the English name of the emoji in this image.",
        "Find the short name of the emoji shown in the picture.",
        "Identify this emoji image by its English name.",
        "What is the name of the emoji in this image? Retrieve it."),
    4: ("Retrieve the default version of this emoji, without skin tone or gender.",
        "Find the plain emoji image from which this variant was made.",
        "Identify the base emoji image of this skin-tone or gender variant.",
        "Given this emoji variant, retrieve its unmodified default emoji image."),
    6: ("Retrieve the answer to the question about this emoji image.",
        "Answer the question about the emoji shown, by retrieving the right name.",
        "Find the name the question asks for, for the emoji in this image.",
        "Given the emoji image and the question, retrieve the correct answer text."),
    7: ("Retrieve the emoji image that is this emoji with the skin tone named in the text.",
        "Change the skin tone of this emoji as described and find the resulting emoji image.",
        "Find the emoji image that matches this emoji after applying the given skin tone.",
        "Apply the skin tone in the text to this emoji and retrieve the resulting image."),
    8: ("Retrieve the emoji, with its name, that combines this emoji with the one named in the text.",
        "Find the emoji image and name formed by joining this emoji with the named emoji.",
        "Identify the combined emoji, shown with its name, made of this image and the text.",
        "Given an emoji and the name of another, retrieve the emoji sequence that joins them."),
}

QUESTIONS = {lang: f"What is this emoji called in {LANGUAGE_NAMES[lang]}?" for lang in FOREIGN}


class EmojiTaskBuilder:
    """Builds the emoji candidates and tasks from a catalog of member emoji.

    ``parts`` is the whole catalog, used only to look up the ZWJ parts shown in task-8 queries
    (a part may lie outside a subset build's members).
    """

    def __init__(self, members: EmojiCatalog, parts: EmojiCatalog, tone_names: Mapping[str, str]):
        self.members = members
        self.parts = parts
        self.tone_names = tone_names
        self.candidates: dict[str, CandSpec] = {}
        self.images: dict[str, str] = {}  # image path -> emoji sequence to render

    # --- candidates -----------------------------------------------------------------------------

    def _concepts(self, e: Emoji) -> frozenset[str]:
        return frozenset({self.members.concept(e)})

    def image(self, e: Emoji) -> str:
        self.images[e.image_path] = e.sequence
        return e.image_path

    def image_cand(self, e: Emoji) -> str:
        key = "img:" + e.codepoints
        if key not in self.candidates:
            self.candidates[key] = CandSpec(key, None, self.image(e), {**e.facts(), "kind": "emoji image"},
                                            self._concepts(e))
        return key

    def entry_cand(self, e: Emoji) -> str:
        key = "it:" + e.codepoints
        if key not in self.candidates:
            self.candidates[key] = CandSpec(key, e.name, self.image(e), {**e.facts(), "kind": "emoji image and name"},
                                            self._concepts(e))
        return key

    def name_cand(self, e: Emoji, lang: str) -> str:
        text = e.names[lang]
        key = "name:" + text
        cand = self.candidates.get(key)
        fact = {"lang": lang, "emoji": e.sequence, "codepoints": e.unicode, "cldr_key": e.key}
        if cand is None:
            self.candidates[key] = CandSpec(key, text, None, {"kind": "CLDR short name", "names": [fact]},
                                            self._concepts(e))
        elif fact not in cand.facts["names"]:
            cand.facts["names"].append(fact)
            cand.concepts = cand.concepts | self._concepts(e)
        return key

    # --- tasks ----------------------------------------------------------------------------------

    def task(self, task_id: int, title: str, how: str, queries: list[QuerySpec], pool: list[str],
             dropped: dict[str, int] | None = None) -> TaskSpec:
        return TaskSpec(DATASET, DATASET_ID, Task.from_id(task_id), title, how, PROMPTS[task_id],
                        merge_queries(queries), sorted(set(pool)), cap={"val": EVAL_CAP, "test": EVAL_CAP},
                        dropped=dict(dropped or {}))

    def build(self) -> list[TaskSpec]:
        emojis = self.members.emojis
        images = [self.image_cand(e) for e in emojis]
        entries = [self.entry_cand(e) for e in emojis]
        english = [self.name_cand(e, "en") for e in emojis]
        foreign = [self.name_cand(e, lang) for e in emojis for lang in FOREIGN]
        return [self.keyword_to_image(images), self.foreign_to_english(english), self.keywords_to_entry(entries),
                self.image_to_name(english), self.variant_to_default(images), self.image_question(foreign),
                self.tone_change(images), self.zwj_compose(entries)]

    def keyword_to_image(self, pool: list[str]) -> TaskSpec:
        index = self._keyword_index()
        queries, too_general = [], 0
        for keyword, keys in sorted(index.items()):
            if len(keys) > MAX_KEYWORD_POSITIVES:
                too_general += 1
                continue
            hits = [self.members.by_key[k] for k in sorted(keys)]
            queries.append(QuerySpec(keyword, None, tuple(self.image_cand(e) for e in hits),
                                     frozenset().union(*(self._concepts(e) for e in hits)),
                                     {"cldr_keyword_en": keyword, "emoji": [e.sequence for e in hits]}))
        return self.task(0, "keyword -> emoji image",
                         "Query: one English CLDR keyword. Positives: the image of every emoji whose English "
                         f"CLDR keyword list contains it (keywords with more than {MAX_KEYWORD_POSITIVES} emoji "
                         "are left out).", queries, pool,
                         {f"with more than {MAX_KEYWORD_POSITIVES} positives": too_general})

    def foreign_to_english(self, pool: list[str]) -> TaskSpec:
        queries, same = [], 0
        for e in self.members.emojis:
            for lang in FOREIGN:
                if e.names[lang].casefold() == e.name.casefold():
                    same += 1  # a name spelled as in English would be a string match, not a translation
                    continue
                queries.append(QuerySpec(e.names[lang], None, (self.name_cand(e, "en"),), self._concepts(e),
                                         {**e.facts(), "lang": lang, "cldr_name": e.names[lang]}))
        return self.task(1, "name in fr/es/de/ja -> English name",
                         "Query: the CLDR short name of an emoji in French, Spanish, German or Japanese. "
                         "Positive: the English CLDR short name of the same emoji. Names spelled as in English "
                         "are left out.", queries, pool, {"spelled as in English": same})

    def keywords_to_entry(self, pool: list[str]) -> TaskSpec:
        queries, too_general, only_name = [], 0, 0
        for lang in LANGUAGES:
            index = self._keyword_index(lang)
            for e in self.members.emojis:
                name_words = set(_words(e.names[lang]))
                words = [k for k in e.keywords_by_lang[lang] if not name_words & set(_words(k))]
                if not words:
                    only_name += 1
                    continue
                keys = set.intersection(*(index[k] for k in words))
                if len(keys) > MAX_KEYWORD_POSITIVES:
                    too_general += 1
                    continue
                hits = [self.members.by_key[k] for k in sorted(keys)]
                queries.append(QuerySpec(", ".join(words), None, tuple(self.entry_cand(h) for h in hits),
                                         frozenset().union(*(self._concepts(h) for h in hits)),
                                         {"lang": lang, "cldr_keywords": words, "from_emoji": e.sequence,
                                          "emoji": [h.sequence for h in hits]}))
        return self.task(2, "keyword list (en/fr/es/de/ja) -> emoji image + English name",
                         "Query: the CLDR keywords of an emoji in one of en, fr, es, de, ja that share no word "
                         "with its name in that language (so the name cannot be matched word for word). "
                         "Positives: the image+English-name entry of every emoji whose keyword list in that "
                         "language contains all of them.", queries, pool,
                         {"with only keywords repeating the name": only_name,
                          f"with more than {MAX_KEYWORD_POSITIVES} positives": too_general})

    def image_to_name(self, pool: list[str]) -> TaskSpec:
        queries = [QuerySpec(None, self.image(e), (self.name_cand(e, "en"),), self._concepts(e), e.facts())
                   for e in self.members.emojis]
        return self.task(3, "emoji image -> English name",
                         "Query: an emoji image. Positive: its English CLDR short name (skin-tone and gender "
                         "variants have their own names, so the other variants are hard negatives).", queries, pool)

    def variant_to_default(self, pool: list[str]) -> TaskSpec:
        queries = []
        for e in self.members.emojis:
            base = default_key(e.key)
            if base != e.key and base in self.members:
                d = self.members.by_key[base]
                queries.append(QuerySpec(None, self.image(e), (self.image_cand(d),), self._concepts(e),
                                         {**e.facts(), "default": d.facts()}))
        return self.task(4, "variant image -> default emoji image",
                         "Query: the image of a skin-tone, gender-sign or gendered-person variant. Positive: the "
                         "image of the sequence left when its modifiers are removed (no skin tone, no gender "
                         "sign, gender-neutral person), which is a listed emoji.", queries, pool)

    def image_question(self, pool: list[str]) -> TaskSpec:
        queries = [QuerySpec(QUESTIONS[lang], self.image(e), (self.name_cand(e, lang),), self._concepts(e),
                             {**e.facts(), "lang": lang, "answer": e.names[lang]})
                   for e in self.members.emojis for lang in FOREIGN]
        return self.task(6, "emoji image + 'what is it called in <language>?' -> that name",
                         "Query: an emoji image and the question what it is called in French, Spanish, German "
                         "or Japanese. Positive: the CLDR short name in that language. The pool holds the names "
                         "in all four languages, so the other languages' names are hard negatives.", queries, pool)

    def tone_change(self, pool: list[str]) -> TaskSpec:
        families: dict[str, list[Emoji]] = defaultdict(list)
        for e in self.members.emojis:
            if len(set(e.tones)) <= 1:
                families[strip_tones(e.key)].append(e)
        queries = []
        for members in families.values():
            for target in members:
                if not target.tones:
                    continue
                tone = target.tones[0]
                for source in members:
                    if source is target or (source.tones and source.tones[0] == tone):
                        continue
                    queries.append(QuerySpec(self.tone_names[tone], self.image(source), (self.image_cand(target),),
                                             self._concepts(target),
                                             {"source": source.facts(), "target": target.facts(),
                                              "modifier": f"U+{ord(tone):04X}"}))
        return self.task(7, "emoji image + skin tone -> variant image (composed)",
                         "Query: the image of an emoji (default or one skin tone) and the CLDR name of another "
                         "skin tone. Positive: the image of the sequence with that skin tone modifier instead. "
                         "The other tones of the same emoji are hard negatives.", queries, pool)

    def zwj_compose(self, pool: list[str]) -> TaskSpec:
        queries = []
        for target in self.members.emojis:
            parts = zwj_parts(target.key)
            if len(parts) != 2 or not all(p in self.parts for p in parts):
                continue
            first, second = (self.parts.by_key[p] for p in parts)
            pairs = [(first, second)]
            if "\u200d" + second.key not in GENDER_SIGNS:
                pairs.append((second, first))
            for shown, named in pairs:
                queries.append(QuerySpec(named.name, self.image(shown), (self.entry_cand(target),),
                                         self._concepts(target),
                                         {"target": target.facts(), "image_part": shown.facts(),
                                          "text_part": named.facts()}))
        return self.task(8, "emoji image + name of another -> joined emoji image + name",
                         "Query: the image of one part of a two-part ZWJ sequence and the English name of the "
                         "other part. Positive: the image+name entry of the sequence that joins them.",
                         queries, pool)

    def _keyword_index(self, lang: str = "en") -> dict[str, set[str]]:
        index: dict[str, set[str]] = defaultdict(set)
        for e in self.members.emojis:
            for keyword in e.keywords_by_lang[lang]:
                index[keyword].add(e.key)
        return index


def _words(text: str) -> list[str]:
    """Case-folded words of a name or keyword, for telling whether a keyword repeats the name."""
    return re.findall(r"\w+", text.casefold())
