"""CLIPEncoder (CLIP and SigLIP): UniIR score fusion, modality routing, instructions, checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.encoders.clip import CLIPEncoder, fuse
from mmembed.encoders.prompts import uniir_query_text
from mmembed.encoders.registry import load_encoder
from mmembed.errors import DataError, ModelError
from mmembed.testing.tiny_models import DUAL_FAMILIES, build_tiny


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_dual")
    return {family: CLIPEncoder.from_hf(build_tiny(family, root / family)) for family in DUAL_FAMILIES}


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_fusion_is_the_normalised_sum_of_normalised_embeddings():
    t, i = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, -2.0]])
    expected = torch.tensor([[0.6, 0.8 - 1.0]])
    torch.testing.assert_close(fuse(t, i), F.normalize(expected, dim=-1))


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_modalities_are_routed_to_their_towers_and_fused(encoders, family):
    enc = encoders[family]
    image = _image(0)
    rows = enc.encode_candidates([Item("it", "a red dog", image), Item("t", "a red dog"), Item("i", None, image)])
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        text = enc._text(["a red dog"], ["t"])[0].numpy()
        pixels = enc._image([image])[0].numpy()
    np.testing.assert_allclose(rows[1], _normalize(text), atol=1e-6)
    np.testing.assert_allclose(rows[2], _normalize(pixels), atol=1e-6)
    np.testing.assert_allclose(rows[0], _normalize(_normalize(text) + _normalize(pixels)), atol=1e-6)


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_instruction_is_prepended_to_the_query_text_as_in_uniir(encoders, family):
    enc = encoders[family]
    image = _image(1)
    queries = [Item("q1", "a boat", image), Item("q2", None, image), Item("q3", "a boat")]
    got = enc.encode_queries(queries, "Find a photo.")
    as_candidates = enc.encode_candidates([Item("c1", "Find a photo. a boat", image),
                                           Item("c2", "Find a photo.", image), Item("c3", "Find a photo. a boat")])
    np.testing.assert_allclose(got, as_candidates, atol=1e-6)
    assert uniir_query_text(None, "Find.") == "Find." and uniir_query_text("x", None) == "x"
    np.testing.assert_allclose(enc.encode_queries(queries[2:]), enc.encode_candidates(queries[2:]), atol=1e-6)


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_rows_do_not_depend_on_batch_mates(encoders, family):
    enc = encoders[family]
    items = [Item("a", "a dog"), Item("b", "two cats sitting on a small table near the river"),
             Item("c", None, _image(2))]
    np.testing.assert_allclose(enc.encode_candidates(items, batch_size=1), enc.encode_candidates(items), atol=1e-5)


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_save_load_round_trip_is_identical_and_type_checked(encoders, family, tmp_path):
    from mmembed.encoders.vlm import VLMEncoder

    enc = encoders[family]
    items = [Item("a", "a dog", _image(3)), Item("b", "a cat")]
    enc.save_pretrained(tmp_path / "ck")
    loaded = load_encoder(tmp_path / "ck")
    assert isinstance(loaded, CLIPEncoder)
    np.testing.assert_array_equal(loaded.encode_candidates(items), enc.encode_candidates(items))
    with pytest.raises(ModelError, match="cannot be loaded as a 'vlm' encoder"):
        VLMEncoder.from_pretrained(tmp_path / "ck")


def test_bad_input_and_truncation(encoders, caplog, fresh_truncation_warnings):
    enc = encoders["clip"]
    with pytest.raises(DataError, match="'nothing'"):
        enc.encode_candidates([Item("nothing")])
    with caplog.at_level(logging.WARNING, logger="mmembed.encoders.inputs"):
        rows = enc.encode_candidates([Item(f"long{i}", "a dog on a tree " * 40) for i in range(3)])
        enc.encode_candidates([Item("long9", "a dog on a tree " * 40)])
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
    assert np.all(np.isfinite(rows))


def test_other_model_types_are_refused(tmp_path_factory):
    from transformers import AutoModel

    path = build_tiny("qwen2_vl", tmp_path_factory.mktemp("q") / "qwen2_vl")
    with pytest.raises(Exception, match="supports clip"):
        CLIPEncoder(AutoModel.from_pretrained(path), None)
