"""The TrainableEncoder protocol, and continuing training from a LoRA checkpoint (both encoder families)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmembed.config import from_dict
from mmembed.encoders.base import TrainableEncoder
from mmembed.encoders.registry import load_encoder
from mmembed.errors import ConfigError
from mmembed.training.config import TrainConfig
from mmembed.training.embedding_module import EmbeddingModule
from mmembed.training.trainer import Trainer

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from toy import ToyEncoder, make_toy_mbeir  # noqa: E402


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_mbeir(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    from mmembed.testing.tiny_models import build_tiny

    return build_tiny("llava_next", tmp_path_factory.mktemp("tiny") / "llava_next")


def config(toy_root: Path, out: Path, model: dict, steps: int = 2) -> TrainConfig:
    return from_dict(TrainConfig, {
        "output_dir": str(out), "seed": 0, "data": {"mbeir": [{"root": str(toy_root)}]},
        "train": {"global_batch_size": 6, "max_steps": steps, "num_threads": 1},
        "optim": {"lr": 1e-3}, "logging": {"progress": False, "plot": False}, "model": model})


def test_both_families_implement_the_protocol(tiny_llava):
    for encoder in (load_encoder("cpu-default"), load_encoder("cpu-default-fusion"), load_encoder(tiny_llava)):
        assert isinstance(encoder, TrainableEncoder), type(encoder).__name__
        owned = {id(p) for p in encoder.torch_module().parameters()}
        parts = encoder.trainable_parts()
        assert parts.projector is not None
        for module in (parts.language, parts.projector):
            assert {id(p) for p in module.parameters()} <= owned
        assert {id(p) for p in parts.vision} <= owned
        assert not {id(p) for p in parts.vision} & {id(p) for p in parts.language.parameters()}
    vlm = load_encoder(tiny_llava)
    # nothing shadows torch's Module.modules() any more: the encoder is not a module, it has one
    assert not hasattr(vlm, "modules")
    assert [name for name, _ in vlm.torch_module().named_children()] == ["model"]


def test_an_encoder_without_the_protocol_is_refused():
    with pytest.raises(ConfigError, match="cannot be trained"):
        EmbeddingModule(ToyEncoder())


def test_lora_settings_without_lora_are_refused(toy_root, tmp_path):
    bad = config(toy_root, tmp_path, {"lora": {"enabled": False, "r": 4, "alpha": 8}})
    with pytest.raises(ConfigError, match=r"model\.lora\.r, model\.lora\.alpha set but model\.lora\.enabled"):
        bad.validate()


def test_vlm_continued_from_lora_trains_a_fresh_adapter(toy_root, tiny_llava, tmp_path):
    from safetensors.torch import load_file

    first = Trainer(config(toy_root, tmp_path / "one", {"encoder": str(tiny_llava),
                                                        "lora": {"enabled": True, "r": 4, "alpha": 8}})).train()
    trainer = Trainer(config(toy_root, tmp_path / "two", {"encoder": str(first.final_dir),
                                                          "lora": {"enabled": True, "r": 2, "alpha": 4}}))
    lora = [n for n in trainer.trainable_names if "lora_" in n]
    assert lora and all(".stage1." in n for n in lora), lora  # only the new adapter trains
    result = trainer.train()
    # the first adapter is unchanged and saved next to the new one with the new settings
    earlier = load_file(str(first.final_dir / "adapter" / "adapter_model.safetensors"))
    again = load_file(str(result.final_dir / "adapter" / "adapter_model.safetensors"))
    assert earlier.keys() == again.keys()
    for name, value in earlier.items():
        torch.testing.assert_close(again[name], value, msg=name)
    new = json.loads((result.final_dir / "adapter" / "stage1" / "adapter_config.json").read_text())
    old = json.loads((result.final_dir / "adapter" / "adapter_config.json").read_text())
    assert (new["r"], new["lora_alpha"], old["r"], old["lora_alpha"]) == (2, 4, 4, 8)
    batch = trainer.batch_at(0, 0)
    ours = trainer.encoder.encode_queries(batch.queries, batch.instructions)
    loaded = load_encoder(result.final_dir)
    assert isinstance(loaded.torch_module(), nn.ModuleDict)
    assert not any(p.requires_grad for p in loaded.torch_module().parameters())
    np.testing.assert_allclose(loaded.encode_queries(batch.queries, batch.instructions), ours, atol=1e-5)
    before = load_encoder(first.final_dir).encode_queries(batch.queries, batch.instructions)
    assert np.abs(before - ours).max() > 1e-4  # the new adapter changed the model


def test_towers_continued_from_lora_trains_a_fresh_adapter(toy_root, tmp_path):
    from safetensors.torch import load_file

    first = Trainer(config(toy_root, tmp_path / "one", {"lora": {"enabled": True, "r": 4, "alpha": 8}})).train()
    trainer = Trainer(config(toy_root, tmp_path / "two", {"encoder": str(first.final_dir),
                                                          "lora": {"enabled": True, "r": 2, "alpha": 4}}))
    lora_a = [p for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_A" in n]
    assert lora_a and {p.shape[0] for p in lora_a} == {2}  # a fresh adapter with the configured rank
    result = trainer.train()
    tensors = load_file(str(result.final_dir / "model.safetensors"))
    assert {t.shape[0] for n, t in tensors.items() if n.endswith(".lora_A")} == {6}  # r=4 then r=2
    batch = trainer.batch_at(0, 0)
    np.testing.assert_allclose(load_encoder(result.final_dir).encode_queries(batch.queries, batch.instructions),
                               trainer.encoder.encode_queries(batch.queries, batch.instructions), atol=1e-5)


def test_towers_save_pretrained_folds_live_lora_in(toy_root, tmp_path):
    """save_pretrained of a model with peft layers (what the trainer exports) loads back the same."""
    trainer = Trainer(config(toy_root, tmp_path / "run", {"lora": {"enabled": True, "r": 2, "alpha": 4}},
                             steps=1))
    trainer.train()
    encoder, batch = trainer.encoder, trainer.batch_at(0, 0)
    ours = encoder.encode_queries(batch.queries, batch.instructions)
    for save_all in (False, True):
        folder = encoder.save_pretrained(tmp_path / f"all-{save_all}", save_all=save_all)
        np.testing.assert_allclose(load_encoder(folder).encode_queries(batch.queries, batch.instructions), ours,
                                   atol=1e-5)
