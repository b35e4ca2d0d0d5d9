"""benchmarks/gpu_check.py keeps working: its --tiny mode runs every check on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_check_in_tiny_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(gpu_check.CHECKS) <= set(results)
    for family in ("qwen2-vl-2b", "llava-next-7b"):
        assert results["encode"][family]["text"]["sequences_per_s"] > 0
        assert results["encode"][family]["vision"]["images_per_s"] > 0
    assert results["train_memory"]["global_batch"] == 32 and results["train_memory"]["trainable_params"] > 0
    assert results["golden"]["cpu_vs_golden_min_cosine"] > 0.99999
    assert results["golden"]["cpu_bfloat16_vs_cpu_min_cosine"] > 0.99
    assert results["topk"]["identical_lists"] == 1.0  # the CPU against itself in tiny mode
