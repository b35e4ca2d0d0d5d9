"""The evaluation runner end to end, with the deterministic toy encoder on the toy M-BEIR dataset."""

from __future__ import annotations

import json

import pytest

from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.errors import ConfigError
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation
from mmembed.eval.tables import results_table
from mmembed.eval.trec import read_run


def _config(tmp_path, **kw):
    return EvalConfig(cache_dir=str(tmp_path / "cache"), show_progress=False, **kw)


def test_local_and_global_with_and_without_instructions(toy_dir, toy_encoder, tmp_path):
    out = tmp_path / "out"
    results = run_evaluation(toy_encoder, toy_dir, _config(tmp_path), out)
    settings = {(r.task, r.pool, r.instructions) for r in results.results}
    tasks = {"toy_task0", "toy_task1", "toy_task3"}
    assert settings == {(t, p, i) for t in tasks for p in ("local", "global") for i in ("random", "none")}
    for r in results.results:
        assert r.metric == "hit@5" and r.num_queries == 6
        assert r.score == 1.0  # the toy encoder always finds the matching colour
        assert (r.modality_error is None) == (r.pool == "local")
    # In the mixed global pool, the t->i queries see text distractors but rank an image first.
    t2i_global = read_run(out / "runs" / "global-none" / "toy_task0.trec")
    for qid, docs in t2i_global.items():
        best = max(docs, key=docs.get)
        assert best == "10:" + qid.split(":")[1]
    assert all(r.pool_size == 12 for r in results.results if r.pool == "global")
    assert all(r.pool_size == 6 for r in results.results if r.pool == "local")


def test_outputs_record_seed_and_instruction_choices(toy_dir, toy_encoder, tmp_path):
    out = tmp_path / "out"
    run_evaluation(toy_encoder, toy_dir, _config(tmp_path, seed=7), out)
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 7 and config["encoder_id"] == "toy-encoder-v1"
    chosen = json.loads((out / "instructions.json").read_text())
    assert set(chosen["toy_task0/random"].values()) <= {"Find the image of this colour.",
                                                        "Show me an image in this colour."}
    assert set(chosen["toy_task0/none"].values()) == {None}
    saved = json.loads((out / "results.json").read_text())
    assert saved["averages"]["local/none"] == 1.0
    # Same seed, same choices: the run can be repeated exactly.
    again = run_evaluation(toy_encoder, toy_dir, _config(tmp_path, seed=7))
    assert again.instructions == chosen


def test_pool_embeddings_are_cached_by_encoder_and_content(toy_dir, toy_encoder, tmp_path):
    config = _config(tmp_path, instruction_modes=["none"], pools=["global"])
    run_evaluation(toy_encoder, toy_dir, config)
    first = toy_encoder.calls
    run_evaluation(toy_encoder, toy_dir, config)
    assert toy_encoder.calls - first == 3  # only the three query files are embedded again
    pool = toy_dir / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    pool.write_text(pool.read_text().replace("a red square", "a crimson square"))
    calls = toy_encoder.calls
    run_evaluation(toy_encoder, toy_dir, config)
    assert toy_encoder.calls - calls == 4  # changed content: the pool is embedded again


def test_metric_and_task_selection(toy_dir, toy_encoder, tmp_path):
    results = run_evaluation(toy_encoder, toy_dir, _config(tmp_path, metric="mrr@10", tasks=["toy_task3"],
                                                           pools=["local"], instruction_modes=["fixed"]))
    assert [(r.task, r.metric) for r in results.results] == [("toy_task3", "mrr@10")]
    table = results_table(results)
    assert "toy_task3" in table and "average" in table and "100.0" in table
    with pytest.raises(ConfigError, match="available: toy_task0"):
        run_evaluation(toy_encoder, toy_dir, _config(tmp_path, tasks=["nope"]))
    with pytest.raises(ConfigError, match="unknown metric|valid"):
        run_evaluation(toy_encoder, toy_dir, _config(tmp_path, metric="precision@3"))


def test_cli_evaluate_with_yaml_and_overrides(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("pools: [local]\ninstruction_modes: [none]\nseed: 3\n")
    code = main(["evaluate", str(toy_dir), "--encoder", "toy", "--config", str(yaml_file),
                 "--set", "pools=[global]", "--set", f"cache_dir={tmp_path / 'c'}", "--out", str(tmp_path / "o")])
    assert code == 0
    out = capsys.readouterr().out
    assert "global/none" in out and "local/none" not in out and "mod.err@5" in out
    assert json.loads((tmp_path / "o" / "config.json").read_text())["seed"] == 3
    assert main(["evaluate", str(toy_dir), "--encoder", "toy", "--set", "depth=many"]) == 2
    assert "expected an integer" in capsys.readouterr().err


def test_beir_text_evaluation(tmp_path, toy_encoder, monkeypatch, capsys):
    from mmembed.data.beir import BeirDoc, write_corpus, write_qrels, write_queries
    from mmembed.eval.beir_runner import run_beir_evaluation

    root = tmp_path / "beir"
    colours = ["red", "green", "blue", "yellow"]
    write_corpus(root / "corpus.jsonl", [BeirDoc(f"d{i}", c, f"the colour {c}") for i, c in enumerate(colours)])
    write_queries(root / "queries.jsonl", {f"q{i}": f"{c} things" for i, c in enumerate(colours)})
    write_qrels(root / "qrels" / "test.tsv", {f"q{i}": {f"d{i}": 1} for i in range(4)})
    result = run_beir_evaluation(toy_encoder, root, output_dir=tmp_path / "out")
    assert result.num_queries == 4 and result.corpus_size == 4
    assert result.scores["ndcg@10"] == 1.0 and result.scores["mrr@10"] == 1.0
    assert (tmp_path / "out" / "runs" / "beir-beir-test.trec").is_file()
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    assert main(["evaluate", str(root), "--encoder", "toy"]) == 0
    assert "ndcg@10" in capsys.readouterr().out
