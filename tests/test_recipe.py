"""The recipe runner end to end on the toy data with tiny settings: every stage, skipping, the report."""

from __future__ import annotations

import pytest
import yaml

from mmembed.cli.main import main
from mmembed.data.beir import BeirDoc, write_corpus, write_qrels, write_queries
from mmembed.errors import ConfigError
from mmembed.recipe import load_recipe, run_recipe
from tests.toy import COLOURS, make_toy_mbeir


def train_yaml(path, root, **extra) -> str:
    config = {"seed": 0, "model": {"encoder": "cpu-default", "lora": {"enabled": True, "r": 2, "alpha": 4}},
              "data": {"mbeir": [{"root": str(root)}]}, "train": {"global_batch_size": 3, "max_steps": 2,
                                                                 "num_threads": 1},
              "optim": {"lr": 1e-3}, "logging": {"progress": False}, "checkpoint": {"export_dtype": "float16"}}
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    root = make_toy_mbeir(tmp / "toy")
    beir = tmp / "beir"
    write_corpus(beir / "corpus.jsonl", [BeirDoc(f"d{i}", c, f"the colour {c}") for i, c in enumerate(COLOURS)])
    for split in ("train", "test"):
        write_queries(beir / "queries.jsonl", {f"q{i}": f"{c} things" for i, c in enumerate(COLOURS)})
        write_qrels(beir / "qrels" / f"{split}.tsv", {f"q{i}": {f"d{i}": 1} for i in range(len(COLOURS))})
    out = tmp / "out"
    mined = {"mbeir": [{"root": str(root), "negatives": str(out / "mine")}]}
    stage1 = train_yaml(tmp / "stage1.yaml", root)
    # the toy pools hold six items per modality: small batches with one negative stay conflict-free
    small = {"global_batch_size": 2, "max_steps": 2, "num_threads": 1}
    stage2 = train_yaml(tmp / "stage2.yaml", root, data={**mined, "num_negatives": 1}, train=small)
    text = {"root": str(beir), "name": "colours", "hard_negatives": str(out / "text" / "negatives.jsonl")}
    stage3 = train_yaml(tmp / "stage3.yaml", root, model={"encoder": str(out / "stage2" / "final")},
                        train=small, data={**mined, "num_negatives": 1, "beir": [text]}, optim={"lr": 2e-4})
    recipe = {"output_dir": str(out), "data": str(root), "steps": [
        {"name": "stage1", "train": stage1},
        {"name": "mine", "mine": {"data": str(root), "encoder": "stage1",
                                  "config": {"k": 12, "window": [9, 12], "chunk_size": 4}}},
        {"name": "stage2", "train": stage2},
        {"name": "text", "mine": {"data": str(beir), "encoder": "stage2",
                                  "config": {"k": 6, "window": [4, 6], "num_type1": 0, "num_type2": 2}}},
        {"name": "stage3", "train": stage3}],
        "evaluate": {"models": {"untrained": "cpu-default", "stage1": "stage1", "stage3": "stage3"},
                     "config": {"max_queries": 3}, "beir": str(beir)}}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))  # the models keep their order
    return path


@pytest.fixture(scope="module")
def first_run(recipe_file):
    return run_recipe(load_recipe(recipe_file), show_progress=False)


def test_every_step_runs_and_the_report_is_written(first_run):
    assert first_run.steps == [("stage1", "ran"), ("mine", "ran"), ("stage2", "ran"), ("text", "ran"),
                               ("stage3", "ran")]
    assert [e.label for e in first_run.evaluations] == ["untrained", "stage1", "stage3"]
    assert all(e.beir and "ndcg@10" in e.beir["scores"] for e in first_run.evaluations)
    report = first_run.report.read_text()
    for heading in ("## Summary", "## Local pool, per task", "## Global pool, per task", "## Modality error@5",
                    "## Hard-negative mining", "## Training runs"):
        assert heading in report
    assert "| stage3" in report or "stage3 |" in report
    plots = first_run.output_dir / "plots"
    for name in ("scores_by_stage.png", "modality_error_by_stage.png", "loss_curves.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_second_run_skips_every_finished_step(recipe_file, first_run, capsys):
    results = sorted((first_run.output_dir / "eval").glob("*/*.json"))
    written = {p: p.stat().st_mtime_ns for p in results}
    assert main(["recipe", "run", str(recipe_file)]) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == written  # evaluations reused, not redone
    out = capsys.readouterr().out
    for name in ("stage1", "mine", "stage2", "text", "stage3"):
        assert f"{name}: skipped" in out
    assert "text nDCG@10" in out


def test_a_changed_training_configuration_is_refused_not_mixed(recipe_file, first_run):
    recipe = load_recipe(recipe_file)
    recipe.steps[0].set = ["optim.lr=0.5"]
    with pytest.raises(ConfigError, match="stage1.*another configuration"):
        run_recipe(recipe, show_progress=False)


def test_recipe_files_are_checked(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"name": "a", "train": "x.yaml", "mine": {"data": "d", "encoder": "e"}}],
                                    "evaluate": {"models": {"m": "a"}}}))
    with pytest.raises(ConfigError, match="exactly one of 'train' or 'mine'"):
        load_recipe(path)
    assert main(["recipe", "run", str(path)]) == 2


def test_the_shipped_recipes_load():
    recipe = load_recipe("recipes/cpu-default/recipe.yaml")
    assert [s.name for s in recipe.steps] == ["stage1", "mine", "stage2", "mine-text", "stage3", "fusion"]
    from mmembed.recipe.run import step_train_config

    for step in recipe.training_steps():
        assert step_train_config(recipe, step).output_dir == f"runs/cpu-default/{step.name}"


def test_report_tables_show_shares_as_percentages():
    from mmembed.recipe.report import summary_table, task_table
    from mmembed.recipe.run import ModelEvaluation

    rows = [{"task": "t0", "arrow": "t->i", "metric": "hit@5", "pool": pool, "instructions": "random",
             "score": score, "modality_error": error}
            for pool, score, error in (("local", 0.25, None), ("global", 0.125, 0.5))]
    evaluation = ModelEvaluation("m", "m", {"config": {"instruction_modes": ["random"]}, "results": rows},
                                 {"scores": {"ndcg@10": 0.3}})
    assert "| m     | 25.0      | 12.5       | 50.0" in summary_table([evaluation])
    assert "| t0      | t->i | mod.err | 50.0 |" in task_table([evaluation], "global", "modality_error")
