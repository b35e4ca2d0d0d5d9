"""Re-scoring mmembed's run files reproduces results.json exactly, ties included.

Two independent scorers: UniIR's hit@k written from its published definition (a query scores 1
when one of its relevant candidates is among the first k it retrieved, by rank; the task score is
the mean), and pytrec_eval (trec_eval's success / recall / ndcg_cut). The global pool of the
real-layout fixture holds identical images under many ids, so exact score ties straddle the
cut-offs: the tie rule of the metrics and of the run files must be the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from mbeir_real_layout import build_real_layout
from toy import ToyEncoder

from mmembed.data.mbeir import read_qrels
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

pytrec_eval = pytest.importorskip("pytrec_eval")
EXACT = 1e-12  # only float summation order may differ


def _ranked_run(path: Path) -> dict[str, list[tuple[int, str, float]]]:
    rows: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, _, did, rank, score, _ = line.split()
        rows[qid].append((int(rank), did, float(score)))
    return {qid: sorted(r) for qid, r in rows.items()}


def uniir_hit_at_k(run: dict[str, list[tuple[int, str, float]]], qrels: dict[str, dict[str, int]], k: int) -> float:
    hits = [any(qrels[qid].get(did, 0) > 0 for _, did, _ in run.get(qid, [])[:k]) for qid in qrels]
    return sum(hits) / len(hits)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescore")
    data = build_real_layout(root / "M-BEIR", root / "images")
    config = EvalConfig(instruction_modes=("none",), show_progress=False,
                        extra_metrics=("hit@1", "recall@5", "ndcg@10"))
    run_evaluation(ToyEncoder(), data, config, root / "out")
    return data, root / "out"


def test_run_files_hold_exact_ties_across_cut_offs(evaluated):
    _, out = evaluated
    tied = 0
    for path in (out / "runs" / "global-none").glob("*.trec"):
        for rows in _ranked_run(path).values():
            tied += any(rows[i][2] == rows[i + 1][2] for i in range(min(len(rows) - 1, 6)))
    assert tied > 0  # otherwise this test would not exercise the tie rule


def test_rescoring_run_files_reproduces_results_json(evaluated):
    data, out = evaluated
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    checked = 0
    for result in results:
        path = out / "runs" / f"{result['pool']}-{result['instructions']}" / f"{result['task']}.trec"
        dataset, task = result["task"].rsplit("_task", 1)
        qrels = read_qrels(data / "qrels" / "test" / f"mbeir_{dataset}_task{task}_test_qrels.txt")
        run = _ranked_run(path)
        scores = result["scores"]
        for k in (1, 5, 10):
            if f"hit@{k}" in scores:
                assert abs(uniir_hit_at_k(run, qrels, k) - scores[f"hit@{k}"]) <= EXACT, (path.name, k)
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"success", "recall", "ndcg_cut"})
        per_query = evaluator.evaluate({qid: {did: s for _, did, s in rows} for qid, rows in run.items()})
        mean = {m: sum(q[m] for q in per_query.values()) / len(per_query) for m in next(iter(per_query.values()))}
        assert abs(mean["success_5"] - scores["hit@5"]) <= EXACT if "hit@5" in scores else True
        assert abs(mean["success_1"] - scores["hit@1"]) <= EXACT, path
        assert abs(mean["recall_5"] - scores["recall@5"]) <= EXACT, path
        assert abs(mean["ndcg_cut_10"] - scores["ndcg@10"]) <= EXACT, path
        checked += 1
    assert checked == 32  # 16 tasks x (local, global)
