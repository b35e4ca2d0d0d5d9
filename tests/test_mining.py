"""Hard-negative mining: the modality-aware rule on hand-built rankings, and the resumable miner."""

from __future__ import annotations

import json

import pytest

from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.data.mbeir import read_queries
from mmembed.errors import ConfigError
from mmembed.mining import MiningConfig, NegativeRule, mine_beir, mine_mbeir, modality_aware_negatives
from mmembed.mining import miner as miner_module
from mmembed.mining.rule import window_negatives
from tests.toy import ToyEncoder, make_toy_mbeir

IMG, TXT = "image", "text"


def ranking(spec: str) -> tuple[list[str], list[str]]:
    """'tTiP...' -> ids r1, r2, ... with modalities: t/T text, i/P image (P: the positive)."""
    ids = [f"r{n}" for n in range(1, len(spec) + 1)]
    return ids, [TXT if c in "tT" else IMG for c in spec]


def test_type1_is_every_wrong_modality_candidate_above_the_first_positive():
    ids, mods = ranking("titiPtti" + "i" * 42)
    rule = NegativeRule(k=50, window=(46, 50), num_type1=10, num_type2=0, random_fallback=False)
    chosen = modality_aware_negatives(ids, mods, {"r5"}, IMG, rule, key="q")
    assert sorted(did for did, kind in chosen if kind == "type1") == ["r1", "r3"]  # r6, r7 are below r5
    assert len(chosen) == 2  # no fallback asked for


def test_type2_comes_from_the_window_with_the_right_modality_and_never_a_positive():
    ids, mods = ranking("P" + "i" * 44 + "itiit")  # ranks 46-50: i t i i t
    positives = {"r1", "r48"}
    rule = NegativeRule(k=50, window=(46, 50), num_type1=0, num_type2=5, random_fallback=False)
    chosen = modality_aware_negatives(ids, mods, positives, IMG, rule, key="q")
    assert sorted(did for did, _ in chosen) == ["r46", "r49"]
    assert {kind for _, kind in chosen} == {"type2"}


def test_no_positive_retrieved_makes_every_wrong_modality_hit_type1():
    ids, mods = ranking("t" * 10 + "i" * 40)
    rule = NegativeRule(k=50, num_type1=20, num_type2=0, random_fallback=False)
    chosen = modality_aware_negatives(ids, mods, {"elsewhere"}, IMG, rule, key="q")
    assert sorted(did for did, _ in chosen) == sorted(ids[:10])


def test_empty_types_fall_back_to_random_non_positive_candidates():
    ids, mods = ranking("P" + "i" * 49)  # positive first: no type 1; window 46-50 all images
    rule = NegativeRule(k=50, num_type1=2, num_type2=1)
    fallback = ["f1", "f2", "f3", "r1"]
    chosen = modality_aware_negatives(ids, mods, {"r1"}, IMG, rule, key="q", fallback=fallback)
    kinds = [kind for _, kind in chosen]
    assert kinds.count("random") == 2 and kinds.count("type2") == 1
    assert all(did != "r1" for did, _ in chosen)
    assert len({did for did, _ in chosen}) == 3
    without = NegativeRule(k=50, num_type1=2, num_type2=1, random_fallback=False)
    assert [k for _, k in modality_aware_negatives(ids, mods, {"r1"}, IMG, without, key="q")] == ["type2"]


def test_choice_is_seeded_by_the_key():
    ids, mods = ranking("t" * 30 + "P" + "i" * 19)
    rule = NegativeRule(k=50, num_type1=3, num_type2=0)
    a = modality_aware_negatives(ids, mods, {"r31"}, IMG, rule, key="0:q1")
    assert a == modality_aware_negatives(ids, mods, {"r31"}, IMG, rule, key="0:q1")
    others = {tuple(modality_aware_negatives(ids, mods, {"r31"}, IMG, rule, key=f"0:q{n}")) for n in range(2, 8)}
    assert len(others) > 1


def test_text_window_rule():
    ids = [f"d{n}" for n in range(1, 51)]
    chosen = window_negatives(ids, {"d47"}, NegativeRule(num_type2=3, random_fallback=False), key="q")
    assert len(chosen) == 3 and {did for did, _ in chosen} < {"d46", "d48", "d49", "d50"}


@pytest.mark.parametrize("window,k", [((0, 5), 50), ((46, 51), 50), ((10, 5), 50)])
def test_bad_windows_are_refused(window, k):
    with pytest.raises(ConfigError, match="window"):
        NegativeRule(k=k, window=window).validate()


# ----------------------------------------------------------------------------- the miner


@pytest.fixture
def toy_root(tmp_path):
    return make_toy_mbeir(tmp_path / "toy")


def small_config(**overrides) -> MiningConfig:
    return MiningConfig(**{"k": 12, "window": [9, 12], "num_type1": 1, "num_type2": 1, "chunk_size": 2,
                           **overrides})


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mining_writes_task_files_with_typed_negatives(toy_root, tmp_path):
    result = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "mined", small_config(), show_progress=False)
    assert result.complete and set(result.stats) == {"toy_task0", "toy_task1", "toy_task3"}
    for task in result.stats:
        rows = read_rows(tmp_path / "mined" / f"{task}.jsonl")
        queries = read_queries(tmp_path / "mined" / f"{task}.jsonl")  # still a valid M-BEIR query file
        assert len(rows) == len(queries) == 6
        for row in rows:
            assert len(row["neg_cand_list"]) == len(row["neg_cand_types"]) == 2
            assert not set(row["neg_cand_list"]) & set(row["pos_cand_list"])
            assert set(row["neg_cand_types"]) <= {"type1", "type2", "random"}
    manifest = json.loads((tmp_path / "mined" / "mining.json").read_text())
    assert manifest["encoder_id"] == ToyEncoder.encoder_id and manifest["stats"]["toy_task0"]["queries"] == 6
    assert not (tmp_path / "mined" / ".parts").exists()
    # t->i: the toy ranks the image of the colour first, so no text candidate is above the positive
    assert result.stats["toy_task0"].wrong_modality_first == 0


def test_a_killed_mining_run_resumes_where_it_stopped(toy_root, tmp_path, monkeypatch):
    reference = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "ref", small_config(), show_progress=False)
    real, calls = miner_module._mine_chunk, []

    def dies_on_the_fourth_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(miner_module, "_mine_chunk", dies_on_the_fourth_chunk)
    with pytest.raises(KeyboardInterrupt):
        mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(), show_progress=False)
    assert not (tmp_path / "run" / "mining.json").exists()
    monkeypatch.setattr(miner_module, "_mine_chunk", real)
    encoder = ToyEncoder()
    resumed = mine_mbeir(encoder, toy_root, tmp_path / "run", small_config(), show_progress=False)
    assert resumed.complete
    assert encoder.calls == 1 + 9 - 3  # the pool, then only the 6 chunks not done before
    for task in reference.stats:
        assert (tmp_path / "run" / f"{task}.jsonl").read_text() == (tmp_path / "ref" / f"{task}.jsonl").read_text()
    again = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(), show_progress=False)
    assert again.reused


def test_shards_together_equal_one_process(toy_root, tmp_path):
    mine_mbeir(ToyEncoder(), toy_root, tmp_path / "one", small_config(), show_progress=False)
    first = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "two", small_config(), shard=(0, 2), show_progress=False)
    assert not first.complete
    second = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "two", small_config(), shard=(1, 2), show_progress=False)
    assert second.complete
    for name in ("toy_task0.jsonl", "toy_task1.jsonl", "toy_task3.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_partial_results_of_other_settings_are_not_mixed(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(miner_module, "_mine_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(), show_progress=False)
    with pytest.raises(ConfigError, match="another configuration"):
        mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(num_type2=3), show_progress=False)


def test_mined_files_feed_training(toy_root, tmp_path):
    from mmembed.training.assembly import build_dataset
    from mmembed.training.config import DataSettings, MBEIRData
    from mmembed.training.data import ExampleKey

    mine_mbeir(ToyEncoder(), toy_root, tmp_path / "mined", small_config(), show_progress=False)
    data = DataSettings(mbeir=[MBEIRData(root=str(toy_root), negatives=str(tmp_path / "mined"))], num_negatives=2)
    dataset = build_dataset(data, seed=0)
    example = dataset[ExampleKey(0, 0, 0)]
    row = read_rows(tmp_path / "mined" / "toy_task0.jsonl")[0]
    # the typed sets are drawn from; a type without candidates is padded at random, as mining's fallback
    empty = sum(1 for kind in ("type1", "type2") if not row["neg_cand_sets"][kind])
    assert len(example.negatives) == 2 and example.num_padded == empty
    with pytest.raises(ConfigError, match="not a finished mining run"):
        build_dataset(DataSettings(mbeir=[MBEIRData(root=str(toy_root), negatives=str(tmp_path))]), seed=0)


def test_text_mining_and_cli(tmp_path, monkeypatch, capsys):
    from mmembed.data.beir import BeirDoc, write_corpus, write_qrels, write_queries

    root = tmp_path / "beir"
    words = [f"w{n}" for n in range(30)]
    write_corpus(root / "corpus.jsonl", [BeirDoc(f"d{n}", "", f"doc {w} {words[(n + 1) % 30]}")
                                         for n, w in enumerate(words)])
    write_queries(root / "queries.jsonl", {f"q{n}": f"{w}" for n, w in enumerate(words[:8])})
    write_qrels(root / "qrels" / "train.tsv", {f"q{n}": {f"d{n}": 1} for n in range(8)})
    result = mine_beir(ToyEncoder(), root, tmp_path / "text", MiningConfig(k=10, window=[6, 10], num_type2=2),
                       show_progress=False)
    rows = read_rows(tmp_path / "text" / "negatives.jsonl")
    assert result.complete and len(rows) == 8
    assert all(len(r["neg_cand_list"]) == 2 and f"d{r['qid'][1:]}" not in r["neg_cand_list"] for r in rows)

    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: ToyEncoder())
    assert main(["mine", str(root), "--encoder", "toy", "--out", str(tmp_path / "cli"), "--set", "k=10",
                 "--set", "window=[6,10]"]) == 0
    assert "type2" in capsys.readouterr().out
    assert main(["mine", str(root), "--encoder", "toy", "--out", str(tmp_path / "x"), "--shard", "3/2"]) == 2
    assert "shard" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reuse keyed by the inputs


def task_file(root, split="train"):
    return next((root / "query" / split).glob("*task0*.jsonl"))


def test_a_query_file_cut_in_half_is_mined_again_not_reused(toy_root, tmp_path, caplog):
    out = tmp_path / "mined"
    mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    path = task_file(toy_root)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    again = mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    assert not again.reused and again.stats["toy_task0"].queries == 3
    assert len(read_rows(out / "toy_task0.jsonl")) == 3
    assert "differs in inputs.files" in caplog.text


def test_an_image_replaced_behind_the_same_path_is_mined_again(toy_root, tmp_path):
    from PIL import Image

    out = tmp_path / "mined"
    mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    assert mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False).reused
    image = next((toy_root / "images").glob("*.png"))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    assert not mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False).reused


def test_a_finished_run_is_redone_with_other_settings_and_leaves_no_stale_file(toy_root, tmp_path, caplog):
    out = tmp_path / "mined"
    mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    assert mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False).reused
    assert not (out / ".parts").exists()  # a reuse claims nothing
    redone = mine_mbeir(ToyEncoder(), toy_root, out, small_config(num_type2=2, tasks=["toy_task0"]),
                        show_progress=False)
    assert not redone.reused and set(redone.stats) == {"toy_task0"}
    assert "differs in config.num_type2, config.tasks, inputs.files" in caplog.text and "mining again" in caplog.text
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["toy_task0.jsonl"]  # the other tasks' files went
    assert all(len(r["neg_cand_list"]) == 3 for r in read_rows(out / "toy_task0.jsonl"))


def test_leftovers_of_a_killed_run_are_removed(toy_root, tmp_path):
    out = tmp_path / "mined"
    (out / ".parts" / "toy_task0").mkdir(parents=True)
    leftovers = [out / ".toy_task0.jsonl.abc123.tmp", out / ".parts" / "toy_task0" / ".000001.jsonl.x.tmp"]
    for path in leftovers:
        path.write_text("half")
    (out / ".model.q1w2.staging").mkdir()
    result = mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    assert result.complete
    assert not any(p.exists() for p in leftovers) and not (out / ".model.q1w2.staging").exists()


def test_a_run_whose_chunks_are_all_done_does_not_embed_the_pool_again(toy_root, tmp_path, monkeypatch):
    import mmembed.mining.jobs as jobs

    out = tmp_path / "mined"
    reference = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "ref", small_config(), show_progress=False)
    # every chunk done, the merge not: a run killed between its last chunk and the manifest
    real_finish = jobs.ChunkedJob.finish
    monkeypatch.setattr(jobs.ChunkedJob, "finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        mine_mbeir(ToyEncoder(), toy_root, out, small_config(), show_progress=False)
    monkeypatch.setattr(jobs.ChunkedJob, "finish", real_finish)
    encoder = ToyEncoder()
    result = mine_mbeir(encoder, toy_root, out, small_config(), show_progress=False)
    assert result.complete and not result.reused and encoder.calls == 0
    for task in reference.stats:
        assert (out / f"{task}.jsonl").read_text() == (tmp_path / "ref" / f"{task}.jsonl").read_text()


def test_partial_results_of_other_data_are_refused_naming_what_differs(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(miner_module, "_mine_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(), show_progress=False)
    path = task_file(toy_root)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(ConfigError, match=r"differs in inputs\.files\..*task0.*remove .*\.parts"):
        mine_mbeir(ToyEncoder(), toy_root, tmp_path / "run", small_config(), show_progress=False)


def test_the_pool_cache_is_keyed_by_image_content(toy_root, tmp_path):
    import os

    from PIL import Image

    from mmembed.data.images import ImageStore
    from mmembed.embeddings.pool_cache import PoolEmbeddingCache

    pool = toy_root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl"
    pool = pool if pool.is_file() else next(toy_root.rglob("*union*train*.jsonl"))
    cache_dir = tmp_path / "cache"

    def embed() -> tuple[int, object]:
        encoder = ToyEncoder()
        vectors = PoolEmbeddingCache(encoder, ImageStore(toy_root), cache_dir, show_progress=False).embed_file(pool)
        return encoder.calls, vectors.vectors

    calls, first = embed()
    assert calls == 1 and embed()[0] == 0  # cached
    image = next((toy_root / "images").glob("*.png"))
    os.utime(image, ns=(1, 1))  # a touched but identical image: rehashed, still the same
    assert embed()[0] == 0
    Image.new("RGB", (32, 32), (3, 2, 1)).save(image)
    calls, changed = embed()
    assert calls == 1 and not (changed == first).all()


def test_mined_rows_store_the_full_typed_candidate_sets(toy_root, tmp_path):
    config = small_config(k=12, window=[2, 12])  # a wide window: several type-2 candidates per query
    result = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "mined", config, show_progress=False)
    pool = {c["did"]: c["modality"] for c in read_rows(toy_root / "cand_pool" / "global"
                                                      / "mbeir_union_train_cand_pool.jsonl")}
    for task, target in (("toy_task0", "image"), ("toy_task3", "text")):
        for row in read_rows(tmp_path / "mined" / f"{task}.jsonl"):
            sets, quota = row["neg_cand_sets"], row["neg_cand_quota"]
            assert quota == {"type1": 1, "type2": 1} and set(sets) == {"type1", "type2"}
            assert len(sets["type2"]) > 1 and not set(sets["type1"] + sets["type2"]) & set(row["pos_cand_list"])
            # today's fixed sample is drawn from the sets (or is a random fallback)
            for did, kind in zip(row["neg_cand_list"], row["neg_cand_types"]):
                assert kind == "random" or did in sets[kind]
            assert all(pool[d] != target for d in sets["type1"]) and all(pool[d] == target for d in sets["type2"])
    stats = result.stats["toy_task3"]
    assert stats.candidates["type2"] >= stats.negatives["type2"] and stats.slots == 6 * 5
    assert 0 <= stats.modality_error <= 1
    plain = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "plain", small_config(typed_sets=False), show_progress=False)
    assert plain.complete and "neg_cand_sets" not in read_rows(tmp_path / "plain" / "toy_task0.jsonl")[0]


def test_mining_statistics_use_the_evaluation_modality_error(toy_root, tmp_path):
    """mod.err@k counts top-k slots of the wrong modality, as mmembed.eval.mbeir_runner does."""
    from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

    config = small_config(split="test", modality_error_k=5, instruction_mode="none")
    mined = mine_mbeir(ToyEncoder(), toy_root, tmp_path / "mined", config, show_progress=False)
    results = run_evaluation(ToyEncoder(), toy_root, EvalConfig(instruction_modes=["none"], modality_error_k=5,
                                                                 show_progress=False), tmp_path / "eval").to_dict()
    for row in results["results"]:
        if row["pool"] == "global":
            assert mined.stats[row["task"]].modality_error == pytest.approx(row["modality_error"])
    assert "mod.err@k" in miner_module.stats_table(mined)


def test_folds_split_the_queries_and_together_cover_them(toy_root, tmp_path):
    from mmembed.mining.folds import fold_of

    qids = [f"10:{n}" for n in range(200)]
    counts = [sum(fold_of(q, 3, seed=1) == f for q in qids) for f in range(3)]
    assert sum(counts) == 200 and min(counts) > 40
    assert [fold_of(q, 3, seed=1) for q in qids] != [fold_of(q, 3, seed=2) for q in qids]
    mined = [mine_mbeir(ToyEncoder(), toy_root, tmp_path / f"fold{f}", small_config(folds=2, fold=f),
                        show_progress=False) for f in range(2)]
    for task in ("toy_task0", "toy_task1", "toy_task3"):
        parts = [read_rows(tmp_path / f"fold{f}" / f"{task}.jsonl") for f in range(2)]
        assert all(fold_of(r["qid"], 2, 0) == f for f, rows in enumerate(parts) for r in rows)
        every = read_queries(toy_root / "query" / "train" / f"mbeir_{task}_train.jsonl")
        assert sorted(r["qid"] for rows in parts for r in rows) == sorted(q.qid for q in every)
        assert sum(m.stats[task].queries for m in mined) == 6
    with pytest.raises(ConfigError, match="fold"):
        small_config(folds=2, fold=2).validate()


def test_a_low_type1_yield_is_said_with_what_the_slots_got_instead():
    from mmembed.mining.jobs import MiningStats, type1_yield_note

    low = MiningStats(queries=6010, negatives={"type1": 5, "type2": 6010, "random": 6005},
                      candidates={"type1": 5, "type2": 30000}, with_candidates={"type1": 5, "type2": 6010})
    note = type1_yield_note(low, {"num_type1": 1, "random_fallback": True})
    assert "5 of 6,010 training queries (0.1 %)" in note and "6,005 empty slots hold random candidates" in note
    assert "in-batch negatives only" in type1_yield_note(low, {"num_type1": 1, "random_fallback": False})
    fine = MiningStats(queries=100, candidates={"type1": 40}, with_candidates={"type1": 20})
    assert type1_yield_note(fine, {"num_type1": 1}) is None
    assert type1_yield_note(low, {"num_type1": 0}) is None  # text mining asks for no type-1 negative


def test_type1_depth_also_takes_wrong_modality_candidates_just_below_the_positive():
    from mmembed.mining.rule import NegativeRule, modality_aware_sets

    ranked = ["pos", "img1", "txt1", "img2", "txt2", "img3"]
    modalities = ["text", "image", "text", "image", "text", "image"]
    paper = modality_aware_sets(ranked, modalities, {"pos"}, "text", NegativeRule(k=6, window=(5, 6)))
    assert paper["type1"] == []  # the positive comes first: nothing above it
    deeper = modality_aware_sets(ranked, modalities, {"pos"}, "text", NegativeRule(k=6, window=(5, 6), type1_depth=4))
    assert deeper["type1"] == ["img1", "img2"] and deeper["type2"] == paper["type2"] == ["txt2"]
    with pytest.raises(ConfigError, match="type1_depth"):
        NegativeRule(k=6, window=(5, 6), type1_depth=7).validate()
