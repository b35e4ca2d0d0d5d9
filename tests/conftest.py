"""Shared fixtures: the toy M-BEIR dataset and the deterministic toy encoder."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Image features are cached on disk by default under the user cache directory: tests get their own.
os.environ.setdefault("MMEMBED_CACHE", tempfile.mkdtemp(prefix="mmembed-test-cache-"))
# Tiny models are dominated by threading overhead on this 2-core machine: one thread is faster.
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from toy import ToyEncoder, make_toy_mbeir  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in every test module, put back afterwards (a training run sets its own count).

    Tiny models and batches: two threads on a busy 2-core machine spin far more than they compute.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_truncation_warnings(monkeypatch):
    """Encoders warn about truncation once per process; a test using this sees its own first warning."""
    monkeypatch.setattr("mmembed.encoders.inputs._warned_truncation", set())


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    return make_toy_mbeir(tmp_path / "toy")


@pytest.fixture
def toy_encoder() -> ToyEncoder:
    return ToyEncoder()
