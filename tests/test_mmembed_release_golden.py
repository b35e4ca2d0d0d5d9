"""The released MM-Embed's own vectors, reproduced through ``load_encoder`` (golden fixture).

``tests/fixtures/mmembed_release/golden.json`` holds vectors computed by the release's inference
code on transformers 4.43.4 for the tiny checkpoint :func:`build_tiny_release` writes (seed 0);
its README says how they were produced. Every query and candidate kind is covered: with and
without an instruction, text, image, image+text, and items longer than ``max_length``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.encoders.base import Item
from mmembed.encoders.registry import load_encoder
from mmembed.encoders.vlm_release import SHIPPED_NV_EMBED_V1, llm_config_source, release_config, weight_files
from mmembed.errors import ModelError
from mmembed.testing.tiny_release import build_tiny_release

FIXTURE = Path(__file__).parent / "fixtures" / "mmembed_release"
CASES = json.loads((FIXTURE / "golden.json").read_text(encoding="utf-8"))["cases"]
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.mktemp("golden") / "MM-Embed")


@pytest.fixture(scope="module")
def encoders(release):
    """One encoder per max_length the cases use, loaded the way a user loads the release folder."""
    return {length: load_encoder(release.path, nvembed_config=release.nvembed_config, max_length=length)
            for length in sorted({c["max_length"] for c in CASES})}


def _item(case: dict) -> Item:
    image = Image.open(FIXTURE / case["image"]).convert("RGB") if case["image"] else None
    return Item(case["id"], case["text"], image)


def _embed(encoder, cases: list[dict], batch_size: int) -> np.ndarray:
    """Queries of one instruction or candidates, in one call (the encoder batches them)."""
    items = [_item(c) for c in cases]
    if cases[0]["role"] == "query":
        return encoder.encode_queries(items, cases[0]["instruction"], batch_size=batch_size)
    return encoder.encode_candidates(items, batch_size=batch_size)


def _cosines(got: np.ndarray, cases: list[dict]) -> list[float]:
    expected = np.array([c["vector"] for c in cases], dtype=np.float64)
    got = got.astype(np.float64)
    return list((got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_each_item_alone_gives_the_release_vector(encoders, case):
    cosine = _cosines(_embed(encoders[case["max_length"]], [case], batch_size=1), [case])[0]
    assert cosine >= MIN_COSINE, f"{case['id']}: cosine {cosine:.7f} to the release's vector"


def test_batched_items_give_the_release_vectors(encoders):
    groups: dict[tuple, list[dict]] = {}
    for case in CASES:
        groups.setdefault((case["role"], case["instruction"], case["max_length"]), []).append(case)
    for (_, _, length), cases in groups.items():
        cosines = _cosines(_embed(encoders[length], cases, batch_size=len(cases)), cases)
        worst = min(zip(cosines, [c["id"] for c in cases]))
        assert worst[0] >= MIN_COSINE, f"{worst[1]} batched: cosine {worst[0]:.7f}"


def test_the_nvembed_convention_is_a_different_model(release):
    """The other mask convention must not pass for the release's: the fixture can tell them apart."""
    encoder = load_encoder(release.path, nvembed_config=release.nvembed_config, instruction_mask="prefix")
    case = next(c for c in CASES if c["id"] == "query-text-instructed")
    assert _cosines(_embed(encoder, [case], 1), [case])[0] < 0.999


def test_config_json_text_config_is_not_the_release_llm(release):
    """Building the LLM from config.json's text_config (rope_theta 1e6) moves the vectors off the release's."""
    encoder = load_encoder(release.path, nvembed_config="text_config", max_length=64)
    cases = [c for c in CASES if c["id"] == "candidate-long-image-text"]
    assert _cosines(_embed(encoder, cases, 1), cases)[0] < MIN_COSINE


def test_a_release_folder_defaults_to_the_shipped_nv_embed_v1_llm_config(release):
    raw = json.loads((release.path / "config.json").read_text(encoding="utf-8"))
    assert raw["retriever"] == "nvidia/NV-Embed-v1"
    assert llm_config_source(raw, None) == SHIPPED_NV_EMBED_V1
    shipped = json.loads(SHIPPED_NV_EMBED_V1.read_text(encoding="utf-8"))["text_config"]
    assert (shipped["rope_theta"], shipped["sliding_window"], shipped["hidden_size"]) == (10000.0, 4096, 4096)
    assert raw["text_config"]["rope_theta"] == 1e6  # what the default must not use
    # The tiny weights cannot take the 7B config: the default refuses them and says what to pass.
    with pytest.raises(ModelError, match="hidden_size 4096.*nvembed_config"):
        release_config(release.path, weight_files(release.path))


def test_the_sliding_window_is_never_applied(tmp_path, release):
    """The release's attention ignores NV-Embed's sliding_window; a window shorter than the text changes nothing."""
    nvembed = json.loads((release.nvembed_config / "config.json").read_text(encoding="utf-8"))
    nvembed["text_config"]["sliding_window"] = 3
    (tmp_path / "config.json").write_text(json.dumps(nvembed), encoding="utf-8")
    case = next(c for c in CASES if c["id"] == "candidate-long-text")
    encoder = load_encoder(release.path, nvembed_config=tmp_path, max_length=case["max_length"])
    assert _cosines(_embed(encoder, [case], 1), [case])[0] >= MIN_COSINE
