"""``mmembed recipe run --data DIR``: the recipe written for one's own M-BEIR directory, run end to end."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from mmembed.cli.main import main
from mmembed.cli.recipe import recipe_path
from mmembed.data.beir import BeirDoc, write_corpus, write_qrels, write_queries
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.mbeir import read_qrels, read_queries
from mmembed.errors import ConfigError
from mmembed.recipe.evaluation import ModelEvaluation
from mmembed.recipe.holdout import hold_out_val
from mmembed.recipe.own_data import own_data_recipe, scaled_settings
from mmembed.recipe.selection import choose
from tests.toy import COLOURS, make_toy_mbeir


def make_beir(root):
    write_corpus(root / "corpus.jsonl", [BeirDoc(f"d{i}", c, f"the colour {c}") for i, c in enumerate(COLOURS)])
    write_queries(root / "queries.jsonl", {f"q{i}": f"{c} things" for i, c in enumerate(COLOURS)})
    for split in ("train", "test"):
        write_qrels(root / "qrels" / f"{split}.tsv", {f"q{i}": {f"d{i}": 1} for i in range(len(COLOURS))})
    return root


def test_one_command_trains_mines_and_reports_on_a_users_directory(tmp_path, capsys):
    root, beir, out = make_toy_mbeir(tmp_path / "mine"), make_beir(tmp_path / "text"), tmp_path / "out"
    code = main(["recipe", "run", "--data", str(root), "--beir", str(beir), "--out", str(out), "--max-steps", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    for step in ("stage1: ran", "mine: ran", "stage2: ran", "mine-text: ran", "stage3: ran", "fusion: ran"):
        assert step in printed
    report = (out / "report.md").read_text()
    for section in ("## Summary", "## Local pool, per task", "## Global pool, per task", "## Modality error@5",
                    "## Hard-negative mining", "## Training runs", "## Time and memory"):
        assert section in report
    # the toy data has no val split: one was held out of train, said so, and chose the final model
    assert "has no val split: a seeded 10% of its training queries was held out as val" in report
    chosen = json.loads((out / "final.json").read_text())
    assert chosen["split"] == "val" and set(chosen["scores"]) == {"stage1", "stage2", "stage3"}
    best = max(chosen["scores"].values())
    assert chosen["scores"][chosen["chosen"]] == best
    assert chosen["chosen"] == next(label for label, score in chosen["scores"].items() if score == best)
    assert (out / "final").resolve() == (out / chosen["chosen"] / "final").resolve()
    assert f"**Final model: {chosen['chosen']}**" in report and f"final: {out / 'final'}" in printed
    mining = report.split("## Hard-negative mining")[1].split("## Training runs")[0]
    assert "type1 candidates" in mining and "mod.err@5" in mining and "| mine-text" in mining
    summary = report.split("## Summary")[1].split("## Local pool")[0]
    labels = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("|")]
    final = f"**{chosen['chosen']}** (final)"
    expected = ["start", "fusion", *(final if s == chosen["chosen"] else s for s in ("stage1", "stage2", "stage3"))]
    assert labels[2:] == expected  # after the header and its rule
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["evaluate"]["config"]["split"] == "test" and recipe["evaluate"]["beir"] == str(beir)
    stage2 = yaml.safe_load((out / "config" / "stage2.yaml").read_text())
    assert stage2["data"]["mbeir"][0]["negatives"] == str(out / "mine") and stage2["train"]["max_steps"] == 2
    assert (out / "stage3" / "final").is_dir() and (out / "mine" / "toy_task0.jsonl").is_file()
    # a second run finds every step done
    assert main(["recipe", "run", "--data", str(root), "--beir", str(beir), "--out", str(out), "--max-steps", "2"]) == 0
    assert "stage1: skipped" in capsys.readouterr().out


def test_sizes_scale_with_the_data():
    small, large = scaled_settings(18, 12), scaled_settings(48_000, 45_000)
    assert (small.batch_size, small.max_steps, small.k, small.window) == (2, 27, 12, (8, 12))
    assert (large.batch_size, large.max_steps, large.k, large.window) == (64, 150, 50, (46, 50))
    assert scaled_settings(18, 12, max_steps=3).max_steps == 3
    with pytest.raises(ConfigError, match="no query"):
        scaled_settings(0, 10)


def test_a_directory_without_a_train_split_or_an_evaluation_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train split"):
        own_data_recipe(str(tmp_path), str(tmp_path / "out"))
    root = make_toy_mbeir(tmp_path / "toy")
    with pytest.raises(ConfigError, match="no dev split"):
        own_data_recipe(str(root), str(tmp_path / "out"), eval_split_name="dev")
    with pytest.raises(ConfigError, match="either a recipe file or --data"):
        recipe_path(argparse.Namespace(recipe=None, data=None))


def test_a_held_out_val_split_leaves_train_and_the_users_directory_alone(tmp_path):
    root = make_toy_mbeir(tmp_path / "toy")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    view = hold_out_val(root, tmp_path / "view", share=0.34)
    source, held = MBEIRDirectory(root), MBEIRDirectory(view)
    for task in source.tasks("train"):
        train = {q.qid for q in read_queries(held.task(task.name, "train").queries)}
        val = {q.qid for q in read_queries(held.task(task.name, "val").queries)}
        assert len(val) == 2 and not train & val  # a third of six queries
        assert train | val == {q.qid for q in read_queries(task.queries)}
        assert set(read_qrels(held.task(task.name, "val").qrels)) == val
    assert main(["data", "validate", str(view)]) == 0
    assert hold_out_val(root, tmp_path / "again", share=0.34) and all(  # the same seed holds out the same queries
        (tmp_path / "again" / f.relative_to(view)).read_text() == f.read_text()
        for f in (view / "query" / "val").glob("*.jsonl"))
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def _evaluation(label: str, global_scores: list[float]) -> ModelEvaluation:
    rows = [{"task": f"t{i}", "pool": "global", "instructions": "random", "score": s, "modality_error": 0.1}
            for i, s in enumerate(global_scores)]
    return ModelEvaluation(label, f"runs/{label}/final", {"config": {"instruction_modes": ["random"]},
                                                          "results": rows})


def test_a_stage_worse_on_val_is_not_named_final():
    stage1, stage2 = _evaluation("stage1", [0.6, 0.4]), _evaluation("stage2", [0.5, 0.4])
    chosen = choose([stage1, stage2], "val")
    assert chosen.chosen == "stage1" and chosen.spec == "runs/stage1/final"
    assert chosen.reason == "stage1 has the best global-pool average on the val split: 50.0 (vs stage2 45.0)"
    assert choose([stage1, _evaluation("stage2", [0.6, 0.41])], "val").chosen == "stage2"
    assert choose([stage1, _evaluation("stage2", [0.6, 0.4])], "val").chosen == "stage1"  # a tie keeps the earlier
