"""Training rows -> examples (seeded choices, padding, instructions) and the contrastive batch sampler."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmembed.data.beir import BeirDoc, write_corpus, write_qrels
from mmembed.data.beir import write_queries as write_beir_queries
from mmembed.data.images import LazyImage
from mmembed.data.mbeir import write_candidates, write_queries
from mmembed.errors import ConfigError, DataError
from mmembed.instructions import InstructionEntry, InstructionRegistry
from mmembed.losses import false_negative_mask
from mmembed.training import (
    CandidatePool,
    ContrastiveBatch,
    ContrastiveBatchSampler,
    ContrastiveDataset,
    ExampleKey,
    beir_source,
    collate_examples,
    mbeir_source,
)
from mmembed.types import Candidate, Modality, Query

T2I_PROMPTS = ("Find the picture.", "Show me an image.", "Retrieve a photo.")
I2T_PROMPTS = ("Describe this image.",)


def registry() -> InstructionRegistry:
    return InstructionRegistry([InstructionEntry("toy", 10, Modality.TEXT, Modality.IMAGE, T2I_PROMPTS),
                                InstructionEntry("toy", 10, Modality.IMAGE, Modality.TEXT, I2T_PROMPTS)])


def write_pool(root: Path) -> Path:
    images = [Candidate(f"10:{n}", None, f"images/{n}.png", Modality.IMAGE) for n in range(60)]
    texts = [Candidate(f"10:{100 + n}", f"text {n}", None, Modality.TEXT) for n in range(40)]
    other = [Candidate(f"11:{n}", None, f"images/other{n}.png", Modality.IMAGE) for n in range(5)]
    path = root / "pool.jsonl"
    write_candidates(path, images + texts + other)
    return path


def hand_t2i(root: Path) -> Path:
    """Query 0 has two positives; query 1's negative is query 0's positive; query 2 has one negative."""
    queries = [Query("10:0", "first", None, Modality.TEXT, ("10:0", "10:1"), ("10:5", "10:6", "10:7", "10:8", "10:9")),
               Query("10:1", "second", None, Modality.TEXT, ("10:1",), ("10:0",)),
               Query("10:2", "third", None, Modality.TEXT, ("10:2",), ("10:3",))]
    path = root / "t2i.jsonl"
    write_queries(path, queries)
    return path


def random_queries(path: Path, n: int, modality: Modality, pool_ids: list[str], start: int, seed: int) -> Path:
    rng = random.Random(seed)
    queries = []
    for i in range(n):
        pos = tuple(rng.sample(pool_ids, rng.choice((1, 1, 2))))
        neg = tuple(d for d in rng.sample(pool_ids, rng.randint(0, 3)) if d not in pos)
        text, image = (f"query {i}", None) if modality is Modality.TEXT else (None, f"images/q{i}.png")
        queries.append(Query(f"10:{start + i}", text, image, modality, pos, neg))
    write_queries(path, queries)
    return path


def write_beir(root: Path) -> Path:
    write_corpus(root / "corpus.jsonl", [BeirDoc(f"d{n}", f"Title {n}", f"body {n}") for n in range(30)])
    write_beir_queries(root / "queries.jsonl", {f"q{n}": f"question {n}" for n in range(17)})
    qrels = {f"q{n}": {f"d{n}": 1, f"d{n + 1}": 0} for n in range(16)}
    qrels["q16"] = {"d0": 0}  # judged, but nothing relevant: skipped
    write_qrels(root / "qrels" / "train.tsv", qrels)
    return root


@pytest.fixture
def hand_dataset(tmp_path) -> ContrastiveDataset:
    source = mbeir_source(hand_t2i(tmp_path), write_pool(tmp_path), tmp_path, registry())
    return ContrastiveDataset([source], num_negatives=3, seed=7)


@pytest.fixture
def mixed(tmp_path):
    """Three M-BEIR task files with shared positives and a BEIR set, in two groups."""
    pool = CandidatePool.from_mbeir(write_pool(tmp_path))
    images, texts = [f"10:{n}" for n in range(60)], [f"10:{100 + n}" for n in range(40)]
    t2i = mbeir_source(random_queries(tmp_path / "t2i.jsonl", 40, Modality.TEXT, images, 0, 1), pool, tmp_path,
                       registry())
    i2t = mbeir_source(random_queries(tmp_path / "i2t.jsonl", 24, Modality.IMAGE, texts, 1000, 2), pool, tmp_path,
                       registry())
    text = beir_source(write_beir(tmp_path / "beir"), "scifact", instructions=("Retrieve the abstract.",),
                       group="text")
    return [t2i, i2t, text]


# --- sources and examples ------------------------------------------------------------------------

def test_mbeir_rows_tasks_and_lazy_items(hand_dataset, tmp_path):
    assert len(hand_dataset) == 3 and hand_dataset.task_key(0) == "mbeir/10/task0"
    ex = hand_dataset[ExampleKey(0, 0, 0)]
    assert ex.qid == "10:0" and ex.query.text == "first" and ex.query.image is None
    assert ex.positive.id in ("10:0", "10:1") and ex.positive_ids == {"10:0", "10:1"}
    assert isinstance(ex.positive.image, LazyImage)
    assert ex.positive.image.path == (tmp_path / "images" / f"{ex.positive.id[3:]}.png").resolve()
    assert ex.instruction in T2I_PROMPTS and ex.task_key == "mbeir/10/task0"


def test_source_errors_name_file_field_and_query(tmp_path):
    pool = write_pool(tmp_path)
    bad = tmp_path / "bad.jsonl"
    write_queries(bad, [Query("10:0", "x", None, Modality.TEXT, ("10:999",))])
    with pytest.raises(DataError, match=r"bad\.jsonl.*'10:0'.*pos_cand_list.*10:999"):
        mbeir_source(bad, pool, tmp_path)
    write_queries(bad, [Query("10:0", "x", None, Modality.TEXT, ())])
    with pytest.raises(DataError, match="at least one positive"):
        mbeir_source(bad, pool, tmp_path)
    write_queries(bad, [Query("10:0", "x", None, Modality.TEXT, ("10:100",))])  # t->t: no instructions for it
    with pytest.raises(DataError, match="no instruction for dataset 10 text -> text"):
        mbeir_source(bad, pool, tmp_path, registry())


def test_one_positive_per_query_per_epoch(hand_dataset):
    chosen = {hand_dataset[ExampleKey(0, epoch, 0)].positive.id for epoch in range(30)}
    assert chosen == {"10:0", "10:1"}
    assert len({hand_dataset[ExampleKey(0, 4, step)].positive.id for step in range(10)}) == 1


def test_negatives_are_sampled_from_the_list_and_change_per_epoch(hand_dataset):
    draws = [hand_dataset[ExampleKey(0, epoch, 0)] for epoch in range(10)]
    for ex in draws:
        ids = [n.id for n in ex.negatives]
        assert len(ids) == 3 == len(set(ids)) and set(ids) <= {"10:5", "10:6", "10:7", "10:8", "10:9"}
        assert ex.num_padded == 0
    assert len({tuple(n.id for n in ex.negatives) for ex in draws}) > 1


def test_short_negative_lists_are_padded_from_the_task_group_or_left_short(hand_dataset, tmp_path):
    ex = hand_dataset[ExampleKey(2, 0, 0)]
    ids = [n.id for n in ex.negatives]
    assert ids[0] == "10:3" and ex.num_padded == 2 and len(set(ids)) == 3
    for did in ids[1:]:  # same dataset and modality (images of dataset 10), never a positive
        assert did.startswith("10:") and int(did[3:]) < 60 and did != "10:2"
    short = ContrastiveDataset(hand_dataset.sources, num_negatives=3, negative_padding="none", seed=7)
    assert [n.id for n in short[ExampleKey(2, 0, 0)].negatives] == ["10:3"]
    with pytest.raises(ConfigError, match="negative_padding"):
        ContrastiveDataset(hand_dataset.sources, negative_padding="repeat")


def test_instructions_are_seeded_per_query_epoch_and_step(hand_dataset):
    again = ContrastiveDataset(hand_dataset.sources, num_negatives=3, seed=7)
    keys = [ExampleKey(row, epoch, step) for row in range(3) for epoch in range(3) for step in range(20)]
    forward = [hand_dataset[k].instruction for k in keys]
    assert forward == [again[k].instruction for k in reversed(keys)][::-1]  # no dependence on call order
    assert set(forward) == set(T2I_PROMPTS)
    assert len({hand_dataset[ExampleKey(0, 0, s)].instruction for s in range(20)}) > 1  # changes with the step
    other_seed = ContrastiveDataset(hand_dataset.sources, num_negatives=3, seed=8)
    assert forward != [other_seed[k].instruction for k in keys]
    fixed = ContrastiveDataset(hand_dataset.sources, instruction_mode="fixed", fixed_instruction_index=1)
    assert {fixed[k].instruction for k in keys[:10]} == {T2I_PROMPTS[1]}
    none = ContrastiveDataset(hand_dataset.sources, instruction_mode="none")
    assert {none[k].instruction for k in keys[:10]} == {None}


def test_beir_source_prefixes_ids_and_skips_queries_without_positives(tmp_path):
    root = write_beir(tmp_path / "beir")
    source = beir_source(root, "scifact", instructions=("Retrieve the abstract.",), hard_negatives={"q0": ["d7"]})
    assert len(source.rows) == 16 and source.group == "scifact"
    data = ContrastiveDataset([source], num_negatives=2)
    ex = data[ExampleKey(0, 0, 0)]
    assert ex.qid == "scifact:q0" and ex.query.text == "question 0"
    assert ex.positive.id == "scifact:d0" and ex.positive.text == "Title 0. body 0"
    assert ex.negatives[0].id == "scifact:d7" and ex.num_padded == 1 and ex.negatives[1].id != "scifact:d0"
    assert ex.instruction == "Retrieve the abstract." and ex.task_key == "beir/scifact"
    with pytest.raises(ConfigError, match="name"):
        beir_source(root, "12")
    with pytest.raises(DataError, match="not in the corpus"):
        beir_source(root, "scifact", hard_negatives={"q0": ["nope"]})


def test_collated_batch_layout_and_false_negative_mask(hand_dataset):
    examples = [hand_dataset[ExampleKey(row, 0, 0)] for row in range(3)]
    batch = collate_examples(examples)
    assert isinstance(batch, ContrastiveBatch)
    ids = [c.id for c in batch.candidates]
    assert ids[:3] == [e.positive.id for e in examples] and len(ids) == 3 + 9
    assert batch.target.tolist() == [0, 1, 2] and batch.instructions == [e.instruction for e in examples]
    mask = false_negative_mask(batch.positive_keys, batch.candidate_keys, batch.target)
    expected = [[ids[j] in e.positive_ids and j != i for j in range(len(ids))] for i, e in enumerate(examples)]
    assert mask.tolist() == expected
    assert mask[0].any()  # query 0's other positive (query 1's target or query 1's negative) is masked


# --- the batch sampler ---------------------------------------------------------------------------

def global_batches(sampler: ContrastiveBatchSampler) -> list[list[int]]:
    return [[k.row for k in keys] for keys in sampler]


def conflicts(dataset: ContrastiveDataset, rows: list[int], epoch: int) -> int:
    resolved = [dataset.resolve(r, epoch) for r in rows]
    seen, found = Counter(), 0
    for r in resolved:
        seen.update(r.candidates)
        seen[("q", r.qid)] += 1
    found += sum(n - 1 for n in seen.values())
    for i, a in enumerate(resolved):
        found += sum(len(a.positives & set(b.candidates)) for j, b in enumerate(resolved) if i != j)
    return found


def test_batches_never_hold_a_candidate_twice(mixed):
    data = ContrastiveDataset(mixed, num_negatives=2, seed=3)
    sampler = ContrastiveBatchSampler(data, 8, seed=3)
    batches = global_batches(sampler)
    assert batches and all(conflicts(data, b, 0) == 0 for b in batches)
    loose = ContrastiveBatchSampler(data, 8, seed=3, avoid_conflicts=False)
    assert sum(conflicts(data, b, 0) for b in global_batches(loose)) > 0  # the data does produce conflicts


def test_an_epoch_draws_every_row_once_and_the_plan_is_seeded(mixed):
    data = ContrastiveDataset(mixed, num_negatives=1)
    sampler = ContrastiveBatchSampler(data, 8, seed=1)
    rows = [r for b in global_batches(sampler) for r in b]
    # Every row at most once; only the tail that cannot fill a conflict-free batch is left over.
    assert len(rows) == len(set(rows)) and len(data) - 16 < len(rows) <= len(data) // 8 * 8
    assert sampler.epoch == 1  # the loop finished epoch 0
    again = ContrastiveBatchSampler(data, 8, seed=1)
    assert np.array_equal(again.plan(0), sampler.plan(0))
    assert not np.array_equal(again.plan(1), sampler.plan(0))
    assert not np.array_equal(ContrastiveBatchSampler(data, 8, seed=2).plan(0), sampler.plan(0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_slices_of_the_same_global_batch(mixed, world_size):
    data = ContrastiveDataset(mixed)
    whole = global_batches(ContrastiveBatchSampler(data, 8, seed=5))
    shards = [global_batches(ContrastiveBatchSampler(data, 8, seed=5, num_replicas=world_size, rank=r))
              for r in range(world_size)]
    for step, batch in enumerate(whole):
        assert [row for shard in shards for row in shard[step]] == batch
    assert [len(s[0]) for s in shards] == ([4, 4] if world_size == 2 else [3, 3, 2])


def test_resuming_from_a_saved_state_continues_exactly(mixed):
    data = ContrastiveDataset(mixed, num_negatives=1)
    reference = ContrastiveBatchSampler(data, 8, seed=9)
    expected = [keys for _ in range(2) for keys in reference]  # epochs 0 and 1
    first = ContrastiveBatchSampler(data, 8, seed=9)
    seen = []
    for keys in first:
        seen.append(keys)
        if len(seen) == 3:
            break
    state = first.state_dict()
    resumed = ContrastiveBatchSampler(data, 8, seed=9)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert seen + rest[:len(expected) - 3] == expected
    # A DataLoader runs ahead: the state of the last batch trained on is given explicitly.
    behind = ContrastiveBatchSampler(data, 8, seed=9)
    behind.load_state_dict(first.state_dict(next_batch=(0, 1)))
    assert next(iter(behind)) == expected[1]


def test_a_state_from_other_data_or_settings_is_refused(mixed):
    data = ContrastiveDataset(mixed)
    state = ContrastiveBatchSampler(data, 8).state_dict()
    with pytest.raises(ConfigError, match="global_batch_size"):
        ContrastiveBatchSampler(data, 4).load_state_dict(state)
    with pytest.raises(ConfigError, match="dataset"):
        ContrastiveBatchSampler(ContrastiveDataset(mixed[:2]), 8).load_state_dict(state)


def test_task_homogeneous_batches(mixed):
    data = ContrastiveDataset(mixed)
    for avoid_conflicts in (True, False):
        sampler = ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=True, avoid_conflicts=avoid_conflicts)
        batches = global_batches(sampler)
        assert all(len({data.task_key(r) for r in b}) == 1 for b in batches)
        assert {data.task_key(b[0]) for b in batches} == {"mbeir/10/task0", "mbeir/10/task3", "beir/scifact"}
    assert len(batches) == 40 // 8 + 24 // 8 + 16 // 8
    assert len({data.task_key(b[0]) for b in batches[:3]}) > 1  # task batches are shuffled, not in task order
    # 70 rows: per-task remainders (e.g. 30 -> 3 batches + 6 rows) are batched together with "mix".
    drop = ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=True, examples_per_epoch=70,
                                   avoid_conflicts=False)
    mix = ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=True, task_remainder="mix",
                                  examples_per_epoch=70, avoid_conflicts=False)
    assert sum(len(b) for b in global_batches(mix)) == 64 > sum(len(b) for b in global_batches(drop))


def test_task_homogeneous_share_mixes_the_rest(mixed):
    data = ContrastiveDataset(mixed)
    sampler = ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=0.5, avoid_conflicts=False)
    batches = global_batches(sampler)
    single = [b for b in batches if len({data.task_key(r) for r in b}) == 1]
    assert 2 <= len(single) < len(batches)          # about half the rows batched per task, the rest mixed
    assert sum(len(b) for b in batches) == 80          # the per-task remainders are mixed, not dropped
    assert global_batches(ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=0.5,
                                                  avoid_conflicts=False)) == batches
    full = ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=1.0, avoid_conflicts=False)
    assert global_batches(full) == global_batches(ContrastiveBatchSampler(data, 8, seed=4, task_homogeneous=True,
                                                                          avoid_conflicts=False))
    with pytest.raises(ConfigError, match="task_homogeneous"):
        ContrastiveBatchSampler(data, 8, task_homogeneous=1.5)


def test_mixing_weights_set_each_group_share(mixed):
    data = ContrastiveDataset(mixed)
    sampler = ContrastiveBatchSampler(data, 8, seed=0, weights={"mbeir": 1, "text": 3}, examples_per_epoch=80,
                                      avoid_conflicts=False)
    rows = [r for b in global_batches(sampler) for r in b]
    text_rows = data.source_ranges[2]
    assert sum(r in text_rows for r in rows) == 60  # 16 text queries up-sampled to 60 draws
    assert max(Counter(r for r in rows if r in text_rows).values()) == 4
    # 20 M-BEIR rows shared by size: 40/64 and 24/64 of 20 = 12.5 and 7.5, rounded to add up.
    assert sum(r in data.source_ranges[0] for r in rows) + sum(r in data.source_ranges[1] for r in rows) == 20
    assert sum(r in data.source_ranges[1] for r in rows) in (7, 8)
    with pytest.raises(ConfigError, match="every source group"):
        ContrastiveBatchSampler(data, 8, weights={"mbeir": 1})


def test_dataloader_yields_collated_shards(mixed):
    data = ContrastiveDataset(mixed, num_negatives=2)
    sampler = ContrastiveBatchSampler(data, 8, seed=0, num_replicas=2, rank=1)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_examples, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(sampler.plan(0))
    first = batches[0]
    assert len(first.queries) == 4 and len(first.candidates) == 12 and first.step == 0
    assert torch.equal(first.target, torch.arange(4))


def test_class_label_data_warns_how_many_rows_share_a_positive_with_their_batch(tmp_path, caplog):
    """Queries that share positives (class labels) cannot all get conflict-free batches: say so loudly."""
    pool = CandidatePool.from_mbeir(write_pool(tmp_path))
    classes = ["10:0", "10:1", "10:2"]
    queries = [Query(f"10:{500 + i}", f"query {i}", None, Modality.TEXT, (classes[i % 3],)) for i in range(48)]
    write_queries(tmp_path / "labels.jsonl", queries)
    data = ContrastiveDataset([mbeir_source(tmp_path / "labels.jsonl", pool, tmp_path, registry())])
    with caplog.at_level("INFO", logger="mmembed.training.sampler"):
        batches = global_batches(ContrastiveBatchSampler(data, 8, seed=0, lookahead=4))
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "placed in a batch" in r.getMessage()]
    assert batches and warnings and "rows (" in warnings[0].getMessage()


# --- typed candidate sets (mining format 2) ------------------------------------------------------

def typed_queries(root: Path) -> Path:
    """Mined rows: a type-1 set of texts, a type-2 set of images (one positive listed in it too)."""
    type1 = [f"10:{100 + n}" for n in range(12)]
    rows = []
    for n in range(6):
        type2 = [f"10:{10 + 5 * n + j}" for j in range(5)] + [f"10:{n}"]  # the positive: never drawn
        rows.append(Query(f"10:{n}", f"query {n}", None, Modality.TEXT, (f"10:{n}",), (type1[0], type2[0]),
                          extra={"neg_cand_sets": {"type1": type1[n:], "type2": type2},
                                 "neg_cand_quota": {"type1": 1, "type2": 1}}))
    path = root / "typed.jsonl"
    write_queries(path, rows)
    return path


def test_typed_sets_are_drawn_afresh_each_epoch_seeded_and_never_a_positive(tmp_path):
    source = mbeir_source(typed_queries(tmp_path), write_pool(tmp_path), tmp_path, registry())
    data = ContrastiveDataset([source], num_negatives=2, seed=3)
    for row in range(6):
        draws = [data.resolve(row, epoch) for epoch in range(12)]
        for ids in draws:
            type1, type2 = ids.negatives
            assert int(type1[3:]) >= 100 and 10 <= int(type2[3:]) < 40  # one of each type
            assert ids.positive not in ids.negatives and ids.num_padded == 0
        assert len({ids.negatives for ids in draws}) > 3  # not one fixed pair
        assert draws == [ContrastiveDataset([source], num_negatives=2, seed=3).resolve(row, e) for e in range(12)]
    assert [data.resolve(0, e) for e in range(5)] != [ContrastiveDataset([source], num_negatives=2, seed=4)
                                                        .resolve(0, e) for e in range(5)]
    # the stored sample of an older mining run is used when the sets are absent
    plain = mbeir_source(hand_t2i(tmp_path), write_pool(tmp_path), tmp_path, registry())
    assert all(not r.neg_sets for r in plain.rows)
    assert "negative_sets" not in ContrastiveDataset([plain]).fingerprint()


def test_a_short_typed_set_is_padded_and_bad_sets_are_refused(tmp_path):
    pool = write_pool(tmp_path)
    path = tmp_path / "short.jsonl"
    write_queries(path, [Query("10:0", "q", None, Modality.TEXT, ("10:0",), (),
                               extra={"neg_cand_sets": {"type1": [], "type2": ["10:7"]},
                                      "neg_cand_quota": {"type1": 1, "type2": 1}})])
    ids = ContrastiveDataset([mbeir_source(path, pool, tmp_path, registry())], num_negatives=2).resolve(0, 0)
    assert ids.negatives[0] == "10:7" and ids.num_padded == 1 and "10:0" not in ids.negatives
    write_queries(path, [Query("10:0", "q", None, Modality.TEXT, ("10:0",), (),
                               extra={"neg_cand_sets": {"type1": ["10:999"]}, "neg_cand_quota": {"type1": 1}})])
    with pytest.raises(DataError, match="neg_cand_sets"):
        mbeir_source(path, pool, tmp_path, registry())
    write_queries(path, [Query("10:0", "q", None, Modality.TEXT, ("10:0",), (),
                               extra={"neg_cand_sets": {"type1": "10:7"}, "neg_cand_quota": {"type1": 1}})])
    with pytest.raises(DataError, match="neg_cand_quota"):
        mbeir_source(path, pool, tmp_path, registry())


def test_resuming_with_typed_sets_continues_exactly_and_other_sets_are_refused(tmp_path):
    source = mbeir_source(typed_queries(tmp_path), write_pool(tmp_path), tmp_path, registry())
    data = ContrastiveDataset([source], num_negatives=2, seed=3)
    reference = ContrastiveBatchSampler(data, 2, seed=5)
    expected = [[data.resolve(k.row, k.epoch) for k in keys] for _ in range(3) for keys in reference]
    first = ContrastiveBatchSampler(data, 2, seed=5)
    seen = [[data.resolve(k.row, k.epoch) for k in keys] for keys in first]  # epoch 0
    state = first.state_dict()
    resumed = ContrastiveBatchSampler(ContrastiveDataset([source], num_negatives=2, seed=3), 2, seed=5)
    resumed.load_state_dict(state)
    seen += [[data.resolve(k.row, k.epoch) for k in keys] for _ in range(2) for keys in resumed]
    assert seen == expected
    other_rows = [r.__class__(**{**r.__dict__, "neg_sets": r.neg_sets[:1]}) for r in source.rows]
    other = source.__class__(source.name, other_rows, source.pool, source.images, source.prompts, source.group)
    with pytest.raises(ConfigError, match="dataset"):
        ContrastiveBatchSampler(ContrastiveDataset([other], num_negatives=2, seed=3), 2, seed=5).load_state_dict(state)


def test_beir_sources_read_typed_sets_from_a_text_mining_output(tmp_path):
    import json

    root = write_beir(tmp_path / "beir")
    mined = tmp_path / "negatives.jsonl"
    mined.write_text("\n".join(json.dumps({"qid": f"q{n}", "neg_cand_list": [f"d{n + 5}"], "neg_cand_types": ["type2"],
                                           "neg_cand_sets": {"type2": [f"d{n + 5}", f"d{n + 6}", f"d{n}"]},
                                           "neg_cand_quota": {"type2": 1}}) for n in range(3)) + "\n")
    source = beir_source(root, "sci", hard_negatives=mined)
    row = next(r for r in source.rows if r.qid == "sci:q0")
    assert row.neg_sets == (("type2", ("sci:d5", "sci:d6"), 1),)  # the positive d0 is dropped
    data = ContrastiveDataset([source], num_negatives=1)
    drawn = {data.resolve(source.rows.index(row), e).negatives for e in range(10)}
    assert drawn == {("sci:d5",), ("sci:d6",)}
