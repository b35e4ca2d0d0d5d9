"""Two processes with gathered negatives train exactly like one process holding the whole batch.

Runs ``tests/dist_worker.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) and compares the
weights after a few DDP steps with the one-process run on the doubled batch — with plain backward
and with GradCache, with an even and an uneven split of the global batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dist_worker
import pytest
import torch

from mmembed.losses import gather_keys, gather_with_grad, global_sum, world

HERE = Path(__file__).parent


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def two_process_weights(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("dist") / "weights.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # --standalone: a local rendezvous on a free port, so parallel test runs cannot collide.
    cmd = [*torchrun(), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", str(HERE / "dist_worker.py"),
           str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out)


@pytest.mark.parametrize("case", [f"{m}/{b}" for m, b in dist_worker.CASES if m != "local"])
def test_two_processes_match_one_process_with_the_whole_batch(two_process_weights, case):
    mode, batch = case.split("/")
    expected = dist_worker.train(mode, int(batch))
    got = two_process_weights[case]
    initial = dist_worker.make_model().state_dict()
    for name, value in expected.items():
        assert (value - initial[name]).abs().max() > 1e-2  # training really moved the weights
        assert torch.allclose(got[name], value, atol=1e-5), f"{case} {name}: {(got[name] - value).abs().max()}"


def test_without_the_gather_the_runs_differ(two_process_weights):
    """Local negatives only: the comparison above can fail."""
    expected = dist_worker.train("gather", 8)
    got = two_process_weights["local/8"]
    assert any(not torch.allclose(got[k], expected[k], atol=1e-3) for k in expected)


def test_single_process_helpers_are_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    gathered, sizes = gather_with_grad(x)
    assert gathered is x and sizes == [3]
    assert gather_keys(torch.arange(4)).tolist() == [0, 1, 2, 3]
    assert global_sum(5) == 5 and world() == (0, 1)
