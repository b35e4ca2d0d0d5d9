"""Each shipped checkpoint retrieves at least as well as it did when shipped, on a fixed query set.

The set: the first 100 test queries (or all, when fewer) of four tasks of the demo-size bundled
benchmark — text->image, image->text, image+text->image and text->text — against their local pools,
with the first instruction of each task. Everything is deterministic (subset build, fixed
instructions, one thread), so these are the shipped models' exact scores; the floors sit a little
below them (measured 2026-11-30 on the checkpoints of the 300-step recipe: stage 1 0.412, stage 2
0.455, stage 3 0.445, fusion 0.542 mean hit@5; untrained 0.228 and untrained fusion towers 0.293)
and above the untrained models, so a checkpoint that loads wrongly, or a change that breaks the
shipped models, fails here.
"""

from __future__ import annotations

import pytest

from mmembed.data.bundled import build
from mmembed.encoders.registry import load_encoder
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

pytestmark = pytest.mark.slow

TASKS = ("emoji_task0", "emoji_task3", "emoji_task7", "wordnet_task1")
#: Shipped model -> (its untrained start, the floor of its mean hit@5 over TASKS).
FLOORS = {"cpu-default-stage1": ("cpu-default", 0.39), "cpu-default-stage2": ("cpu-default", 0.43),
          "cpu-default-stage3": ("cpu-default", 0.42), "cpu-default-fusion-stage1": ("cpu-default-fusion", 0.52)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "bench"
    build(root, subset=True)
    return root


@pytest.fixture(scope="module")
def mean_hit5(bench):
    config = EvalConfig(instruction_modes=("fixed",), pools=("local",), tasks=TASKS, max_queries=100,
                        show_progress=False)
    cache: dict[str, float] = {}

    def score(name: str) -> float:
        if name not in cache:
            results = run_evaluation(load_encoder(name), bench, config)
            cache[name] = sum(r.score for r in results.results) / len(results.results)
        return cache[name]

    return score


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_model_keeps_its_retrieval_score(mean_hit5, name):
    untrained, floor = FLOORS[name]
    got, start = mean_hit5(name), mean_hit5(untrained)
    assert got >= floor, f"{name}: mean hit@5 {got:.3f} below its floor {floor}"
    assert got > start + 0.05, f"{name}: {got:.3f} is not clearly above the untrained model's {start:.3f}"
