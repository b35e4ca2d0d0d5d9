"""WordNet tasks: the M-BEIR ``wordnet`` dataset (id 11) and the BEIR text set ``beir/wordnet``.

Both use the SemCor-tagged senses of WordNet 3.0 and split by *word*: every sense of a lemma,
whatever its part of speech, is in the split the lemma hashes to, and a synset whose lemmas hash to
different splits gives no query (its entries stay in the pool as distractors).

- M-BEIR task 1 (reverse dictionary): definition -> the word entries ``"<lemma> (<pos>)"`` of the
  synset; every synonym in the synset is a positive.
- BEIR (sense retrieval): an example sentence -> the sense it illustrates, among documents that
  are senses (title = the synset's words, text = its definition). The sentence usually contains
  the word, so finding the word is easy; choosing its sense among the others with the same title
  is word sense disambiguation, which keeps the task far from saturated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from mmembed.data.beir import BeirDoc
from mmembed.data.bundled.specs import SPLITS, CandSpec, QuerySpec, TaskSpec, assign_splits, merge_queries
from mmembed.data.bundled.wordnet import Synset
from mmembed.types import Qrels, Task

DATASET = "wordnet"
DATASET_ID = 11
EVAL_CAP = 1000

PROMPTS = ("Retrieve the word that matches this dictionary definition.",
           "Find the word, with its part of speech, that this definition describes.",
           "Identify the English word defined by the given gloss.",
           "Given a dictionary definition, retrieve a word that has this meaning.")


def concept(lemma: str) -> str:
    return "word:" + lemma.casefold()


def _concepts(s: Synset) -> frozenset[str]:
    return frozenset(concept(lemma) for lemma in s.lemmas)


def entry_key(lemma: str, pos_name: str) -> str:
    return f"wn:{lemma.casefold()}|{pos_name}"


def reverse_dictionary(synsets: list[Synset]) -> tuple[dict[str, CandSpec], TaskSpec]:
    """Candidates (word entries) and the definition -> word task."""
    candidates: dict[str, CandSpec] = {}
    queries = []
    for s in synsets:
        keys = []
        for lemma in s.lemmas:
            key = entry_key(lemma, s.pos_name)
            cand = candidates.get(key)
            if cand is None:
                cand = candidates[key] = CandSpec(key, f"{lemma} ({s.pos_name})", None,
                                                  {"kind": "WordNet word entry", "lemma": lemma, "pos": s.pos_name,
                                                   "synsets": []}, frozenset({concept(lemma)}))
            cand.facts["synsets"].append(s.id)
            keys.append(key)
        if s.definition:
            queries.append(QuerySpec(s.definition, None, tuple(keys), _concepts(s), s.facts()))
    task = TaskSpec(DATASET, DATASET_ID, Task.from_id(1), "definition -> word",
                    "Query: the definition of a SemCor-tagged WordNet synset. Positives: the entry "
                    "'<lemma> (<part of speech>)' of every word of the synset. The pool holds the entries of "
                    "every word of every tagged synset (all splits).",
                    PROMPTS, merge_queries(queries), sorted(candidates), cap={"val": EVAL_CAP, "test": EVAL_CAP})
    return candidates, task


@dataclass
class BeirBuild:
    """The BEIR sense-retrieval set, ready to write."""

    corpus: list[BeirDoc]
    queries: list[tuple[str, str]]
    qrels: dict[str, Qrels]
    dropped: dict[str, int] = field(default_factory=dict)


BEIR_SPLIT_NAMES = {"train": "train", "val": "dev", "test": "test"}


def sense_retrieval(synsets: list[Synset]) -> BeirBuild:
    """Example sentence -> the synset it illustrates; split by word like the M-BEIR task."""
    corpus = [BeirDoc(s.id, ", ".join(s.lemmas), s.definition) for s in synsets]
    specs = [QuerySpec(example, None, (s.id,), _concepts(s), {"synset": s.id})
             for s in synsets for example in s.examples]
    holder = TaskSpec(DATASET, DATASET_ID, Task.from_id(1), "", "", (), merge_queries(specs), [],
                      cap={"val": EVAL_CAP, "test": EVAL_CAP})
    by_split = assign_splits(holder)
    queries: list[tuple[str, str]] = []
    qrels: dict[str, Qrels] = defaultdict(dict)
    n = 0
    for split in SPLITS:
        for q in by_split[split]:
            n += 1
            query_id = f"wnq{n}"
            queries.append((query_id, q.text or ""))
            qrels[BEIR_SPLIT_NAMES[split]][query_id] = {doc_id: 1 for doc_id in q.positives}
    return BeirBuild(corpus, queries, dict(qrels), holder.dropped)
