"""VLMEncoder over tiny random LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3 and SmolVLM models."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.data.images import LazyImage
from mmembed.encoders.base import Item
from mmembed.encoders.bidirectional import set_bidirectional
from mmembed.encoders.prompts import build_prompt, count_prefix_tokens
from mmembed.encoders.registry import load_encoder
from mmembed.encoders.vlm import VLMEncoder
from mmembed.errors import ConfigError, DataError, ImageError, ModelError
from mmembed.testing.tiny_models import VLM_FAMILIES, build_tiny

ATOL = 1e-5


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny(family, root / family) for family in VLM_FAMILIES}


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


MIXED = [
    Item("it", "a red dog running", _image(1, (40, 30))),
    Item("t", "two cats sitting on a small table near the river"),
    Item("i", None, _image(2, (24, 52))),
    Item("t2", "a boat"),
]


@pytest.fixture(scope="module")
def encoders(tiny_dirs):
    cache: dict[tuple, VLMEncoder] = {}

    def get(family: str, **settings) -> VLMEncoder:
        key = (family, tuple(sorted(settings.items())))
        if key not in cache:
            cache[key] = VLMEncoder.from_hf(tiny_dirs[family], **settings)
        return cache[key]

    return get


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("pooling", ["mean", "last", "latent_attention"])
def test_each_pooling_gives_unit_float32_rows_for_mixed_batches(encoders, family, pooling):
    enc = encoders(family, pooling=pooling, bidirectional=True)
    q = enc.encode_queries(MIXED, "Retrieve a matching picture")
    c = enc.encode_candidates(MIXED)
    for rows in (q, c):
        assert rows.shape == (len(MIXED), enc.dim) and rows.dtype == np.float32
        assert np.all(np.isfinite(rows))
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert np.abs(q - c).max() > 1e-3  # the instruction and the "Query:" lead matter
    assert np.abs(c[0] - c[1]).max() > 1e-3


@pytest.mark.parametrize("family", VLM_FAMILIES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_embeddings_do_not_depend_on_batch_mates_or_padding_side(encoders, family, bidirectional):
    pooling = "latent_attention" if bidirectional else "last"
    right = encoders(family, pooling=pooling, bidirectional=bidirectional, padding_side="right")
    left = encoders(family, pooling=pooling, bidirectional=bidirectional, padding_side="left")
    left.latent_pooler = right.latent_pooler  # same (random) pooler weights for both
    batched = right.encode_queries(MIXED, "Find it", batch_size=4)
    np.testing.assert_allclose(right.encode_queries(MIXED, "Find it", batch_size=1), batched, atol=ATOL)
    np.testing.assert_allclose(left.encode_queries(MIXED, "Find it", batch_size=4), batched, atol=ATOL)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_pooling_mask_excludes_exactly_the_instruction_prefix(encoders, family):
    enc = encoders(family, pooling="mean", bidirectional=True)
    prompt = build_prompt("a red dog", True, "query", "Retrieve a photo").with_image_token(enc.adapter.image_token)
    k = count_prefix_tokens(enc.tokenizer, prompt.prefix)
    ids = enc.tokenizer(prompt.text)["input_ids"]
    excluded = enc.tokenizer.decode(ids[:k], skip_special_tokens=True)
    assert excluded == "Instruct: Retrieve a photo\nQuery:"
    first_pooled = enc.tokenizer.decode(ids[k:k + 1])
    assert first_pooled.strip() in (enc.adapter.image_token.strip()[:len(first_pooled.strip())], "")
    candidate = build_prompt("a red dog", True, "candidate")
    assert count_prefix_tokens(enc.tokenizer, candidate.prefix) == 0


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_causal_mean_pool_is_the_mean_of_the_content_token_states(encoders, family):
    """Causal mode: recompute the pooled vector from a plain forward and the prefix length alone."""
    enc = encoders(family, pooling="mean", bidirectional=False)
    item = MIXED[0]
    got = enc.embed([item], "query", ["Retrieve a photo"])[0]
    prompt = enc._prompt(item, "query", "Retrieve a photo")
    with torch.no_grad():
        hidden, mask = enc.adapter.hidden_states(enc.adapter.prepare([prompt.text], [item.image]))
    k = count_prefix_tokens(enc.tokenizer, prompt.prefix)
    expected = torch.nn.functional.normalize(hidden[0, k:int(mask.sum())].mean(0), dim=-1)
    with_prefix = torch.nn.functional.normalize(hidden[0, :int(mask.sum())].mean(0), dim=-1)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - with_prefix).abs().max() > 1e-4  # the prefix would have changed it


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_bidirectional_attention_lets_tokens_see_later_tokens(encoders, family):
    enc = encoders(family, pooling="mean", bidirectional=False)
    a, b = "a dog on a tree", "a dog on a boat"
    inputs = enc.adapter.prepare([a, b], [None, None])
    ids = inputs.tensors["input_ids"]
    assert ids.shape[1] == ids.shape[1] and (ids[0] != ids[1]).sum() >= 1
    first_diff = int((ids[0] != ids[1]).nonzero()[0])
    lm = enc.adapter.language_model
    try:
        with torch.no_grad():
            causal, _ = enc.adapter.hidden_states(inputs)
            set_bidirectional(lm, True)
            assert not lm.config.is_causal
            bidir, _ = enc.adapter.hidden_states(inputs)
    finally:
        set_bidirectional(lm, False)
    torch.testing.assert_close(causal[0, :first_diff], causal[1, :first_diff], atol=1e-6, rtol=0)
    assert (bidir[0, :first_diff] - bidir[1, :first_diff]).abs().max() > 1e-4


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_save_load_round_trip_with_lora_is_identical(tiny_dirs, tmp_path, family):
    enc = VLMEncoder.from_hf(tiny_dirs[family], pooling="latent_attention", bidirectional=True)
    before = enc.encode_candidates(MIXED)
    enc.enable_lora(r=4, alpha=16)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in enc.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)  # stand-in for training (LoRA B starts at zero)
    trained = enc.encode_candidates(MIXED)
    assert np.abs(trained - before).max() > 1e-3
    enc.save_pretrained(tmp_path / "ref")
    np.testing.assert_array_equal(load_encoder(tmp_path / "ref").encode_candidates(MIXED), trained)
    if family in ("llava_next", "qwen2_vl"):
        enc.save_pretrained(tmp_path / "copy", copy_backbone=True)
        np.testing.assert_array_equal(load_encoder(tmp_path / "copy").encode_candidates(MIXED), trained)


def test_embed_is_differentiable_for_training(tiny_dirs):
    enc = VLMEncoder.from_hf(tiny_dirs["qwen2_vl"], pooling="latent_attention", bidirectional=True)
    enc.enable_lora(r=4, alpha=16)
    enc.train()
    loss = enc.embed(MIXED[:2], "query", ["Find it", None]).sum()
    loss.backward()
    grads = [p.grad for p in enc.trainable_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_moved_or_replaced_backbone_is_refused(tiny_dirs, tmp_path):
    enc = VLMEncoder.from_hf(tiny_dirs["smolvlm"], pooling="mean")
    enc.save_pretrained(tmp_path / "ck")
    with pytest.raises(ModelError, match="backbone"):
        VLMEncoder.from_pretrained(tmp_path / "ck", backbone=tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not the one"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "config.json").write_text("{}")
        import json

        config = json.loads((tmp_path / "ck" / "config.json").read_text())
        config["backbone"]["path"] = str(other)
        (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
        VLMEncoder.from_pretrained(tmp_path / "ck")


def test_checkpoint_of_another_type_is_refused(tiny_dirs, tmp_path):
    from mmembed.encoders.clip import CLIPEncoder

    enc = VLMEncoder.from_hf(tiny_dirs["idefics3"], pooling="mean")
    enc.save_pretrained(tmp_path / "vlm")
    with pytest.raises(ModelError, match="cannot be loaded as a 'clip' encoder"):
        CLIPEncoder.from_pretrained(tmp_path / "vlm")


def test_bad_input_errors_name_the_item(encoders, tmp_path):
    enc = encoders("llava_next", pooling="mean")
    with pytest.raises(DataError, match="'empty'"):
        enc.encode_candidates([MIXED[1], Item("empty", "  ")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="'pic-7'"):
        enc.encode_candidates([Item("pic-7", "x", LazyImage(broken, "pic-7"))])


def test_long_text_is_truncated_with_one_warning(tiny_dirs, caplog, fresh_truncation_warnings):
    enc = VLMEncoder.from_hf(tiny_dirs["qwen2_vl"], pooling="last", max_length=16)
    long = [Item(f"long{i}", "a dog on a tree near the river " * 20, MIXED[0].image) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="mmembed.encoders.inputs"):
        rows = enc.encode_candidates(long)
        enc.encode_queries(long, "Find it")
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1
    assert np.all(np.isfinite(rows))
    prompt = enc._prompt(long[0], "candidate", None)
    assert len(enc.tokenizer(prompt.text)["input_ids"]) <= 16
    assert prompt.text.endswith(enc.tokenizer.eos_token) and prompt.has_image


def test_unsupported_model_and_settings_are_refused(tmp_path, tiny_dirs):
    with pytest.raises(ModelError, match="no config.json"):
        VLMEncoder.from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(Exception, match="bert"):
        VLMEncoder.from_hf(tmp_path)
    with pytest.raises(ConfigError, match="pooling"):
        VLMEncoder.from_hf(tiny_dirs["qwen2_vl"], pooling="max")


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_size_option_changes_the_image_tokens_not_the_invariances(tiny_dirs, family):
    small, large = {"llava_next": (None, 56), "qwen2_vl": (16, 56), "qwen2_5_vl": (16, 56),
                    "idefics3": (None, 64), "smolvlm": (None, 64)}[family]
    image = _image(9, (64, 64))
    lengths = []
    for size in (small, large):
        enc = VLMEncoder.from_hf(tiny_dirs[family], pooling="mean", image_size=size)
        inputs = enc.adapter.prepare([f"{enc.adapter.image_token}\nx"], [image])
        lengths.append(int(inputs.tensors["attention_mask"].sum()))
    assert lengths[1] > lengths[0]
    items = [Item("a", "x", image), Item("b", "y"), Item("c", None, _image(3, (20, 60)))]
    np.testing.assert_allclose(enc.encode_candidates(items, batch_size=1), enc.encode_candidates(items), atol=ATOL)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_image_tokens_typed_in_text_are_plain_text(encoders, family):
    encoder = encoders(family)
    typed = f"look {encoder.adapter.image_token} <image> here"
    vectors = encoder.encode_queries([Item("t", typed), Item("i", typed, _image(1, (40, 30)))], "Find <image>")
    assert vectors.shape[0] == 2 and np.isfinite(vectors).all()
