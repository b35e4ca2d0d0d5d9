"""Training examples from id-based rows: M-BEIR query files with their candidate pool, BEIR text sets.

A training row is a query plus the ids of its positives (and, after mining, hard negatives) in a
candidate pool. :class:`ContrastiveDataset` turns a row into a :class:`TrainingExample` for one
(epoch, step) — every random choice is a hash of (seed, epoch[, step], qid), so it does not depend
on worker order, on the number of processes, or on what was drawn before:

- one positive among the query's positives, per epoch;
- ``num_negatives`` hard negatives from ``neg_cand_list`` (without replacement), per epoch; a row
  mined with typed candidate sets (``neg_cand_sets`` + ``neg_cand_quota``, written by ``mmembed
  mine`` since format 2) instead draws its quota of each type afresh from the full set of that
  type each epoch, so training keeps meeting new hard negatives (the fixed ``neg_cand_list`` of
  older mining runs, or of ``typed_sets: false``, is used as before). When a
  query has fewer, ``negative_padding="random"`` (default) tops up with random candidates of the
  same pool group — same dataset id and modality as the task's targets for M-BEIR, the whole
  corpus for BEIR — that are not positives; ``"none"`` keeps fewer (batches become ragged, which
  the collator and loss handle);
- one instruction per query per step, from the instruction registry entry of (dataset id, query
  modality, candidate modality of the task); mode ``random`` / ``fixed`` / ``none``.

Ids: M-BEIR ids are globally unique (``"9:123"``) and used as they are; BEIR ids are prefixed with
the source name (``"msmarco:123"``), so two text corpora cannot collide in a mixed batch.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from mmembed.data.images import ImageStore
from mmembed.data.layout import TaskFiles, check_task_queries
from mmembed.data.mbeir import iter_candidates, read_queries
from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, DataError, Location
from mmembed.fileio import iter_jsonl
from mmembed.hashing import HashStream, stable_hash
from mmembed.instructions import INSTRUCTION_MODES, InstructionMode, InstructionRegistry
from mmembed.losses.contrastive import hash_ids, pack_key_sets
from mmembed.training.negatives import TypedSet, draw_typed, padding, sample
from mmembed.types import Modality, Task, dataset_id_of

logger = logging.getLogger(__name__)

NegativePadding = Literal["random", "none"]
NEGATIVE_PADDINGS = ("random", "none")


class ExampleKey(NamedTuple):
    """What a batch sampler hands the dataset: a row, and the epoch and global step it is drawn for."""

    row: int
    epoch: int
    step: int


@dataclass(frozen=True)
class TrainingExample:
    """One query with its instruction, its positive for this epoch and its hard negatives."""

    qid: str
    query: Item
    instruction: str | None
    positive: Item
    negatives: tuple[Item, ...]
    task_key: str
    #: Every positive id of the query: these are masked (not negatives) wherever they appear in the batch.
    positive_ids: frozenset[str]
    #: How many of ``negatives`` are random pool candidates padding a short negative list.
    num_padded: int
    epoch: int
    step: int


@dataclass(frozen=True)
class ResolvedIds:
    """The ids a row contributes to a batch in one epoch (what the batch sampler checks)."""

    qid: str
    positive: str
    negatives: tuple[str, ...]
    positives: frozenset[str]
    num_padded: int

    @property
    def candidates(self) -> tuple[str, ...]:
        return (self.positive, *self.negatives)


@dataclass(frozen=True)
class _Record:
    """An item as stored: text and image path only (source contents are dropped to save memory)."""

    text: str | None
    image: str | None
    modality: Modality


PoolGrouping = Literal["dataset_modality", "all"]


class CandidatePool:
    """Candidates by id, shared by the sources that reference it, with groups for random padding.

    ``grouping="dataset_modality"`` (M-BEIR) pads from candidates of the positive's dataset id and
    modality — the task's own local pool even when the pool file is the global one; ``"all"``
    (BEIR) pads from the whole pool.
    """

    def __init__(self, records: Mapping[str, _Record], grouping: PoolGrouping = "dataset_modality"):
        self._records = dict(records)
        self.grouping = grouping
        self._groups: dict | None = None

    @classmethod
    def from_mbeir(cls, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> CandidatePool:
        """Read one or several M-BEIR candidate-pool JSONL files (a duplicate did is an error)."""
        records: dict[str, _Record] = {}
        for path in [paths] if isinstance(paths, str | os.PathLike) else paths:
            for cand in iter_candidates(path):
                if cand.did in records:
                    raise DataError("duplicate candidate id", Location(str(path), None, "did", cand.did))
                records[cand.did] = _Record(cand.text, cand.image, cand.modality)
        return cls(records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, did: object) -> bool:
        return did in self._records

    def ids(self) -> list[str]:
        return list(self._records)

    def record(self, did: str) -> _Record:
        return self._records[did]

    def group(self, did: str) -> list[str]:
        """The ids padding may draw from for a query whose positive is ``did`` (pool-file order)."""
        if self._groups is None:
            self._groups = {}
            for other, rec in self._records.items():
                self._groups.setdefault(self._group_key(other, rec), []).append(other)
        return self._groups[self._group_key(did, self._records[did])]

    def _group_key(self, did: str, rec: _Record) -> tuple:
        return (dataset_id_of(did), rec.modality) if self.grouping == "dataset_modality" else ()



@dataclass(frozen=True)
class TrainingRow:
    qid: str
    text: str | None
    image: str | None
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    task_key: str
    #: Typed candidate sets drawn from each epoch instead of ``neg`` (empty: use ``neg``).
    neg_sets: tuple[TypedSet, ...] = ()


@dataclass
class TrainingSource:
    """Rows of one query file (or BEIR set) and the pool their ids refer to.

    ``group`` names the mixture component the source belongs to (sampler weights are per group);
    ``prompts`` maps each task key to its instruction prompts (absent: no instruction).
    """

    name: str
    rows: list[TrainingRow]
    pool: CandidatePool
    images: ImageStore | None = None
    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group: str = ""

    def __post_init__(self):
        self.group = self.group or self.name


def mbeir_source(queries: str | os.PathLike, pool: CandidatePool | str | os.PathLike | Sequence[str | os.PathLike],
                 images: ImageStore | str | os.PathLike | None, instructions: InstructionRegistry | None = None,
                 *, name: str | None = None, group: str = "mbeir", task_files: TaskFiles | None = None
                 ) -> TrainingSource:
    """A source from an M-BEIR query JSONL file and its pool (the task's local pool, or the global one).

    The task of each query follows from its modality and its first positive's modality; the task
    key is ``mbeir/{dataset_id}/task{N}`` (so the union file groups exactly like the task files).
    Dangling ids and queries without positives are errors naming file, field and qid; with
    ``task_files`` (a task's own file), so is a query whose modality does not fit that task.
    """
    path = Path(queries)
    pool = pool if isinstance(pool, CandidatePool) else CandidatePool.from_mbeir(pool)
    images = ImageStore(images) if isinstance(images, str | os.PathLike) else images
    rows, prompts = [], {}
    queries = read_queries(path)
    if task_files is not None:  # a query of another task would train silently
        check_task_queries(task_files, queries)
    for q in queries:
        for field_name, ids in (("pos_cand_list", q.pos), ("neg_cand_list", q.neg)):
            for did in ids:
                if did not in pool:
                    raise DataError(f"candidate {did!r} is not in the pool",
                                    Location(str(path), None, field_name, q.qid))
        if not q.pos:
            raise DataError("a training query needs at least one positive",
                            Location(str(path), None, "pos_cand_list", q.qid))
        task = Task(q.modality, pool.record(q.pos[0]).modality)
        key = f"mbeir/{q.dataset_id}/task{task.id}"
        if instructions is not None and key not in prompts:
            try:
                prompts[key] = instructions.prompts(q.dataset_id, task.query_modality, task.cand_modality)
            except DataError as e:
                raise DataError(e.reason, Location(str(path), None, None, q.qid)) from None
        sets = typed_sets(q.extra, set(q.pos), pool, Location(str(path), None, "neg_cand_sets", q.qid))
        rows.append(TrainingRow(q.qid, q.text, q.image, q.pos, tuple(d for d in q.neg if d not in q.pos), key, sets))
    return TrainingSource(name or path.stem, rows, pool, images, prompts, group)


def typed_sets(fields: Mapping, positives: set[str], pool: CandidatePool | None, where: Location,
               prefix: str = "") -> tuple[TypedSet, ...]:
    """The typed candidate sets of a mined row (``neg_cand_sets``, ``neg_cand_quota``), checked.

    Absent fields give ``()`` (an older mining run: its ``neg_cand_list`` is used). Positives are
    dropped, so they are never drawn; an id missing from the pool is an error naming the row.
    """
    sets, quota = fields.get("neg_cand_sets"), fields.get("neg_cand_quota")
    if sets is None:
        return ()
    if not isinstance(sets, dict) or not isinstance(quota, dict) or set(quota) - set(sets) or not all(
            isinstance(ids, list) and all(isinstance(d, str) for d in ids) for ids in sets.values()) or not all(
            isinstance(n, int) and n >= 0 for n in quota.values()):
        raise DataError("expected neg_cand_sets {type: [id, ...]} and neg_cand_quota {type: count >= 0}", where)
    out = []
    for kind, ids in sets.items():
        kept = tuple(prefix + d for d in ids if prefix + d not in positives)
        for did in kept:
            if pool is not None and did not in pool:
                raise DataError(f"candidate {did!r} of neg_cand_sets.{kind} is not in the pool", where)
        out.append((kind, kept, int(quota.get(kind, 0))))
    return tuple(out)


def read_negative_sets(path: str | os.PathLike) -> dict[str, dict]:
    """``{qid: row}`` of a BEIR mining output whose rows hold typed sets (empty for an older one)."""
    return {obj["qid"]: obj for _, obj in iter_jsonl(path)
            if isinstance(obj.get("qid"), str) and "neg_cand_sets" in obj}


def read_hard_negatives(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{qid: [ids]}`` from a JSONL file of ``{"qid": ..., "neg_cand_list": [...]}`` rows."""
    out: dict[str, list[str]] = {}
    for lineno, obj in iter_jsonl(path):
        qid, negs = obj.get("qid"), obj.get("neg_cand_list")
        if not isinstance(qid, str) or not isinstance(negs, list) or not all(isinstance(d, str) for d in negs):
            raise DataError("expected {'qid': str, 'neg_cand_list': [str, ...]}", Location(str(path), lineno))
        out[qid] = negs
    return out


def beir_source(root: str | os.PathLike, name: str, *, split: str = "train", instructions: Sequence[str] = (),
                hard_negatives: Mapping[str, Sequence[str]] | str | os.PathLike | None = None,
                min_score: int = 1, group: str | None = None) -> TrainingSource:
    """A text source from a BEIR directory: positives are judged docs with score >= ``min_score``.

    ``instructions`` are the query prompts of this set (e.g. NV-Embed's "Given a web search
    query, retrieve relevant passages that answer the query"); none means no instruction.
    ``hard_negatives`` maps raw query ids to raw corpus ids (or is a :func:`read_hard_negatives`
    file). Queries without a positive are skipped (BEIR qrels also list score-0 judgements).
    """
    from mmembed.data.beir import load_beir

    if not name or ":" in name or name.isdigit():
        raise ConfigError(f"BEIR source name {name!r} must be non-empty, without ':' and not a number "
                          "(it prefixes ids and must not look like an M-BEIR dataset id)")
    beir = load_beir(root, split)
    mined: dict[str, dict] = {}
    if isinstance(hard_negatives, str | os.PathLike):
        mined = read_negative_sets(hard_negatives)
        hard_negatives = read_hard_negatives(hard_negatives)
    negs = hard_negatives or {}
    pool = CandidatePool({f"{name}:{d}": _Record(doc.full_text, None, Modality.TEXT) for d, doc in beir.corpus.items()},
                         grouping="all")
    rows, skipped = [], 0
    for qid, text in beir.queries.items():
        pos = tuple(f"{name}:{d}" for d, score in beir.qrels.get(qid, {}).items() if score >= min_score)
        if not pos:
            skipped += 1
            continue
        neg = tuple(f"{name}:{d}" for d in negs.get(qid, ()))
        for did in neg:
            if did not in pool:
                raise DataError(f"hard negative {did!r} is not in the corpus", Location(str(root), None, "neg", qid))
        sets = typed_sets(mined.get(qid, {}), set(pos), pool, Location(str(root), None, "neg_cand_sets", qid),
                          prefix=f"{name}:")
        rows.append(TrainingRow(f"{name}:{qid}", text, None, pos, tuple(d for d in neg if d not in pos), f"beir/{name}",
                         sets))
    if skipped:
        logger.info("BEIR %s: skipped %d queries without a positive (score >= %d)", name, skipped, min_score)
    return TrainingSource(name, rows, pool, None, {f"beir/{name}": tuple(instructions)} if instructions else {},
                          group or name)


class ContrastiveDataset:
    """Map-style dataset over the rows of several sources, indexed by :class:`ExampleKey`.

    Rows are numbered source after source (``source_ranges``). Use with
    :class:`~mmembed.training.sampler.ContrastiveBatchSampler` as ``batch_sampler`` and
    :func:`collate_examples` as ``collate_fn`` of a :class:`torch.utils.data.DataLoader`.
    """

    def __init__(self, sources: Sequence[TrainingSource], *, num_negatives: int = 0,
                 negative_padding: NegativePadding = "random", instruction_mode: InstructionMode = "random",
                 fixed_instruction_index: int = 0, seed: int = 0):
        if not sources:
            raise ConfigError("a training dataset needs at least one source")
        if len({s.name for s in sources}) != len(sources):
            raise ConfigError(f"source names must be unique, got {[s.name for s in sources]}")
        if negative_padding not in NEGATIVE_PADDINGS:
            raise ConfigError(f"unknown negative_padding {negative_padding!r}; expected one of {NEGATIVE_PADDINGS}")
        if instruction_mode not in INSTRUCTION_MODES:
            raise ConfigError(f"unknown instruction mode {instruction_mode!r}; expected one of {INSTRUCTION_MODES}")
        if num_negatives < 0:
            raise ConfigError(f"num_negatives must be >= 0, got {num_negatives}")
        self.sources = list(sources)
        self.num_negatives = num_negatives
        self.negative_padding = negative_padding
        self.instruction_mode = instruction_mode
        self.fixed_instruction_index = fixed_instruction_index
        self.seed = seed
        self.source_ranges: list[range] = []
        start = 0
        for s in self.sources:
            self.source_ranges.append(range(start, start + len(s.rows)))
            start += len(s.rows)
        self._stops = [r.stop for r in self.source_ranges]
        self._sets_digest: str | None = None

    def __len__(self) -> int:
        return self.source_ranges[-1].stop

    def locate(self, row: int) -> tuple[TrainingSource, TrainingRow]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range 0..{len(self) - 1}")
        n = bisect.bisect_right(self._stops, row)
        source = self.sources[n]
        return source, source.rows[row - self.source_ranges[n].start]

    def task_key(self, row: int) -> str:
        return self.locate(row)[1].task_key

    def fingerprint(self) -> dict:
        """What a sampler state depends on; a resumed run must match it."""
        found = {"sources": [[s.name, len(s.rows)] for s in self.sources], "seed": self.seed,
                 "num_negatives": self.num_negatives, "negative_padding": self.negative_padding}
        if digest := self._negative_sets_digest():  # only then: states saved before typed sets still load
            found["negative_sets"] = digest
        return found

    def _negative_sets_digest(self) -> str | None:
        """A hash of every typed candidate set: the epoch's draws depend on them, so a resumed run must
        see the same ones (another mining run would silently change the negatives)."""
        if self._sets_digest is None:
            h = hashlib.blake2b(digest_size=16)
            found = False
            for source in self.sources:
                for r in source.rows:
                    if r.neg_sets:
                        found = True
                        h.update(repr((r.qid, r.neg_sets)).encode("utf-8"))
            self._sets_digest = h.hexdigest() if found else ""
        return self._sets_digest or None

    def resolve(self, row: int, epoch: int) -> ResolvedIds:
        """The positive and negatives of ``row`` in ``epoch`` (ids only: cheap, no image access)."""
        source, r = self.locate(row)
        draws = HashStream(f"{self.seed}\x1f{epoch}\x1f{r.qid}")
        positive = r.pos[draws.below(len(r.pos))] if len(r.pos) > 1 else r.pos[0]
        k = self.num_negatives
        drawn = draw_typed(r.neg_sets, draws) if r.neg_sets else r.neg
        negatives = sample(drawn, k, draws) if len(drawn) > k else list(drawn)
        padded = 0
        if len(negatives) < k and self.negative_padding == "random":
            extra = padding(source.pool.group(positive), set(r.pos) | set(negatives), k - len(negatives), draws)
            negatives += extra
            padded = len(extra)
        return ResolvedIds(r.qid, positive, tuple(negatives), frozenset(r.pos), padded)

    def instruction(self, row: int, epoch: int, step: int) -> str | None:
        source, r = self.locate(row)
        prompts = source.prompts.get(r.task_key, ())
        if self.instruction_mode == "none" or not prompts:
            return None
        if self.instruction_mode == "fixed":
            return prompts[self.fixed_instruction_index % len(prompts)]
        return prompts[stable_hash(self.seed, "instruction", epoch, step, r.qid) % len(prompts)]

    def __getitem__(self, key: ExampleKey | tuple[int, int, int]) -> TrainingExample:
        row, epoch, step = key
        source, r = self.locate(row)
        ids = self.resolve(row, epoch)
        return TrainingExample(
            qid=r.qid, query=_item(r.qid, r.text, r.image, source.images),
            instruction=self.instruction(row, epoch, step),
            positive=self._candidate(source, ids.positive),
            negatives=tuple(self._candidate(source, did) for did in ids.negatives),
            task_key=r.task_key, positive_ids=ids.positives, num_padded=ids.num_padded, epoch=epoch, step=step)

    @staticmethod
    def _candidate(source: TrainingSource, did: str) -> Item:
        rec = source.pool.record(did)
        return _item(did, rec.text, rec.image, source.images)


def _item(item_id: str, text: str | None, image: str | None, images: ImageStore | None) -> Item:
    if image and images is None:
        raise DataError("this item has an image but the source has no image root", Location(item=item_id))
    return Item(item_id, text, images.ref(image, item_id) if image else None)


@dataclass
class ContrastiveBatch:
    """A collated batch (one process's share): what the embed functions and the loss consume.

    ``candidates`` holds every query's positive (in query order), then each query's negatives in
    turn; ``target[i]`` is the index of query ``i``'s positive (``i``). ``positive_keys`` and
    ``candidate_keys`` are hashed ids for :class:`~mmembed.losses.InfoNCELoss`, which masks a
    query's other positives wherever they appear (across processes too).
    """

    qids: list[str]
    queries: list[Item]
    instructions: list[str | None]
    candidates: list[Item]
    target: torch.Tensor
    positive_keys: torch.Tensor
    candidate_keys: torch.Tensor
    task_keys: list[str]
    epoch: int
    step: int


def collate_examples(examples: Sequence[TrainingExample]) -> ContrastiveBatch:
    """Lay out a batch of examples (``collate_fn`` of a DataLoader)."""
    if not examples:  # a programming error: the sampler never yields an empty batch
        raise ValueError("cannot collate an empty batch")
    candidates = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
    return ContrastiveBatch(
        qids=[e.qid for e in examples], queries=[e.query for e in examples],
        instructions=[e.instruction for e in examples], candidates=candidates,
        target=torch.arange(len(examples)), positive_keys=pack_key_sets([e.positive_ids for e in examples]),
        candidate_keys=hash_ids([c.id for c in candidates]), task_keys=[e.task_key for e in examples],
        epoch=examples[0].epoch, step=examples[0].step)
