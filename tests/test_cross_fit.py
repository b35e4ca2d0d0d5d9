"""Cross-fitted mining as a recipe step: fold models trained without their fold, each fold mined by
the model that did not see it, the outputs merged into one ordinary mining output."""

from __future__ import annotations

import json

import pytest
import yaml

from mmembed.data.mbeir import read_queries
from mmembed.errors import ConfigError
from mmembed.mining.folds import fold_of
from mmembed.recipe import load_recipe, run_recipe
from tests.test_recipe import train_yaml
from tests.toy import make_toy_mbeir


@pytest.fixture(scope="module")
def cross_fit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crossfit")
    root = make_toy_mbeir(tmp / "toy")
    out = tmp / "out"
    stage1 = train_yaml(tmp / "stage1.yaml", root, data={"mbeir": [{"root": str(root), "group_per_task": True}]})
    recipe = {"output_dir": str(out), "data": str(root), "steps": [
        {"name": "stage1", "train": stage1},
        {"name": "mine", "mine": {"data": str(root), "encoder": "stage1", "cross_fit": 2,
                                  "config": {"k": 12, "window": [9, 12], "chunk_size": 4, "seed": 3}}}],
        "evaluate": {"models": {"stage1": "stage1"}, "config": {"max_queries": 2}}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root, out, path, run_recipe(load_recipe(path), show_progress=False)


def test_fold_models_never_see_the_queries_they_mine(cross_fit_run):
    root, out, _, result = cross_fit_run
    assert dict(result.steps) == {"stage1": "ran", "mine": "ran"}
    for fold in range(2):
        folder = out / "mine" / "folds" / f"fold-{fold}"
        trained = {q.qid for f in (folder / "queries").glob("*.jsonl") for q in read_queries(f)}
        mined = {json.loads(line)["qid"] for f in (folder / "mine").glob("*.jsonl")
                 for line in f.read_text().splitlines()}
        assert trained and mined and not trained & mined
        assert all(fold_of(q, 2, 3) == fold for q in mined) and all(fold_of(q, 2, 3) != fold for q in trained)
        config = yaml.safe_load((folder / "model" / "final" / "train_config.yaml").read_text())
        assert all(m["queries"].startswith(str(folder / "queries")) for m in config["data"]["mbeir"])


def test_the_merged_output_is_an_ordinary_mining_output_in_query_order(cross_fit_run):
    from mmembed.training.assembly import build_dataset
    from mmembed.training.config import DataSettings, MBEIRData

    root, out, _, _ = cross_fit_run
    manifest = json.loads((out / "mine" / "mining.json").read_text())
    assert manifest["cross_fit"]["folds"] == 2 and len(manifest["fold_stats"]) == 2
    for task in ("toy_task0", "toy_task1", "toy_task3"):
        rows = [json.loads(line) for line in (out / "mine" / f"{task}.jsonl").read_text().splitlines()]
        original = read_queries(root / "query" / "train" / f"mbeir_{task}_train.jsonl")
        assert [r["qid"] for r in rows] == [q.qid for q in original]
        assert all("neg_cand_sets" in r for r in rows) and manifest["stats"][task]["queries"] == 6
    data = DataSettings(mbeir=[MBEIRData(root=str(root), negatives=str(out / "mine"))], num_negatives=2)
    assert len(build_dataset(data, seed=0)) == 18


def test_a_second_run_skips_the_cross_fitted_step(cross_fit_run, caplog):
    _, _, path, _ = cross_fit_run
    again = run_recipe(load_recipe(path), show_progress=False, report=False)
    assert dict(again.steps)["mine"] == "skipped"


def test_cross_fit_needs_a_training_step(tmp_path):
    recipe = {"steps": [{"name": "mine", "mine": {"data": "x", "encoder": "cpu-default", "cross_fit": 2}}],
              "evaluate": {"models": {"a": "cpu-default"}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="cross_fit needs"):
        load_recipe(path)
    recipe["steps"][0]["mine"]["cross_fit"] = 0
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="cross_fit must be"):
        load_recipe(path)
