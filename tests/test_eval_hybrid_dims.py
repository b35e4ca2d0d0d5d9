"""evaluate --set hybrid=... (dense fused with BM25) and --set dims=[...] (one score per dimension), on the toy data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmembed.cli import common
from mmembed.cli.main import main
from mmembed.errors import ConfigError
from mmembed.eval.dims import run_dims_evaluation
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation
from mmembed.eval.trec import read_run


def test_hybrid_evaluation_fuses_every_run(toy_dir, toy_encoder, tmp_path):
    pytest.importorskip("bm25s")
    dense = run_evaluation(toy_encoder, toy_dir, EvalConfig(show_progress=False), tmp_path / "dense")
    fused = run_evaluation(toy_encoder, toy_dir, EvalConfig(show_progress=False, hybrid="rrf"), tmp_path / "rrf")
    assert len(fused.results) == len(dense.results)
    assert json.loads((tmp_path / "rrf" / "config.json").read_text())["hybrid"] == "rrf"
    # t->t: "the red one" shares no term with "a red square"... but "red" it does: BM25 lists it, the fused
    # run's scores are RRF values (at most 2 / 61), not cosines
    run = read_run(tmp_path / "rrf" / "runs" / "local-none" / "toy_task1.trec")
    assert all(0 < s <= 2 / 61 + 1e-9 for docs in run.values() for s in docs.values())
    # image queries (i->t) have no text: their fused ranking is the dense one
    dense_i2t = read_run(tmp_path / "dense" / "runs" / "local-none" / "toy_task3.trec")
    fused_i2t = read_run(tmp_path / "rrf" / "runs" / "local-none" / "toy_task3.trec")
    for qid, docs in dense_i2t.items():
        assert sorted(docs, key=docs.get, reverse=True) == sorted(fused_i2t[qid], key=fused_i2t[qid].get,
                                                                    reverse=True)
    with pytest.raises(ConfigError, match="hybrid must be one of rrf, weighted, bm25"):
        EvalConfig(hybrid="max").validate()


def test_dims_evaluation_embeds_once_and_scores_each(toy_dir, toy_encoder, tmp_path, monkeypatch, capsys):
    calls = []
    original = type(toy_encoder).encode_candidates

    def counting(self, candidates, **kw):
        calls.append(len(candidates))
        return original(self, candidates, **kw)

    monkeypatch.setattr(type(toy_encoder), "encode_candidates", counting)
    config = EvalConfig(show_progress=False, dims=[toy_encoder.dim, 8, 2], instruction_modes=["none"])
    results = run_dims_evaluation(toy_encoder, toy_dir, config, tmp_path / "out")
    assert sorted(results) == [2, 8, toy_encoder.dim]
    assert len(calls) == 1  # the global pool embedded once (local pools are masks of it), for all three dims
    table = json.loads((tmp_path / "out" / "dims.json").read_text())
    assert table["dims"] == [toy_encoder.dim, 8, 2]
    full = np.mean([r.score for r in results[toy_encoder.dim].results])
    assert full == 1.0 and np.mean([r.score for r in results[2].results]) < full  # 2 dims lose the colours
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    assert main(["evaluate", str(toy_dir), "--encoder", "toy", "--set", "dims=[8,4]", "--set",
                 "instruction_modes=[none]"]) == 0
    out = capsys.readouterr().out
    assert "| task | pool | instructions | metric | 8 | 4 |" in out and "**average**" in out
    assert main(["evaluate", str(toy_dir), "--encoder", "toy", "--set", f"dims=[{toy_encoder.dim + 1}]"]) == 2
    assert "between 1 and the model's dimension" in capsys.readouterr().err


def test_dims_do_not_combine_with_hybrid_or_the_plain_runner(toy_dir, toy_encoder, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="run_dims_evaluation"):
        run_evaluation(toy_encoder, toy_dir, EvalConfig(show_progress=False, dims=[8]))
    monkeypatch.setattr(common, "load_encoder_arg", lambda *args, **kwargs: toy_encoder)
    assert main(["evaluate", str(toy_dir), "--encoder", "toy", "--set", "dims=[8]", "--set", "hybrid=rrf"]) == 2
    assert "does not combine with --rerank or hybrid" in capsys.readouterr().err
