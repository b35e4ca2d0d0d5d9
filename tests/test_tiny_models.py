"""The tiny random model fixtures: small, quick, loadable like real checkpoints, reranker-ready."""

from __future__ import annotations

import json
import time

import pytest

from mmembed.encoders.processors import processor_class_for
from mmembed.testing.tiny_models import ANSWER_WORDS, FAMILIES, build_tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_is_small_and_reloads(tmp_path, family):
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    build_tiny("clip", tmp_path / "warm")  # imports out of the timing
    start = time.perf_counter()
    path = build_tiny(family, tmp_path / family, seed=7)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0  # ~0.1 s on an idle machine; generous for a busy CI box
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 1_000_000
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    processor = (processor_class_for(config.model_type) or AutoProcessor).from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for word in ANSWER_WORDS:
        for form in (word, " " + word):
            assert len(tokenizer(form, add_special_tokens=False)["input_ids"]) == 1, form
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    if config.model_type in ("qwen2_vl", "qwen2_5_vl", "smolvlm", "llava_next", "idefics3"):
        assert tokenizer.image_token  # processor-specific token names are saved with the tokenizer
        assert processor.chat_template
        saved = json.loads((path / "processor_config.json").read_text())
        assert not saved.get("processor_class", "").startswith("NoVideo")  # loadable by AutoProcessor elsewhere


def test_build_is_cached_per_process(tmp_path):
    first = build_tiny("siglip", tmp_path / "a", seed=3)
    assert build_tiny("siglip", tmp_path / "b", seed=3) == first
    assert not (tmp_path / "b").exists()


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny("gpt2", tmp_path)
