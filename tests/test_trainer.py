"""The contrastive trainer on the CPU default model and on tiny random VLMs (toy M-BEIR data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mmembed.config import from_dict
from mmembed.encoders.registry import load_encoder
from mmembed.errors import ConfigError
from mmembed.training.accelerator import lr_factor
from mmembed.training.checkpoint import list_checkpoints
from mmembed.training.config import TrainConfig, load_train_config
from mmembed.training.trainer import Trainer

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from toy import make_toy_mbeir  # noqa: E402


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_mbeir(tmp_path_factory.mktemp("toy") / "toy")


def make_config(toy_root: Path, out: Path, **sections) -> TrainConfig:
    data = {"output_dir": str(out), "seed": 0, "data": {"mbeir": [{"root": str(toy_root)}]},
            "train": {"global_batch_size": 6, "max_steps": 4, "num_threads": 1},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "logging": {"progress": False}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return from_dict(TrainConfig, data)


def first_batch(trainer: Trainer):
    return trainer.batch_at(0, 0)


def check_gradients(trainer: Trainer, allowed: tuple[str, ...]) -> None:
    """Only LoRA / allowed parts are trainable, all of them get a gradient, frozen ones none."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.forward_backward(first_batch(trainer))
    trainable, nonzero = [], []
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            trainable.append(name)
            assert p.grad is not None, f"{name} is trainable but got no gradient"
            if p.grad.abs().sum() > 0:
                nonzero.append(name)
        else:
            assert p.grad is None, f"frozen {name} received a gradient"
    assert trainable and all("lora_" in n or any(a in n for a in allowed) for n in trainable), trainable
    assert any("lora_B" in n for n in nonzero), "LoRA weights got no gradient"
    assert any(any(a in n for a in allowed) for n in nonzero), "projector/pooler got no gradient"
    trainer.optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- CPU default model


@pytest.fixture(scope="module")
def towers_run(toy_root, tmp_path_factory):
    """cpu-default with LoRA on MiniLM + projector: gradients checked, then trained a few steps."""
    out = tmp_path_factory.mktemp("towers") / "run"
    config = make_config(toy_root, out, model={"lora": {"enabled": True, "r": 4, "alpha": 8}},
                         checkpoint={"every_steps": 2, "keep_last": 1}, train={"max_steps": 6})
    trainer = Trainer(config)
    check_gradients(trainer, ("projector",))
    batch = first_batch(trainer)
    before = trainer.batch_loss(batch)
    result = trainer.train()
    return trainer, result, batch, before


def test_towers_lora_and_projector_only(towers_run):
    trainer = towers_run[0]
    assert all(n.startswith("text.model.") and "lora_" in n or n.startswith("projector.")
               for n in trainer.trainable_names)
    assert not any(n.startswith("vision.") for n in trainer.trainable_names)


def test_towers_training_reduces_loss(towers_run):
    trainer, result, batch, before = towers_run
    after = trainer.batch_loss(batch)
    assert after < 0.7 * before, (before, after)
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(r["peak_mem_mb"] > 0 and r["mem_kind"] == "rss" and r["examples_per_s"] > 0 for r in steps)
    assert steps[-1]["lr"] < steps[1]["lr"]  # warmup then linear decay


def test_towers_final_output_loads_with_same_embeddings(towers_run):
    trainer, result, batch, _ = towers_run
    loaded = load_encoder(result.final_dir)
    ours = trainer.encoder.encode_queries(batch.queries, batch.instructions)
    np.testing.assert_allclose(loaded.encode_queries(batch.queries, batch.instructions), ours, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_candidates(batch.candidates),
                               trainer.encoder.encode_candidates(batch.candidates), atol=1e-5)
    untrained = load_encoder("cpu-default").encode_queries(batch.queries, batch.instructions)
    assert np.abs(untrained - ours).max() > 1e-3  # the saved model is the trained one


def test_towers_lora_export_stores_factors_not_merged_weights(towers_run, tmp_path):
    from safetensors.torch import load_file

    from mmembed.training.saving import export_encoder

    trainer, result, batch, _ = towers_run
    names = set(load_file(str(result.final_dir / "model.safetensors")))
    assert any(n.endswith(".lora_A") for n in names) and any(n.endswith(".lora_B") for n in names)
    assert not any(n.startswith("text.model.") and n.endswith(".weight") for n in names), "merged BERT weights saved"
    assert (result.final_dir / "model.safetensors").stat().st_size < 4_000_000  # projector + r=4 factors; merged: 45 MB
    trainer.config.checkpoint.export_dtype = "float16"
    half = export_encoder(trainer.encoder, tmp_path / "half", trainer.config, step=6)
    trainer.config.checkpoint.export_dtype = None
    assert {t.dtype for t in load_file(str(half / "model.safetensors")).values()} == {torch.float16}
    np.testing.assert_allclose(load_encoder(half).encode_queries(batch.queries, batch.instructions),
                               trainer.encoder.encode_queries(batch.queries, batch.instructions), atol=2e-3)


def test_towers_outputs_and_checkpoints(towers_run):
    _, result, _, _ = towers_run
    out = result.output_dir
    assert (out / "loss.png").stat().st_size > 1000
    assert [step for step, _ in list_checkpoints(out)] == [6]  # keep_last=1
    ckpt = out / "checkpoints" / "step-00000006"
    for name in ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.json", "config.yaml",
                 "meta.json", "trainer_state.json", "model/config.json"):
        assert (ckpt / name).is_file(), name
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["mmembed_version"] and "git_revision" in meta
    assert yaml.safe_load((ckpt / "config.yaml").read_text())["model"]["lora"]["r"] == 4
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["sampler"]["position"] >= 1
    assert load_encoder(ckpt / "model").dim == 384


def test_continuing_a_lora_run_keeps_the_checkpoint_low_rank(towers_run, toy_root, tmp_path):
    from safetensors.torch import load_file

    _, result, batch, _ = towers_run
    config = make_config(toy_root, tmp_path / "more", train={"max_steps": 2},
                         model={"encoder": str(result.final_dir), "lora": {"enabled": True, "r": 4, "alpha": 8}})
    trainer = Trainer(config)
    more = trainer.train()
    tensors = load_file(str(more.final_dir / "model.safetensors"))
    ranks = {t.shape[0] for n, t in tensors.items() if n.endswith(".lora_A")}
    assert ranks == {8}, ranks  # stage-1 factors (r=4) followed by the new ones (r=4)
    assert not any(n.startswith("text.model.") and n.endswith(".weight") for n in tensors)
    np.testing.assert_allclose(load_encoder(more.final_dir).encode_queries(batch.queries, batch.instructions),
                               trainer.encoder.encode_queries(batch.queries, batch.instructions), atol=1e-5)


# ----------------------------------------------------------------------------- tiny VLMs


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from mmembed.testing.tiny_models import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny(family, root / family) for family in ("llava_next", "qwen2_vl")}


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_tiny_vlm_lora_training_reduces_loss(family, tiny_dirs, toy_root, tmp_path):
    config = make_config(toy_root, tmp_path / "run",
                         model={"encoder": str(tiny_dirs[family]), "lora": {"enabled": True},
                                "settings": {"pooling": "latent_attention", "latent": {"num_latents": 8,
                                                                                       "num_heads": 2}}},
                         train={"max_steps": 8}, logging={"progress": False, "plot": False})
    trainer = Trainer(config)
    check_gradients(trainer, ("projector", "merger", "latent_pooler"))
    batch = first_batch(trainer)
    before = trainer.batch_loss(batch)
    result = trainer.train()
    after = trainer.batch_loss(batch)
    assert after < 0.8 * before, (before, after)
    loaded = load_encoder(result.final_dir)
    np.testing.assert_allclose(loaded.encode_queries(batch.queries, batch.instructions),
                               trainer.encoder.encode_queries(batch.queries, batch.instructions), atol=1e-5)


def test_gradcache_and_length_buckets_match_plain_step(tiny_dirs, toy_root, tmp_path):
    """Same weights after two steps: whole batch, length-sorted buckets, GradCache chunks of 2."""
    weights = []
    for chunk, buckets in ((None, 1), (None, 3), (2, 1)):
        config = make_config(toy_root, tmp_path / f"run{chunk}-{buckets}",
                             model={"encoder": str(tiny_dirs["llava_next"]), "lora": {"enabled": True}},
                             train={"max_steps": 2, "chunk_size": chunk, "length_buckets": buckets},
                             logging={"progress": False, "plot": False})
        trainer = Trainer(config)
        trainer.train()
        weights.append(trainer.model.trainable_state())
    for other in weights[1:]:
        for name, value in weights[0].items():
            torch.testing.assert_close(other[name], value, atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- configuration


def test_config_errors_name_the_key(toy_root, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"mbeir": [{"root": str(toy_root)}]}, "train": {"batch": 4}}))
    with pytest.raises(ConfigError, match="batch"):
        load_train_config(path)
    path.write_text(yaml.safe_dump({"data": {"mbeir": []}}))
    with pytest.raises(ConfigError, match="at least one source"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="fp16"):
        make_config(toy_root, tmp_path, train={"chunk_size": 2, "mixed_precision": "fp16"}).validate()


def test_recipes_parse():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(p for p in recipes.glob("*/*.yaml") if p.name != "recipe.yaml")
    assert {f"{p.parent.name}/{p.name}" for p in files} >= {"cpu-default/stage1.yaml", "cpu-default/stage2.yaml",
                                                           "cpu-default/stage3.yaml", "cpu-default/fusion.yaml",
                                                           "mmembed-llava-next-7b/stage1.yaml",
                                                           "mmembed-llava-next-7b/stage3.yaml"}
    for path in files:
        load_train_config(path)


def test_lr_schedule():
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(9, 10, 2, "linear") == pytest.approx(1 / 8)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(7, 10, 0, "constant") == 1.0


def test_lr_schedule_equals_transformers_after_the_warmup():
    """Why lr_factor is not transformers.get_scheduler: the same decay, a warmup that starts above 0."""
    from transformers import get_scheduler

    for kind, theirs_name in (("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        theirs = get_scheduler(theirs_name, optimizer, num_warmup_steps=2, num_training_steps=10).lr_lambdas[0]
        ours = [lr_factor(s, 10, 2, kind) for s in range(11)]
        assert ours[2:] == pytest.approx([theirs(s) for s in range(2, 11)]), kind
        assert (theirs(0), theirs(1)) == (0.0, 0.5) and ours[:2] == [0.5, 1.0], kind


def test_text_only_batch_with_only_the_projector_trainable(toy_root, tmp_path):
    """No image in the batch: the loss does not depend on the projector, the step must still run."""
    config = make_config(toy_root, tmp_path / "run", data={"mbeir": [{"root": str(toy_root), "tasks": ["toy_task1"]}]},
                         train={"max_steps": 1}, logging={"progress": False, "plot": False})
    trainer = Trainer(config)
    assert all(n.startswith("projector.") for n in trainer.trainable_names)
    before = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
    trainer.train()
    for name, value in trainer.model.trainable_state().items():
        torch.testing.assert_close(value, before[name], msg=name)  # zero gradient, no weight decay


def test_a_fixed_thread_count_trains_the_same_weights_bit_for_bit(toy_root, tmp_path):
    """Two threads (what ``recipe run --data`` uses on this machine) repeat exactly, run after run."""
    digests = []
    for run in ("a", "b"):
        config = make_config(toy_root, tmp_path / run, train={"global_batch_size": 6, "max_steps": 3,
                                                               "num_threads": 2},
                             model={"encoder": "cpu-default", "lora": {"enabled": True, "r": 2, "alpha": 4}})
        result = Trainer(config).train()
        digests.append(_weights_digest(result.final_dir))
    assert digests[0] == digests[1]


def _weights_digest(folder: Path) -> str:
    import hashlib

    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()
