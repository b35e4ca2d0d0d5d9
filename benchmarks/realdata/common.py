"""What the real-data builders share: seeded splits and roles, English checks, PNG files, writing.

Every builder describes its data as the bundled benchmark's task specs (candidates by key, queries
by the keys of their positives, splits decided by hashed *concepts*) and writes them with the
library's own writers, so the layout, numbering and leak checks are the bundled benchmark's.

Splits are per image: each image is one concept (see :func:`image_concept`), so the seed
changes the draw and a query whose positives are images of one split lands in that split.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mmembed.data.bundled.builder import _write_global_pools, _write_instructions
from mmembed.data.bundled.specs import SPLITS, CandSpec, TaskSpec, fraction, split_of
from mmembed.data.bundled.writer import WrittenDataset, write_dataset
from mmembed.data.layout import global_pool_file, local_pool_file
from mmembed.data.mbeir import read_candidates, write_candidates
from mmembed.errors import MissingDependencyError
from mmembed.fileio import atomic_directory, write_json
from mmembed.types import Candidate

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
SUMMARY = "realdata_summary.json"
#: Words WordNet leaves out but English titles are full of.
FUNCTION_WORDS = frozenset((
    "a", "an", "the", "of", "and", "or", "with", "without", "in", "on", "at", "to", "for", "from", "by", "as",
    "is", "are", "be", "this", "that", "these", "those", "it", "its", "his", "her", "their", "my", "our", "your",
    "some", "any", "no", "not", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))


#: Share of images per split (train, val, test): a larger val share than the bundled benchmark's
#: 10 %, because these sets are small and the recipe chooses its final stage on val.
SPLIT_SHARES = (0.65, 0.15, 0.2)


def split_concept(base: str, split: str) -> str:
    """The first concept name ``"{base}#{n}"`` that the library's writer puts in ``split``.

    The writer splits by hashing concepts with fixed shares (70 / 10 / 20 %); naming the concept
    this way lets a builder choose the split itself (its own shares and seed).
    """
    n = 0
    while split_of(f"{base}#{n}") != split:
        n += 1
    return f"{base}#{n}"


def image_concept(dataset: str, seed: int, key: str) -> str:
    """The split concept of one image (or of a group of images that must share a split): a seeded
    draw with :data:`SPLIT_SHARES`."""
    base = f"{dataset}:s{seed}:{key}"
    x = fraction(base, "realdata-split")
    split = SPLITS[0] if x < SPLIT_SHARES[0] else SPLITS[1] if x < SPLIT_SHARES[0] + SPLIT_SHARES[1] else SPLITS[2]
    return split_concept(base, split)


def image_split(dataset: str, seed: int, key: str) -> str:
    return split_of(image_concept(dataset, seed, key))


def seeded_order(keys, seed: int, salt: str) -> list:
    """``keys`` in a seeded pseudo-random order (a hash per key, so no global RNG state)."""
    return sorted(keys, key=lambda k: (fraction(f"{salt}:{seed}:{k}"), k))


def english_lexicon() -> frozenset[str]:
    """Every word of WordNet 3.0's index and exception lists, lower-cased (Debian ``wordnet-base``)."""
    return _lexicon(WORDNET_DIR)


@lru_cache(maxsize=2)
def _lexicon(wordnet_dir: Path) -> frozenset[str]:
    words: set[str] = set(FUNCTION_WORDS)
    index = sorted(wordnet_dir.glob("index.*")) + sorted(wordnet_dir.glob("*.exc"))
    if not any(p.name.startswith("index.") for p in index):
        raise MissingDependencyError(f"the English word check needs WordNet's index files in {wordnet_dir}; "
                                     "install them with: apt-get install wordnet-base")
    for path in index:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" "):  # the licence header of index files
                continue
            for form in line.split()[:2] if path.suffix == ".exc" else line.split()[:1]:
                words.update(form.lower().split("_"))
    return frozenset(words)


_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def english_share(text: str) -> tuple[int, float]:
    """(number of words, share of them that are English words) of ``text``."""
    lexicon = english_lexicon()
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return 0, 0.0
    known = sum(w in lexicon or w.rstrip("s") in lexicon or w.removesuffix("'s") in lexicon for w in words)
    return len(words), known / len(words)


def png_bytes(image) -> bytes:
    """PNG bytes without metadata, so equal pixels give equal files on every run."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


@dataclass
class DatasetSpec:
    """One M-BEIR dataset of a build: its candidates and tasks."""

    name: str
    dataset_id: int
    candidates: dict[str, CandSpec]
    tasks: list[TaskSpec]


def write_build(out: Path, images: dict[str, bytes], datasets: list[DatasetSpec], facts: dict, *,
                split_pools: bool = False) -> dict:
    """Write images, queries, pools, qrels and instructions into ``out`` (replaced as a whole).

    Pools are the bundled benchmark's, global pools of every candidate (val, test) or of the train
    candidates (train), and one local pool per task for val and test; the train split gets
    split-named local pools of train candidates only, so that nothing a training step reads holds
    a val or test image. ``split_pools`` gives val and test pools of their own candidates only too
    (split-named local pools, as MSCOCO's in M-BEIR): what a class-label set needs, where a train
    image of the query's class would otherwise be a false negative in the test pool. Returns the
    summary (counts per task and split, and ``facts``), also saved as :data:`SUMMARY` beside the
    data.
    """
    with atomic_directory(out) as stage:
        for rel, data in sorted(images.items()):
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        written = [write_dataset(stage, d.name, d.dataset_id, d.candidates, d.tasks) for d in datasets]
        _write_global_pools(stage, written)
        _write_split_pools(stage, datasets, written, SPLITS if split_pools else ("train",))
        _write_instructions(stage, [t for d in datasets for t in d.tasks])
        summary = {"facts": facts, "images": len(images), "split_pools": split_pools,
                   "queries": {name: counts for w in written for name, counts in w.counts.items()},
                   "dropped": {t.name: t.dropped for d in datasets for t in d.tasks if t.dropped}}
        write_json(stage / SUMMARY, summary)
    log.info("wrote %s: %s", out, json.dumps(summary["queries"]))
    return summary


def _splits_of(candidate: Candidate) -> set[str]:
    """The splits a written candidate belongs to: those of its concepts (kept in ``src_content``)."""
    return {split_of(c) for c in json.loads(candidate.src_content or "{}").get("concepts", [])}


def _write_split_pools(stage: Path, datasets: list[DatasetSpec], written: list[WrittenDataset],
                       splits: tuple[str, ...]) -> None:
    """Global and split-named local pools of each of ``splits`` holding that split's candidates only."""
    union = [c for w in written for c in w.candidates.values()]
    for split in splits:
        write_candidates(stage / global_pool_file(split), (c for c in union if split in _splits_of(c)))
    for d in datasets:
        for t in d.tasks:
            pool = read_candidates(stage / local_pool_file(d.name, t.task.id))
            for split in splits:
                write_candidates(stage / local_pool_file(d.name, t.task.id, split),
                                 (c for c in pool if split in _splits_of(c)))
