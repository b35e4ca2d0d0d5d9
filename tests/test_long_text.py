"""Very long texts are cut before tokenizing, without changing what the model sees."""

from __future__ import annotations

import numpy as np

from mmembed.encoders.base import Item
from mmembed.encoders.inputs import clip_to_tokens
from mmembed.encoders.registry import load_encoder


def test_clip_keeps_a_prefix_with_more_tokens_than_needed_and_tokenizes_little():
    seen = []

    def count(text: str) -> int:
        seen.append(len(text))
        return len(text.split())

    text = "word " * 2_000_000  # 10 MB
    clipped = clip_to_tokens(text, count, 256)
    assert count(clipped) > 256 and text.startswith(clipped)
    assert max(seen) < 100_000  # never near the 10 MB
    assert clip_to_tokens("short text", count, 256) == "short text"
    assert clip_to_tokens(None, count, 256) is None


def test_a_huge_query_embeds_like_its_first_tokens():
    encoder = load_encoder("cpu-default")
    words = " ".join(f"w{i % 97} apple" for i in range(1_000_000))  # about 10 MB
    huge = encoder.encode_queries([Item("q", words)], "Find the text.")
    moderate = encoder.encode_queries([Item("q", words[:20_000])], "Find the text.")  # > 256 tokens as well
    np.testing.assert_allclose(huge, moderate, atol=1e-6)


def test_a_huge_text_through_a_vlm_embeds_like_its_first_tokens(tmp_path):
    from mmembed.testing.tiny_models import build_tiny

    encoder = load_encoder(build_tiny("llava_next", tmp_path / "llava"), max_length=32)
    words = " ".join(f"w{i % 97} apple" for i in range(500_000))
    huge = encoder.encode_candidates([Item("c", words)])
    np.testing.assert_allclose(huge, encoder.encode_candidates([Item("c", words[:5_000])]), atol=1e-6)
