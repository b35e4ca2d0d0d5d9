"""Numbering and writing one M-BEIR dataset (queries, qrels, local pools) from task specs.

Candidates are numbered in the order of their keys and queries in task, split and text order, so
ids depend only on the source data. Each record's ``src_content`` carries the source facts and
the concepts that decided its split, so that anyone can check the split for leaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmembed.data.bundled.specs import SPLITS, CandSpec, TaskSpec, assign_splits, split_of, src_json
from mmembed.data.layout import local_pool_file, qrels_file, query_file
from mmembed.data.mbeir import write_candidates, write_qrels, write_queries
from mmembed.errors import DataError
from mmembed.types import Candidate, Query


@dataclass
class WrittenDataset:
    """What a dataset contributed: its candidates by id, and which of them the train pool needs."""

    candidates: dict[str, Candidate] = field(default_factory=dict)
    train_dids: set[str] = field(default_factory=set)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def candidate_record(spec: CandSpec, did: str) -> Candidate:
    facts = {**spec.facts, "concepts": sorted(spec.concepts)}
    return Candidate(did=did, text=spec.text, image=spec.image, modality=spec.modality, src_content=src_json(facts))


def write_dataset(root: Path, dataset: str, dataset_id: int, candidates: dict[str, CandSpec],
                  tasks: list[TaskSpec]) -> WrittenDataset:
    """Write every task of one dataset under ``root``; return its candidates for the global pools."""
    used = sorted({key for t in tasks for key in t.pool})
    did_of = {key: f"{dataset_id}:{n}" for n, key in enumerate(used, start=1)}
    out = WrittenDataset()
    out.candidates = {did_of[k]: candidate_record(candidates[k], did_of[k]) for k in used}
    out.train_dids = {did_of[k] for k in used if any(split_of(c) == "train" for c in candidates[k].concepts)}
    next_qid = 1
    for task in sorted(tasks, key=lambda t: t.task.id):
        by_split = assign_splits(task)
        pool = set(task.pool)
        for split in SPLITS:
            queries = []
            for q in by_split[split]:
                missing = [p for p in q.positives if p not in pool]
                if missing:
                    raise DataError(f"{task.name}: positive {missing[0]!r} is not in the task's local pool")
                facts = {**q.facts, "concepts": sorted(q.concepts)}
                queries.append(Query(qid=f"{dataset_id}:{next_qid}", text=q.text, image=q.image, modality=q.modality,
                                     pos=tuple(did_of[p] for p in q.positives), src_content=src_json(facts)))
                next_qid += 1
            write_queries(root / query_file(dataset, task.task.id, split), queries)
            write_qrels(root / qrels_file(dataset, task.task.id, split),
                        {q.qid: {did: 1 for did in q.pos} for q in queries}, task.task.id)
            if split == "train":
                lost = {did for q in queries for did in q.pos} - out.train_dids
                if lost:
                    raise DataError(f"{task.name}: train positive {sorted(lost)[0]} has no train concept")
            out.counts.setdefault(task.name, {})[split] = len(queries)
        write_candidates(root / local_pool_file(dataset, task.task.id), (out.candidates[did_of[k]] for k in task.pool))
    return out
