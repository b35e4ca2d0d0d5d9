"""Evaluation protocol details: unjudged queries are reported, UniIR's text normalisation on request."""

from __future__ import annotations

import json
import logging

import pytest
from toy import ToyEncoder, make_toy_mbeir

from mmembed.data.layout import qrels_file
from mmembed.encoders.base import Item
from mmembed.errors import ConfigError
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation
from mmembed.eval.text_format import uniir_format, with_text_format


def test_a_query_without_a_qrels_line_is_counted_named_and_not_scored(tmp_path, caplog):
    data = make_toy_mbeir(tmp_path / "toy")
    qrels = data / qrels_file("toy", 0, "test")
    lines = qrels.read_text().splitlines()
    dropped = lines[0].split()[0]
    qrels.write_text("\n".join(lines[1:]) + "\n")
    config = EvalConfig(instruction_modes=("none",), pools=("local",), tasks=("toy_task0",), show_progress=False)
    with caplog.at_level(logging.WARNING):
        result = run_evaluation(ToyEncoder(), data, config).results[0]
    assert result.queries_without_qrels == 1 and result.num_queries == len(lines)
    assert dropped in caplog.text and "not scored" in caplog.text
    assert result.score == 1.0  # the toy encoder answers every judged query; the unjudged one is not a miss


@pytest.mark.parametrize(("raw", "formatted"), [
    ('  "a red dog"\r\n', "A red dog."),
    ("what is this?", "What is this?"),
    ("Wow!", "Wow!"),
    ('say "hi" now', 'Say "hi" now.'),  # only surrounding quotes go, as in UniIR's format_string
    ("", ""),
    (None, None),
])
def test_uniir_format_string(raw, formatted):
    assert uniir_format(raw) == formatted


def test_uniir_text_format_is_an_option_recorded_with_the_results(tmp_path):
    data = make_toy_mbeir(tmp_path / "toy")
    encoder = ToyEncoder()
    wrapped = with_text_format(encoder, "uniir")
    assert wrapped.encoder_id != encoder.encoder_id  # cached vectors of one format never serve the other
    seen = []
    original = encoder.encode_queries
    encoder.encode_queries = lambda items, *a, **k: seen.extend(i.text for i in items) or original(items, *a, **k)
    wrapped.encode_queries([Item("q", "red colour"), Item("r", None, None)])
    assert seen == ["Red colour.", None]
    del encoder.encode_queries
    config = EvalConfig(instruction_modes=("none",), pools=("local",), text_format="uniir", show_progress=False)
    run_evaluation(encoder, data, config, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["config"]["text_format"] == "uniir"
    assert written["config"]["encoder_id"].endswith("+uniir-text")
    with pytest.raises(ConfigError, match="text_format"):
        EvalConfig(text_format="lower").validate()


def test_an_empty_pool_is_named(tmp_path):
    from mmembed.errors import DataError

    data = make_toy_mbeir(tmp_path / "toy")
    (data / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl").write_text("")
    with pytest.raises(DataError, match="mbeir_union_test_cand_pool.jsonl.*the candidate pool is empty"):
        run_evaluation(ToyEncoder(), data, EvalConfig(instruction_modes=("none",), show_progress=False))
