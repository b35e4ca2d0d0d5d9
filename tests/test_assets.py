"""The trained checkpoints shipped with the package: what the recipe wrote, small, loadable, trained."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mmembed.assets import ROOT, SHIPPED
from mmembed.encoders.base import Item
from mmembed.encoders.registry import load_encoder, named_models

SUMS = ROOT / "cpu-default" / "SHA256SUMS"


def recorded_sums() -> dict[str, str]:
    """run name -> sha256 of its model.safetensors as the recipe wrote it."""
    rows = [line.split() for line in SUMS.read_text().splitlines() if line.strip()]
    return {path.split("/")[0]: digest for digest, path in rows}


def test_every_shipped_model_is_registered_and_matches_the_recipe_output():
    sums = recorded_sums()
    assert set(sums) == {relative.split("/")[1] for relative in SHIPPED.values()}
    for name, relative in SHIPPED.items():
        weights = ROOT / relative / "model.safetensors"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == sums[relative.split("/")[1]], name
        assert name in named_models()


@pytest.mark.parametrize("relative", sorted(SHIPPED.values()))
def test_each_shipped_checkpoint_is_under_10_mb(relative):
    size = sum(p.stat().st_size for p in (ROOT / relative).rglob("*") if p.is_file())
    assert size < 10_000_000, f"{relative}: {size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_embed_differently_from_the_untrained_one(name, tiny_png):
    items = [Item("q1", "a smiling cat face", None), Item("q2", "cat", tiny_png)]
    trained = load_encoder(name).encode_queries(items, "Retrieve the emoji image for this name.")
    base = "cpu-default-fusion" if "fusion" in name else "cpu-default"
    untrained = load_encoder(base).encode_queries(items, "Retrieve the emoji image for this name.")
    assert trained.shape == (2, 384) and np.allclose(np.linalg.norm(trained, axis=1), 1, atol=1e-5)
    assert np.abs(trained - untrained).max() > 1e-2


@pytest.fixture
def tiny_png(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (220, 30, 30)).save(path)
    from mmembed.data.images import load_image_file

    return load_image_file(path, "q2")
