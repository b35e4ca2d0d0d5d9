"""Loading the released MM-Embed layout (tiny random checkpoint written in exactly that layout)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from mmembed.encoders.base import Item
from mmembed.encoders.folders import is_kind
from mmembed.encoders.prompts import count_prefix_tokens
from mmembed.encoders.registry import load_encoder
from mmembed.encoders.vlm import VLMEncoder
from mmembed.errors import ModelError
from mmembed.testing.tiny_release import IMAGE, PATCH, build_tiny_release

TOKENS_PER_IMAGE = (IMAGE // PATCH) ** 2 + 1  # global view patches + image_newline


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.mktemp("release") / "MM-Embed")


@pytest.fixture(scope="module")
def encoder(release):
    return VLMEncoder.from_release(release.path, nvembed_config=release.nvembed_config)


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8))


def test_release_layout_is_recognised_and_loaded_with_release_behaviour(release, encoder):
    assert is_kind(release.path, "mmembed_release")
    # load_encoder routes the release folder and passes nvembed_config through
    assert type(load_encoder(release.path, nvembed_config=release.nvembed_config)) is type(encoder)
    assert encoder.pooling == "latent_attention" and encoder.bidirectional and encoder.append_eos
    assert encoder.padding_side == "right"
    assert encoder.latent == {"num_latents": 16, "latent_dim": 64, "num_heads": 8, "head_dim": 64, "mlp_mult": 4}
    assert encoder.adapter.language_model.get_input_embeddings().num_embeddings == encoder.adapter.image_token_id


def _rewrite(path, key: str | None, change):
    """Apply ``change(tensors)`` to the shard holding ``key`` (any shard for None); keep the index in step."""
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"][key] if key else sorted(set(index["weight_map"].values()))[-1]
    tensors = load_file(str(path / shard))
    change(tensors)
    save_file(tensors, str(path / shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update(dict.fromkeys(tensors, shard))
    index_file.write_text(json.dumps(index))


@pytest.mark.parametrize("change", ["extra", "missing_llm", "missing_vision", "missing_latent"])
def test_every_key_must_be_consumed(tmp_path, change):
    rel = build_tiny_release(tmp_path / "rel")
    keys = json.loads((rel.path / "model.safetensors.index.json").read_text())["weight_map"]
    if change == "extra":
        _rewrite(rel.path, None, lambda t: t.update({"lm_head.weight": torch.zeros(3, 64)}))
    else:
        prefix = {"missing_llm": "language_model.", "missing_vision": "vision_tower.",
                  "missing_latent": "latent_attention_model."}[change]
        key = next(k for k in sorted(keys) if k.startswith(prefix))
        _rewrite(rel.path, key, lambda t: t.pop(key))
    with pytest.raises(ModelError, match="missing|unexpected|no tensor"):
        VLMEncoder.from_release(rel.path, nvembed_config=rel.nvembed_config)


def test_pad_ids_are_embedded_as_eos(encoder):
    tok = encoder.tokenizer
    seen = []
    embed = encoder.adapter.language_model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        inputs = encoder.adapter.prepare(["a dog</s>", "two cats on a small table near the river</s>"], [None, None])
        with torch.no_grad():
            encoder.adapter.hidden_states(inputs)
    finally:
        handle.remove()
    ids = inputs.tensors["input_ids"]
    assert tok.pad_token_id >= embed.num_embeddings and (ids == tok.pad_token_id).any()
    looked_up = seen[0]
    pads = ids == tok.pad_token_id
    assert bool((looked_up[pads] == tok.eos_token_id).all())
    assert bool((looked_up[~pads] == ids[~pads]).all())


def test_only_the_global_view_is_used(encoder):
    items = [_image(1), None, _image(2)]
    prompts = [f"{encoder.adapter.image_token}\nx", "y", f"{encoder.adapter.image_token}\n"]
    inputs = encoder.adapter.prepare(prompts, items)
    assert inputs.tensors["pixel_values"].shape == (2, 3, IMAGE, IMAGE)  # one view per image, no tiles
    per_row = (inputs.tensors["input_ids"] == encoder.adapter.image_token_id).sum(1).tolist()
    assert per_row == [TOKENS_PER_IMAGE, 0, TOKENS_PER_IMAGE]


def _nvembed_pool(pooler, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """NV-Embed's latent attention written out by hand, from the pooler's weights."""
    attn, ff = pooler.cross_attend_blocks
    x = F.layer_norm(hidden, (hidden.shape[-1],), attn.norm.weight, attn.norm.bias)
    latents = F.layer_norm(pooler.latents, (pooler.latents.shape[-1],), attn.norm_context.weight,
                           attn.norm_context.bias)
    heads = 8
    q = x @ attn.fn.to_q.weight.T
    k, v = (latents @ attn.fn.to_kv.weight.T).chunk(2, dim=-1)
    q = q.reshape(q.shape[0], heads, -1).transpose(0, 1)
    k, v = (t.reshape(t.shape[0], heads, -1).transpose(0, 1) for t in (k, v))
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(hidden.shape[0], -1) @ attn.fn.to_out.weight.T
    h = out + hidden
    y = F.layer_norm(h, (h.shape[-1],), ff.norm.weight, ff.norm.bias)
    a, gate = (y @ ff.fn.net[0].weight.T + ff.fn.net[0].bias).chunk(2, dim=-1)
    h = (a * F.gelu(gate)) @ ff.fn.net[2].weight.T + ff.fn.net[2].bias + h
    return F.normalize(h[keep].mean(0), dim=-1)


def test_prefix_convention_matches_a_reference_computation(release):
    """The NV-Embed convention (``instruction_mask="prefix"``) written out by hand; the release's own
    convention is checked against the release's code in test_mmembed_release_golden.py."""
    encoder = VLMEncoder.from_release(release.path, nvembed_config=release.nvembed_config, instruction_mask="prefix")
    model, pooler, tok = release.model, release.pooler, release.processor.tokenizer
    image = _image(3)
    got = encoder.encode_queries([Item("q", "a red dog", image)], "Find the photo")[0]

    image_token = tok.convert_ids_to_tokens(model.config.image_token_id)
    text = "Instruct: Find the photo\nQuery: " + image_token * TOKENS_PER_IMAGE + "\na red dog</s>"
    ids = torch.tensor(tok(text)["input_ids"])
    assert int(ids[0]) == tok.bos_token_id and int(ids[-1]) == tok.eos_token_id
    is_image = ids == model.config.image_token_id
    with torch.no_grad():
        embeds = model.language_model.embed_tokens(ids.masked_fill(is_image, 0))
        pixels = release.processor.image_processor(image, return_tensors="pt")["pixel_values"][:, 0]
        vision = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = torch.cat([model.multi_modal_projector(vision)[0], model.image_newline[None]], dim=0)
        embeds[is_image] = features
        n = len(ids)
        everything_visible = torch.zeros(1, 1, n, n)  # bidirectional, no padding
        hidden = model.language_model(inputs_embeds=embeds[None], attention_mask=everything_visible,
                                      position_ids=torch.arange(n)[None]).last_hidden_state[0]
        k = count_prefix_tokens(tok, "Instruct: Find the photo\nQuery: ")
        keep = torch.arange(n) >= k
        expected = _nvembed_pool(pooler, hidden, keep).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_round_trip_of_a_release_based_checkpoint(encoder, tmp_path):
    items = [Item("a", "a red dog", _image(4)), Item("b", "two cats")]
    before = encoder.encode_queries(items, "Find it")
    encoder.save_pretrained(tmp_path / "ref")
    np.testing.assert_array_equal(load_encoder(tmp_path / "ref").encode_queries(items, "Find it"), before)
    encoder.save_pretrained(tmp_path / "copy", copy_backbone=True)
    np.testing.assert_allclose(load_encoder(tmp_path / "copy").encode_queries(items, "Find it"), before, atol=1e-6)


def test_padding_does_not_change_embeddings(encoder):
    items = [Item("a", "a dog", _image(5)), Item("b", "two cats on a small table near the river"), Item("c", "x")]
    np.testing.assert_allclose(encoder.encode_candidates(items, batch_size=1), encoder.encode_candidates(items),
                               atol=1e-5)


def test_unsharded_release_loads_too(tmp_path, release, encoder):
    rel = build_tiny_release(tmp_path / "one", shards=1)
    (rel.path / "model-00001-of-00001.safetensors").rename(rel.path / "model.safetensors")
    (rel.path / "model.safetensors.index.json").unlink()
    items = [Item("a", "a red dog", _image(6))]
    unsharded = VLMEncoder.from_release(rel.path, nvembed_config=rel.nvembed_config)
    np.testing.assert_array_equal(unsharded.encode_candidates(items), encoder.encode_candidates(items))


def test_non_release_directories_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava_next"}')
    with pytest.raises(ModelError, match="not an MM-Embed release"):
        VLMEncoder.from_release(tmp_path)


def test_a_release_naming_another_retriever_needs_its_config(tmp_path):
    rel = build_tiny_release(tmp_path / "rel")
    config = json.loads((rel.path / "config.json").read_text())
    (rel.path / "config.json").write_text(json.dumps({**config, "retriever": "someone/Other-Embed"}))
    with pytest.raises(ModelError, match="nvembed_config"):
        VLMEncoder.from_release(rel.path)
