"""``DATASHEET.md``: what the bundled benchmark is, where every part comes from, and its limits.

Written next to the data at build time from the same objects the build used, so the counts and
versions it states are those of the files beside it. It contains no time or path, so it is as
reproducible as the data.
"""

from __future__ import annotations

from mmembed.data.bundled.sources import APT_INSTALL, PIP_INSTALL, Sources
from mmembed.data.bundled.specs import SPLIT_SHARES, TaskSpec
from mmembed.data.bundled.wordnet_tasks import EVAL_CAP, BeirBuild

USES = {
    "fonts-noto-color-emoji": "NotoColorEmoji.ttf: every emoji image, rendered at its 109 px strike on 136x128 "
                              "white canvases",
    "unicode-cldr-core": "common/annotations and common/annotationsDerived (en, fr, es, de, ja): short names "
                         "and keywords of each emoji, written by CLDR contributors",
    "wordnet-base": "WordNet 3.0 data.* and index.* files: synsets, definitions, example sentences, SemCor "
                    "tag counts",
    "emoji": "emoji.EMOJI_DATA: the list of fully-qualified emoji sequences and their Emoji versions",
}


def _sources_table(src: Sources) -> str:
    rows = ["| package | registry | version | licence | used for |", "|---|---|---|---|---|"]
    rows += [f"| {p.name} | {p.registry} | {p.version} | {p.licence} | {USES.get(p.name, '')} |" for p in src.packages]
    return "\n".join(rows)


def _task_section(specs: list[TaskSpec]) -> str:
    parts = []
    for s in specs:
        dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(s.dropped.items()) if n) or "none"
        parts.append(f"### {s.dataset} task{s.task.id} ({s.task.arrow}): {s.title}\n\n{s.how}\n\n"
                     f"Instructions (one drawn per query): " + " / ".join(f"\"{p}\"" for p in s.prompts) +
                     f"\n\nQueries left out: {dropped}.\n")
    return "\n".join(parts)


def _beir_section(sense: BeirBuild) -> str:
    counts = ", ".join(f"{split} {len(q):,}" for split, q in sorted(sense.qrels.items()))
    dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(sense.dropped.items()) if n) or "none"
    return (f"`beir/wordnet/`: corpus {len(sense.corpus):,} senses (title = the synset's words, text = its "
            f"definition); queries judged per split: {counts}; left out: {dropped}. A query is an example "
            "sentence from WordNet; its relevant document is the sense it illustrates (every sense that has "
            "this exact sentence). The sentence usually contains the word, so lexical matching finds the "
            "word, but the corpus holds every sense of that word under the same title: picking the right "
            "one is word sense disambiguation. Main metric nDCG@10.")


def render(src: Sources, subset: bool, specs: list[TaskSpec], sense: BeirBuild, table: str,
           builder_version: str) -> str:
    train, val, test = SPLIT_SHARES
    kind = "SUBSET build (a small version for tests; same code, fewer concepts)" if subset else "full build"
    return f"""# Datasheet: the mmembed bundled benchmark

{kind}; builder version {builder_version}. Rebuild with `mmembed.data.bundled.build(out_dir)`.

## Why it exists

The real M-BEIR (about 169 GB) cannot be had on the machines this project runs on. This benchmark
is real data written by people outside the project, shipped inside registry packages, arranged in
the exact M-BEIR layout so that every tool that reads M-BEIR reads it, covering all three query
modalities and all three candidate modalities (M-BEIR tasks 0, 1, 2, 3, 4, 6, 7, 8). Emoji are a
narrow visual domain: numbers on it say whether the code works and learns, not how a model does
on natural photographs.

## Sources

{_sources_table(src)}

Install: `{APT_INSTALL}` and `{PIP_INSTALL}`. Licences are read from the packages' copyright
files and metadata; CLDR data is under the Unicode licence (Unicode-DFS-2016), the emoji images
under the font's licences (OFL 1.1 / Apache 2.0), WordNet under the WordNet 3.0 licence
(Princeton). Keep these notices when redistributing the built files.

Emoji in the benchmark: fully-qualified sequences listed by `emoji` that have a CLDR short name in
all five languages and that the font draws as one glyph (newer emoji lack CLDR names in this
CLDR version and are left out). WordNet: the synsets that are a SemCor-tagged sense of some word
(the senses people actually use).

## Dataset ids

emoji = 10, wordnet = 11 (M-BEIR's own datasets use 0-9). Ids are `"{{dataset_id}}:{{n}}"`.
`query_src_content` / `src_content` hold the source facts as JSON (code points, CLDR key, language,
synset offset, ...) and the `concepts` that decided the split.

## Splits

Split by concept, never by query: a concept is all skin-tone, gender-sign and gendered-person
variants of one emoji together with the sequences CLDR names after it ("kiss: woman, man" with
"kiss"), and for WordNet one word (case-folded, any part of speech). A hash of the concept puts it
in train, val or test ({train:.0%} / {val:.0%} / {test:.0%} of concepts). A query whose positives
or source span concepts of different splits is left out. val and test keep at most {EVAL_CAP:,}
queries per task (the ones with the smallest hash), train keeps all.

Candidate pools: each task's local pool holds all its candidates of all splits (train concepts are
distractors at test time). `mbeir_union_test_cand_pool.jsonl` and `mbeir_union_val_cand_pool.jsonl`
are the union of all local pools, each did once, mixing text, image and image+text candidates (an
emoji's image, its image+name entry and its name texts are all there, so modality confusion is
measurable). `mbeir_union_train_cand_pool.jsonl` keeps only candidates with a train concept (for
hard-negative mining); it holds every train positive.

## Tasks and counts

{table}
Positives come only from the sources: CLDR says which names and keywords belong to which emoji,
the code points say how a sequence is built, WordNet says which words form a synset and which
sentence illustrates which sense.

{_task_section(specs)}
## BEIR text set

{_beir_section(sense)}

## Known limits

- One rendering per emoji (one font): image -> image tasks test structure (modifiers removed or
  changed), not robustness to style. Query images of tasks 4 and 7 are candidates of the same pool
  (the unchanged emoji is a natural hard negative, as the reference image is in CIRR).
- Exact skin tone is the hard case for image features: the five tones of an emoji differ only in
  colour, and tasks 3, 7 and 8 make them each other's hard negatives.
- Names in annotationsDerived (skin-tone and gender sequences) are composed by CLDR from
  human-written parts; they are CLDR's published names, not ours.
- Task 8 shows one ZWJ part as the image; that part's own concept may lie in another split (the
  split follows the joined emoji, the thing retrieved).
- Everything is English-centred except the CLDR names in fr, es, de and ja.
"""
