"""The real M-BEIR layout: split-named MSCOCO pools, a decoy beside them, images linked in."""

from __future__ import annotations

import json

import pytest
from mbeir_real_layout import TASKS, build_real_layout
from toy import ToyEncoder

from mmembed.cli.main import main
from mmembed.data.layout import MBEIRDirectory
from mmembed.data.validate import validate_directory
from mmembed.eval.mbeir_runner import EvalConfig, run_evaluation

UNIIR_TEST_FILES = sorted(f"mbeir_{d}_task{t}_test.jsonl" for d, _, t in TASKS)


@pytest.fixture
def mbeir(tmp_path):
    return build_real_layout(tmp_path / "M-BEIR", tmp_path / "data" / "mbeir_images")


def test_discovery_finds_the_16_tasks_and_prefers_split_named_pools(mbeir):
    tasks = MBEIRDirectory(mbeir).tasks("test")
    assert sorted(t.queries.name for t in tasks) == UNIIR_TEST_FILES
    pools = {t.name: t.local_pool.name for t in tasks}
    assert pools["mscoco_task0"] == "mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert pools["mscoco_task3"] == "mbeir_mscoco_task3_test_cand_pool.jsonl"
    assert pools["visualnews_task0"] == "mbeir_visualnews_task0_cand_pool.jsonl"
    assert (mbeir / "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl").is_file()  # the decoy is there


def test_the_real_layout_validates_with_images_behind_a_symlink(mbeir, capsys):
    report = validate_directory(mbeir, decode_images=True)
    assert report.ok, report.lines()
    assert main(["data", "validate", str(mbeir)]) == 0
    assert "no problems" in capsys.readouterr().out


def test_evaluation_scores_mscoco_against_its_split_named_pool(mbeir, tmp_path):
    config = EvalConfig(instruction_modes=("none",), show_progress=False)
    results = run_evaluation(ToyEncoder(), mbeir, config, tmp_path / "out")
    local = {r.task: r for r in results.select("local", "none")}
    assert len(local) == 16
    assert local["mscoco_task0"].pool_file == "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert local["mscoco_task3"].pool_file == "cand_pool/local/mbeir_mscoco_task3_test_cand_pool.jsonl"
    assert all(r.score == 1.0 for r in local.values()), {t: r.score for t, r in local.items()}
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["pool_file"] for r in written["results"] if r["task"] == "mscoco_task0"} == {
        "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl", "cand_pool/global/mbeir_union_test_cand_pool.jsonl"}


def test_images_kept_elsewhere_are_found_with_image_root(tmp_path, capsys):
    elsewhere = tmp_path / "archive" / "mbeir_images"
    root = build_real_layout(tmp_path / "M-BEIR", elsewhere, link_images=False)
    assert main(["data", "validate", str(root)]) == 1  # images not under the data directory
    capsys.readouterr()
    assert main(["data", "validate", str(root), "--image-root", str(tmp_path / "archive")]) == 0
    config = EvalConfig(instruction_modes=("none",), pools=("local",), image_root=str(tmp_path / "archive"),
                        tasks=("nights_task4",), show_progress=False)
    assert run_evaluation(ToyEncoder(), root, config).results[0].score == 1.0
