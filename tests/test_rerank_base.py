"""The reranking protocol without a model: fusion math, ordering, top-k, runs, templates, config."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from mmembed.config import load_config
from mmembed.encoders.base import Item
from mmembed.errors import ConfigError, DataError
from mmembed.rerank import RerankConfig, Reranker, fuse, fuse_results, normalize_scores, rerank_run
from mmembed.rerank.base import BaseReranker, common_prefix_length
from mmembed.rerank.templates import (
    DEFAULT_TEMPLATES,
    IMAGE_PART,
    AnswerTokens,
    pair_content,
    question_for,
    resolve_templates,
    task_of,
)
from mmembed.types import Modality, Task


class TableReranker(BaseReranker):
    """Scores a pair by a fixed table keyed by candidate id; records what it was asked."""

    reranker_id = "table"

    def __init__(self, table: dict[str, float], **kwargs):
        super().__init__(**kwargs)
        self.table = table
        self.calls: list[list[tuple[str, str, str | None]]] = []

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item], instructions=None, *,
                    show_progress: bool = False) -> np.ndarray:
        instructions = instructions or [None] * len(queries)
        self.calls.append([(q.id, c.id, i) for q, c, i in zip(queries, candidates, instructions)])
        return np.array([self.table[c.id] for c in candidates])


def items(*ids: str) -> list[Item]:
    return [Item(i, f"text {i}") for i in ids]


# ----------------------------------------------------------------------------- fusion


def test_minmax_normalisation_maps_to_unit_interval_and_constant_to_zero():
    assert normalize_scores(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalize_scores(np.array([7.0, 7.0])).tolist() == [0.0, 0.0]
    assert normalize_scores(np.array([-3.0, 1.0]), "none").tolist() == [-3.0, 1.0]
    with pytest.raises(ConfigError, match="normalization"):
        normalize_scores(np.array([1.0]), "zscore")


def test_fusion_is_the_weighted_sum_of_per_query_minmax_scores():
    retrieval = np.array([0.9, 0.8, 0.5])      # -> 1, 0.75, 0
    rerank = np.array([-4.0, -1.0, -2.0])      # -> 0, 1, 2/3
    fused = fuse(retrieval, rerank, alpha=0.25)
    np.testing.assert_allclose(fused, [0.25 * 1 + 0.75 * 0, 0.25 * 0.75 + 0.75 * 1, 0.25 * 0 + 0.75 * 2 / 3])
    np.testing.assert_array_equal(fuse(retrieval, rerank, alpha=0.0), rerank)  # raw rerank score when alpha=0
    with pytest.raises(ConfigError, match="alpha"):
        fuse(retrieval, rerank, alpha=1.5)
    with pytest.raises(ConfigError, match="retrieval scores"):
        fuse(None, rerank, alpha=0.5)


def test_alpha_one_keeps_retrieval_order_and_alpha_zero_follows_the_reranker():
    cands = items("a", "b", "c")
    table = {"a": 0.1, "b": 0.9, "c": 0.5}
    only_rerank = TableReranker(table).rerank(Item("q", "q"), cands, retrieval_scores=[3.0, 2.0, 1.0])
    assert [r.id for r in only_rerank] == ["b", "c", "a"]
    only_retrieval = TableReranker(table, alpha=1.0).rerank(Item("q", "q"), cands, retrieval_scores=[3.0, 2.0, 1.0])
    assert [r.id for r in only_retrieval] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- ordering and top-k


def test_only_the_top_k_are_scored_and_the_tail_keeps_its_order_below_them():
    reranker = TableReranker({c: float(i) for i, c in enumerate("abcdef")}, top_k=3)
    results = reranker.rerank(Item("q", "q"), items(*"abcdef"), "instr", retrieval_scores=[6, 5, 4, 3, 2, 1])
    assert [r.id for r in results] == ["c", "b", "a", "d", "e", "f"]
    assert [r.rank for r in results] == [1, 2, 3, 4, 5, 6]
    assert [c for _, c, _ in reranker.calls[0]] == ["a", "b", "c"]  # the tail is never scored
    assert {i for _, _, i in reranker.calls[0]} == {"instr"}
    tail = results[3]
    assert not tail.reranked and tail.score is None and tail.retrieval_score == 3.0 and tail.retrieval_rank == 4
    head = results[0]
    assert head.reranked and head.rerank_score == 2.0 and head.retrieval_rank == 3


def test_ties_keep_the_retrieval_order():
    results = TableReranker({"a": 0.5, "b": 0.5, "c": 0.5}).rerank(Item("q", "q"), items("c", "a", "b"))
    assert [r.id for r in results] == ["c", "a", "b"]


def test_rerank_many_scores_all_queries_in_one_call():
    reranker = TableReranker({"a": 1.0, "b": 2.0, "c": 0.0})
    out = reranker.rerank_many([Item("q1", "x"), Item("q2", "y")], [items("a", "b"), items("c", "b")])
    assert len(reranker.calls) == 1 and len(reranker.calls[0]) == 4
    assert [[r.id for r in rows] for rows in out] == [["b", "a"], ["b", "c"]]


def test_mismatched_retrieval_scores_name_the_query():
    with pytest.raises(DataError, match="q7"):
        TableReranker({"a": 1.0}).rerank(Item("q7", "x"), items("a"), retrieval_scores=[1.0, 2.0])


def test_invalid_settings_are_config_errors():
    with pytest.raises(ConfigError, match="top_k"):
        TableReranker({}, top_k=0)
    with pytest.raises(ConfigError, match="alpha"):
        TableReranker({}, alpha=-0.1)
    fusing = TableReranker({"a": 1.0}, alpha=0.5)
    with pytest.raises(ConfigError, match="retrieval scores"):
        fusing.rerank(Item("q", "x"), items("a"))
    assert fusing.calls == []  # refused before any pair was scored


def test_rerank_run_reorders_runs_and_keeps_scores_monotone_in_rank():
    reranker = TableReranker({"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.0}, top_k=3)
    run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}}
    new_run, details = rerank_run(reranker, run, {"q1": Item("q1", "x")}, {k: Item(k, k) for k in "abcd"},
                                  {"q1": "find"})
    assert sorted(new_run["q1"], key=lambda d: -new_run["q1"][d]) == ["b", "c", "a", "d"]
    assert [r.id for r in details["q1"]] == ["b", "c", "a", "d"]
    with pytest.raises(DataError, match="zz"):
        rerank_run(reranker, {"q1": {"zz": 1.0}}, {"q1": Item("q1", "x")}, {})
    # candidates below top_k need no item
    tail_run, _ = rerank_run(reranker, run, {"q1": Item("q1", "x")}, {k: Item(k, k) for k in "abc"})
    assert sorted(tail_run["q1"], key=lambda d: -tail_run["q1"][d]) == ["b", "c", "a", "d"]


def test_fuse_results_reorders_kept_scores_as_scoring_again_would():
    table = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.0}
    retrieval = [0.9, 0.8, 0.2, 0.1]
    scored = TableReranker(table, top_k=3, alpha=0.0).rerank(Item("q", "x"), items(*"abcd"), retrieval_scores=retrieval)
    for alpha in (0.0, 0.5, 0.9, 1.0):
        again = TableReranker(table, top_k=3, alpha=alpha).rerank(Item("q", "x"), items(*"abcd"),
                                                                  retrieval_scores=retrieval)
        assert fuse_results(scored, alpha) == again
    assert [r.id for r in fuse_results(scored, 0.9)] == ["a", "b", "c", "d"]  # retrieval dominates
    assert [r.id for r in fuse_results(scored, 0.0)] == ["b", "c", "a", "d"]


def test_base_reranker_satisfies_the_protocol():
    assert isinstance(TableReranker({}), Reranker)


# ----------------------------------------------------------------------------- templates


def _item(modality: Modality, name: str) -> Item:
    image = Image.new("RGB", (8, 8)) if modality.has_image else None
    return Item(name, f"{name} text" if modality.has_text else None, image)


@pytest.mark.parametrize("task_id", range(9))
def test_a_template_renders_for_every_task_type(task_id):
    task = Task.from_id(task_id)
    query, cand = _item(task.query_modality, "q"), _item(task.cand_modality, "c")
    assert task_of(query, cand) == task
    question = question_for(query, cand, resolve_templates())
    assert question.endswith("True or False") and "{" not in question
    parts = pair_content(query, cand, question, "an instruction")
    assert parts[0]["text"] == "Task: an instruction\n" and parts[-1]["text"] == question
    assert parts.count(IMAGE_PART) == int(query.image is not None) + int(cand.image is not None)
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert any("q text" in t for t in texts) == task.query_modality.has_text
    assert any("c text" in t for t in texts) == task.cand_modality.has_text
    # the query comes before the candidate (what prefix reuse relies on)
    labels = [t for t in texts if t in ("Query:\n", "Candidate:\n")]
    assert labels == ["Query:\n", "Candidate:\n"]


def test_template_overrides_and_answer_words():
    templates = resolve_templates({"3": "Is it {true}?", 5: "Other"})
    assert templates[3] == "Is it {true}?" and templates[5] == "Other" and templates[0] == DEFAULT_TEMPLATES[0]
    query, cand = _item(Modality.IMAGE, "q"), _item(Modality.TEXT, "c")
    assert question_for(query, cand, templates, ("Yes", "No")) == "Is it Yes?"
    with pytest.raises(ConfigError, match="task id"):
        resolve_templates({9: "x"})
    with pytest.raises(ConfigError, match="task id"):
        resolve_templates({"caption": "x"})


def test_answer_tokens_cover_spellings_with_and_without_a_space():
    from mmembed.testing.tiny_models import qwen_tokenizer

    tok = qwen_tokenizer()
    answers = AnswerTokens.from_tokenizer(tok)
    assert set(answers.true_ids) == {tok.convert_tokens_to_ids("True"), tok.convert_tokens_to_ids("ĠTrue")}
    assert set(answers.false_ids) == {tok.convert_tokens_to_ids("False"), tok.convert_tokens_to_ids("ĠFalse")}
    import torch

    logits = torch.full((1, len(tok)), -50.0)
    logits[0, answers.true_ids[0]] = 2.0  # mass on one spelling of True only
    logits[0, answers.false_ids[0]] = 0.0
    logits[0, answers.false_ids[1]] = 0.0
    expected = np.exp(2.0) / (np.exp(2.0) + 2.0)
    assert float(answers.p_true(logits)[0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="answer_words"):
        AnswerTokens.from_tokenizer(tok, ["True"])


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0


# ----------------------------------------------------------------------------- config


def test_rerank_config_loads_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "rerank.yaml"
    path.write_text("model: smollm2\nmode: p_true\ntop_k: 5\nalpha: 0.3\n"
                    "templates:\n  1: 'Relevant? {true} or {false}'\n"
                    "answer_words: ['Yes', 'No']  # quoted: YAML reads bare Yes/No as booleans\n", encoding="utf-8")
    config = load_config(RerankConfig, path, ["batch_size=4", "templates.3=Describes it?"])
    assert (config.mode, config.top_k, config.alpha, config.batch_size) == ("p_true", 5, 0.3, 4)
    assert config.answer_words == ["Yes", "No"]
    assert resolve_templates(config.templates)[3] == "Describes it?"
    assert config.resolved_kind() == "llm"
    with pytest.raises(ConfigError, match="mode"):
        load_config(RerankConfig, None, ["mode=yes_no"])


def test_unknown_reranker_model_path_is_a_clear_error(tmp_path):
    from mmembed.errors import ModelError

    with pytest.raises(ModelError, match="config.json"):
        RerankConfig(model=str(tmp_path)).resolved_kind()
