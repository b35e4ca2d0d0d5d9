"""An M-BEIR directory with the real benchmark's file names, at toy size.

The 16 evaluation tasks of M-BEIR (file names and dataset ids as UniIR's configs give them), each
with a few colour queries that :class:`tests.toy.ToyEncoder` answers exactly; MSCOCO's val/test
queries scored against split-named pools (``mbeir_mscoco_task{0,3}_{split}_cand_pool.jsonl``) with
a split-less *decoy* pool beside them that holds none of their positives; images under
``mbeir_images/`` that live elsewhere and are linked in, as M-BEIR users keep the 169 GB archive.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from toy import COLOURS

from mmembed.data.layout import global_pool_file, local_pool_file, qrels_file, query_file
from mmembed.data.mbeir import write_candidates, write_qrels, write_queries
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.types import Candidate, Modality, Query, Task

#: (dataset, dataset id, task id) of M-BEIR's 16 evaluation tasks.
TASKS = (("visualnews", 0, 0), ("mscoco", 9, 0), ("fashion200k", 1, 0), ("webqa", 2, 1), ("edis", 3, 2),
         ("webqa", 2, 2), ("visualnews", 0, 3), ("mscoco", 9, 3), ("fashion200k", 1, 3), ("nights", 4, 4),
         ("oven", 5, 6), ("infoseek", 6, 6), ("fashioniq", 7, 7), ("cirr", 8, 7), ("oven", 5, 8),
         ("infoseek", 6, 8))
SPLIT_NAMED = ("mscoco",)  # UniIR: "MSCOCO is a special case, has separate pools for val and test"
COLOUR_NAMES = list(COLOURS)[:4]


def _record(kind: str, ident: str, colour: str, modality: Modality, image_dir: str, words: str):
    text = f"{words} {colour}" if modality.has_text else None
    image = f"{image_dir}/{colour}.png" if modality.has_image else None
    if kind == "query":
        return Query(ident, text, image, modality, ())
    return Candidate(ident, text, image, modality)


def _pool(dataset_id: int, task: Task, start: int, words: str) -> list[Candidate]:
    return [_record("cand", f"{dataset_id}:{start + n}", colour, task.cand_modality, "mbeir_images/pool", words)
            for n, colour in enumerate(COLOUR_NAMES)]


def build_real_layout(root: Path, images_elsewhere: Path, split: str = "test", link_images: bool = True) -> Path:
    """Write the directory (see the module docstring); images go to ``images_elsewhere``."""
    for sub in ("pool", "query"):
        (images_elsewhere / sub).mkdir(parents=True, exist_ok=True)
        for colour in COLOUR_NAMES:
            Image.new("RGB", (24, 24), COLOURS[colour]).save(images_elsewhere / sub / f"{colour}.png")
    root.mkdir(parents=True)
    if link_images:
        (root / "mbeir_images").symlink_to(images_elsewhere.resolve(), target_is_directory=True)
    union: list[Candidate] = []
    entries = []
    for n, (dataset, dataset_id, task_id) in enumerate(TASKS):
        task = Task.from_id(task_id)
        pool = _pool(dataset_id, task, 1000 * n, f"{dataset} item")
        queries = [Query(f"{dataset_id}:{100 * n + k}", q.text, q.image, task.query_modality, (pool[k].did,))
                   for k, colour in enumerate(COLOUR_NAMES)
                   for q in [_record("query", "", colour, task.query_modality, "mbeir_images/query", "find")]]
        write_queries(root / query_file(dataset, task_id, split), queries)
        write_qrels(root / qrels_file(dataset, task_id, split), {q.qid: {q.pos[0]: 1} for q in queries}, task_id)
        if dataset in SPLIT_NAMED:
            write_candidates(root / local_pool_file(dataset, task_id, split), pool)
            decoy = _pool(dataset_id, task, 1000 * n + 500, f"{dataset} other")
            write_candidates(root / local_pool_file(dataset, task_id), decoy)
        else:
            write_candidates(root / local_pool_file(dataset, task_id), pool)
        union.extend(pool)
        entries.append(InstructionEntry(dataset, dataset_id, task.query_modality, task.cand_modality,
                                        (f"Retrieve the {dataset} match.", f"Find the {dataset} candidate.")))
    write_candidates(root / global_pool_file(split), union)
    InstructionRegistry(entries).to_tsv(root / "instructions" / "query_instructions.tsv")
    return root
