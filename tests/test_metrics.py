"""Retrieval metrics: hand-computed cases, and agreement with pytrec_eval on random runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmembed.errors import ConfigError, DataError
from mmembed.eval.metrics import METRIC_NAMES, Metric, evaluate, parse_metric, per_query, topk_to_run

pytrec_eval = pytest.importorskip("pytrec_eval")

# q1 ranks a(1) x(-) b(2) c(0) d(1); q2 finds its only positive at rank 2; q3 is all ties
# (trec_eval orders ties by doc id descending: b9, b10, a); q4 is judged but missing from the
# run; q5 has no positive (skipped); q6 is not judged (ignored).
QRELS = {
    "q1": {"a": 1, "b": 2, "c": 0, "d": 1},
    "q2": {"e": 1},
    "q3": {"b9": 1, "a": 0},
    "q4": {"z": 1},
    "q5": {"y": 0},
}
RUN = {
    "q1": {"a": 0.9, "x": 0.8, "b": 0.7, "c": 0.6, "d": 0.1},
    "q2": {"f": 0.5, "e": 0.4},
    "q3": {"b10": 1.0, "a": 1.0, "b9": 1.0},
    "q5": {"y": 1.0},
    "q6": {"e": 1.0},
}


def test_hand_computed_values_per_query():
    assert per_query(RUN, QRELS, "hit@1") == {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    assert per_query(RUN, QRELS, "mrr@1") == {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    assert per_query(RUN, QRELS, "mrr@2")["q2"] == 0.5
    assert per_query(RUN, QRELS, "recall@3")["q1"] == pytest.approx(2 / 3)
    assert per_query(RUN, QRELS, "recall@5")["q1"] == pytest.approx(1.0)
    # map: precision at ranks 1, 3, 5 of the relevant docs, over 3 relevant docs.
    assert per_query(RUN, QRELS, "map@5")["q1"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert per_query(RUN, QRELS, "map@3")["q1"] == pytest.approx((1 + 2 / 3) / 3)
    # ndcg@3: DCG = 1/log2(2) + 2/log2(4) = 2; ideal gains 2, 1, 1.
    ideal = 2 + 1 / math.log2(3) + 1 / 2
    assert per_query(RUN, QRELS, "ndcg@3")["q1"] == pytest.approx(2 / ideal)
    assert per_query(RUN, QRELS, "ndcg@2")["q2"] == pytest.approx(1 / math.log2(3))


def test_hit_and_recall_differ_on_multi_positive_queries():
    # M-BEIR's "Recall@k" is hit@k: one positive of three found counts as a full hit.
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    run = {"q": {"a": 1.0, "n1": 0.9, "n2": 0.8}}
    assert evaluate(run, qrels, ["hit@3", "recall@3"]) == {"hit@3": 1.0, "recall@3": pytest.approx(1 / 3)}


def test_mean_counts_missing_queries_as_zero_and_skips_unjudgeable_ones():
    assert evaluate(RUN, QRELS, ["mrr@1"]) == {"mrr@1": 0.5}  # (1 + 0 + 1 + 0) / 4


def test_negative_grades_count_as_non_relevant_gain_zero():
    qrels = {"q": {"a": -2, "b": 1}}
    run = {"q": {"a": 2.0, "b": 1.0}}
    assert evaluate(run, qrels, ["ndcg@2", "mrr@2"]) == {"ndcg@2": pytest.approx(1 / math.log2(3)), "mrr@2": 0.5}


def test_evaluate_keeps_the_callers_spelling_of_names():
    assert set(evaluate(RUN, QRELS, ["nDCG@10", Metric("hit", 5)])) == {"nDCG@10", "hit@5"}


def test_no_evaluable_query_is_an_error():
    with pytest.raises(DataError, match="no query"):
        evaluate(RUN, {"q5": {"y": 0}}, ["hit@1"])


def test_nan_score_is_an_error_naming_query_and_doc():
    with pytest.raises(DataError, match=r"q1.*'a'|'a'.*q1"):
        evaluate({"q1": {"a": float("nan")}}, QRELS, ["hit@1"])


@pytest.mark.parametrize("spec", ["ndcg", "foo@3", "hit@", "hit@x", "@5", "", "hit@-1"])
def test_bad_metric_names_list_the_valid_ones(spec):
    with pytest.raises(ConfigError) as info:
        parse_metric(spec)
    for name in METRIC_NAMES:
        assert f"{name}@k" in str(info.value)


def test_zero_cutoff_is_refused():
    with pytest.raises(ConfigError, match="cutoff"):
        parse_metric("hit@0")


def test_parse_metric_is_case_insensitive():
    assert parse_metric(" NDCG@10 ") == Metric("ndcg", 10)
    assert str(parse_metric("Recall@5")) == "recall@5"


def test_topk_to_run_drops_padding_and_keeps_scores():
    ids = np.array([["a", "b", None], ["c", None, None]], dtype=object)
    scores = np.array([[0.5, 0.25, -np.inf], [1.0, -np.inf, -np.inf]], dtype=np.float32)
    assert topk_to_run(["q1", "q2"], ids, scores) == {"q1": {"a": 0.5, "b": 0.25}, "q2": {"c": 1.0}}
    assert topk_to_run(["q1"], [["a"]], np.array([[1.0]])) == {"q1": {"a": 1.0}}


def test_topk_to_run_refuses_bad_shapes_and_repeated_queries():
    scores = np.zeros((2, 1), dtype=np.float32)
    with pytest.raises(DataError, match="shapes"):
        topk_to_run(["q1"], [["a"], ["b"]], scores)
    with pytest.raises(DataError, match="'q1'"):
        topk_to_run(["q1", "q1"], [["a"], ["b"]], scores)


# --- agreement with pytrec_eval -------------------------------------------------------------

DOCS = ["a", "b", "b9", "b10", "B1", "d0", "d1", "d2", "d3", "d10", "zz", "é"]
QIDS = ["q0", "q1", "q2", "q3", "q4", "q5"]
SCORES = st.one_of(st.sampled_from([0.0, 0.5, 1.0, -1.0]), st.floats(-10, 10, allow_nan=False, width=32))
qrels_st = st.dictionaries(
    st.sampled_from(QIDS), st.dictionaries(st.sampled_from(DOCS), st.integers(-1, 3), min_size=1), min_size=1
)
run_st = st.dictionaries(st.sampled_from(QIDS), st.dictionaries(st.sampled_from(DOCS), SCORES))
K = st.sampled_from([1, 2, 3, 5, 10])


def _reference_top(docs: dict[str, float], k: int) -> dict[str, float]:
    """trec_eval's order written the obvious way: score descending, then doc id descending."""
    return dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k])


def _pytrec(run, qrels, measure: str) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
    return {qid: values[measure] for qid, values in evaluator.evaluate(run).items()}


def _expected(run, qrels, measure: str) -> dict[str, float]:
    """pytrec_eval per query, over our convention: judged queries with a positive, missing = 0."""
    got = _pytrec(run, qrels, measure)
    return {q: got.get(q, 0.0) for q, j in qrels.items() if any(g > 0 for g in j.values())}


def _assert_close(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert ours.keys() == theirs.keys()
    for qid in ours:
        assert ours[qid] == pytest.approx(theirs[qid], abs=1e-6), qid


@settings(max_examples=150, deadline=None)
@given(run=run_st, qrels=qrels_st, k=K)
def test_cut_metrics_agree_with_pytrec_eval(run, qrels, k):
    for ours, theirs in [("recall", "recall"), ("ndcg", "ndcg_cut"), ("map", "map_cut"), ("hit", "success")]:
        _assert_close(per_query(run, qrels, f"{ours}@{k}"), _expected(run, qrels, f"{theirs}_{k}"))


@settings(max_examples=150, deadline=None)
@given(run=run_st, qrels=qrels_st, k=K)
def test_mrr_at_k_agrees_with_pytrec_eval_on_the_truncated_run(run, qrels, k):
    truncated = {qid: _reference_top(docs, k) for qid, docs in run.items()}
    _assert_close(per_query(run, qrels, f"mrr@{k}"), _expected(truncated, qrels, "recip_rank"))


@settings(max_examples=100, deadline=None)
@given(run=run_st, qrels=qrels_st, k=K)
def test_hit_at_k_matches_its_definition_and_evaluate_is_the_mean(run, qrels, k):
    judged = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    reference = {q: float(any(j.get(d, 0) > 0 for d in _reference_top(run.get(q, {}), k))) for q, j in judged.items()}
    assert per_query(run, qrels, f"hit@{k}") == reference
    if judged:
        names = [f"{m}@{k}" for m in METRIC_NAMES]
        means = evaluate(run, qrels, names)
        for name in names:
            assert means[name] == pytest.approx(np.mean(list(per_query(run, qrels, name).values())), abs=1e-12)
