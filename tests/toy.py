"""A tiny M-BEIR-format dataset with coloured-square images, and a deterministic toy encoder.

The encoder understands colour words and square colours, so its rankings are known in advance:
tests of the evaluation runner, index, CLI and service can assert exact results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mmembed.data.images import as_pil
from mmembed.data.layout import global_pool_file, local_pool_file, qrels_file, query_file
from mmembed.data.mbeir import write_candidates, write_qrels, write_queries
from mmembed.encoders.base import Item, l2_normalize, per_item_instructions
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.types import Candidate, Modality, Query

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "purple": (140, 40, 160), "orange": (250, 140, 20)}
DATASET, DATASET_ID = "toy", 10


class ToyEncoder:
    """Text -> hashed bag of words; image -> the vector of its nearest colour word."""

    encoder_id = "toy-encoder-v1"
    dim = 64

    def __init__(self):
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:4], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def _embed(self, item: Item, instruction: str | None) -> np.ndarray:
        vec = np.zeros(self.dim)
        if item.text:
            for word in item.text.lower().replace(".", " ").split():
                vec += self._word(word)
        if item.image is not None:
            pixel = np.asarray(as_pil(item.image, item.id)).reshape(-1, 3).mean(axis=0)
            name = min(COLOURS, key=lambda c: np.linalg.norm(pixel - np.array(COLOURS[c])))
            vec += 2 * self._word(name)
        if instruction and "image" in instruction:
            vec += 0.01 * self._word("instruction")
        return vec

    def encode_queries(self, queries: Sequence[Item], instruction=None, *, batch_size: int = 32,
                       show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        instructions = per_item_instructions(instruction, len(queries))
        return l2_normalize(np.stack([self._embed(q, i) for q, i in zip(queries, instructions)]))

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        return l2_normalize(np.stack([self._embed(c, None) for c in candidates]))


def make_toy_mbeir(root: Path) -> Path:
    """Write the toy dataset: t->i (task0), i->t (task3) and t->t (task1), test and train splits."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    images, names = [], []
    for n, (colour, rgb) in enumerate(COLOURS.items()):
        path = f"images/{colour}.png"
        Image.new("RGB", (32, 32), rgb).save(root / path)
        images.append(Candidate(f"{DATASET_ID}:{n}", None, path, Modality.IMAGE))
        names.append(Candidate(f"{DATASET_ID}:{100 + n}", f"a {colour} square", None, Modality.TEXT))
    colours = list(COLOURS)
    t2i = [Query(f"{DATASET_ID}:{n}", f"{c} colour", None, Modality.TEXT, (f"{DATASET_ID}:{n}",))
           for n, c in enumerate(colours)]
    i2t = [Query(f"{DATASET_ID}:{10 + n}", None, f"images/{c}.png", Modality.IMAGE, (f"{DATASET_ID}:{100 + n}",))
           for n, c in enumerate(colours)]
    t2t = [Query(f"{DATASET_ID}:{20 + n}", f"the {c} one", None, Modality.TEXT, (f"{DATASET_ID}:{100 + n}",))
           for n, c in enumerate(colours)]
    for task_id, queries, pool in ((0, t2i, images), (3, i2t, names), (1, t2t, names)):
        for split in ("train", "test"):
            write_queries(root / query_file(DATASET, task_id, split), queries)
            write_qrels(root / qrels_file(DATASET, task_id, split), {q.qid: {q.pos[0]: 1} for q in queries}, task_id)
        write_candidates(root / local_pool_file(DATASET, task_id), pool)
    for split in ("train", "test"):
        write_candidates(root / global_pool_file(split), images + names)
    registry = InstructionRegistry([
        InstructionEntry(DATASET, DATASET_ID, Modality.TEXT, Modality.IMAGE,
                         ("Find the image of this colour.", "Show me an image in this colour.")),
        InstructionEntry(DATASET, DATASET_ID, Modality.IMAGE, Modality.TEXT,
                         ("Name the colour of this square.", "Describe this square.")),
        InstructionEntry(DATASET, DATASET_ID, Modality.TEXT, Modality.TEXT,
                         ("Find the description of this colour.", "Retrieve the matching text.")),
    ])
    registry.to_tsv(root / "instructions" / "query_instructions.tsv")
    return root
