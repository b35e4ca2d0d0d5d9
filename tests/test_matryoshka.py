"""Matryoshka training: the loss over nested prefixes, the recorded dimensions, and dimensions= on the way out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmembed.config import from_dict, save_config
from mmembed.encoders.matryoshka import MATRYOSHKA_FILE, TruncatedEncoder, check_dimensions, truncate
from mmembed.errors import ArgumentError, ConfigError
from mmembed.losses import InfoNCELoss, info_nce
from mmembed.losses.matryoshka import MatryoshkaLoss
from mmembed.training.config import TrainConfig

pytest.importorskip("accelerate")
pytest.importorskip("peft")

from toy import make_toy_mbeir  # noqa: E402


def test_loss_is_the_weighted_mean_over_renormalised_prefixes():
    torch.manual_seed(0)
    q, c = torch.randn(4, 12), torch.randn(10, 12)
    target = torch.tensor([0, 3, 5, 9])
    loss = MatryoshkaLoss(InfoNCELoss(0.05), [6, 3], [2.0, 1.0])
    expected = (2 * info_nce(q[:, :6], c[:, :6], target) + info_nce(q[:, :3], c[:, :3], target)
                + info_nce(q, c, target)) / 4  # the full dimension is added with weight 1
    torch.testing.assert_close(loss(q, c, target), expected)
    # the prefix is renormalised: the score is the cosine of the prefixes, not of the unit vectors' heads
    unit_q, unit_c = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    torch.testing.assert_close(MatryoshkaLoss(InfoNCELoss(0.05), [12])(unit_q, unit_c, target),
                               info_nce(unit_q, unit_c, target))
    with pytest.raises(ArgumentError, match=r"\[16\] exceed the model's embedding dimension 12"):
        MatryoshkaLoss(InfoNCELoss(0.05), [16, 6])(q, c, target)


def test_unset_matryoshka_leaves_the_saved_config_unchanged(tmp_path):
    plain = from_dict(TrainConfig, {"output_dir": "x"})
    save_config(plain, tmp_path / "plain.yaml")
    assert "matryoshka" not in (tmp_path / "plain.yaml").read_text()
    mrl = from_dict(TrainConfig, {"output_dir": "x", "train": {"matryoshka_dims": [8, 4]}})
    save_config(mrl, tmp_path / "mrl.yaml")
    assert "matryoshka_dims:\n  - 8\n  - 4" in (tmp_path / "mrl.yaml").read_text()
    from mmembed.training.config import DistributedSettings, TrainSettings, _check_train

    with pytest.raises(ConfigError, match="train.matryoshka_weights: 1 weights for 2 dimensions"):
        _check_train(TrainSettings(matryoshka_dims=[8, 4], matryoshka_weights=[1.0]), DistributedSettings())
    with pytest.raises(ConfigError, match="a dimension appears twice"):
        _check_train(TrainSettings(matryoshka_dims=[8, 8]), DistributedSettings())


def test_truncation_and_the_refusal_lists_the_trained_dimensions():
    class Encoder:
        dim = 8
        encoder_id = "e"
        matryoshka_dims = (4, 2)

        def encode_queries(self, items, instruction=None, **kw):
            return np.tile(np.arange(1, 9, dtype=np.float32), (len(items), 1))

    enc = Encoder()
    assert check_dimensions(enc, None) is None and check_dimensions(enc, 8) is None and check_dimensions(enc, 4) == 4
    with pytest.raises(ConfigError, match="dimensions=3 is not available.*trained \\(Matryoshka\\) for 2, 4, 8"):
        check_dimensions(enc, 3)
    del Encoder.matryoshka_dims
    with pytest.raises(ConfigError, match="not trained for truncation.*only its full 8"):
        check_dimensions(enc, 4)
    out = truncate(np.array([[3.0, 4.0, 12.0]]), 2)
    np.testing.assert_allclose(out, [[0.6, 0.8]])
    wrapped = TruncatedEncoder(enc, 3)  # evaluation may score an untrained dimension, to compare
    assert wrapped.dim == 3 and wrapped.encoder_id == "e@dim3"
    np.testing.assert_allclose(wrapped.encode_queries(["a"]), [np.array([1, 2, 3]) / np.sqrt(14)], rtol=1e-6)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return make_toy_mbeir(tmp_path_factory.mktemp("toy") / "toy")


def _config(toy_root, out, **sections):
    data = {"output_dir": str(out), "seed": 0, "data": {"mbeir": [{"root": str(toy_root)}]},
            "train": {"global_batch_size": 6, "max_steps": 3, "num_threads": 1},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "logging": {"progress": False, "plot": False}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return from_dict(TrainConfig, data)


def test_towers_model_trains_records_and_serves_its_dimensions(toy_root, tmp_path):
    import mmembed
    from mmembed.training.trainer import Trainer

    config = _config(toy_root, tmp_path / "run", train={"matryoshka_dims": [192, 96, 48]})
    trainer = Trainer(config)
    assert isinstance(trainer.loss_fn, MatryoshkaLoss)
    result = trainer.train()
    assert json.loads((result.final_dir / MATRYOSHKA_FILE).read_text())["dims"] == [192, 96, 48]
    model = mmembed.load(result.final_dir)
    assert model.dimensions == (48, 96, 192, 384)
    full = model.encode_queries(["blue colour", "a red square"])
    short = model.encode_queries(["blue colour", "a red square"], dimensions=96)
    assert short.shape == (2, 96)
    np.testing.assert_allclose(short, truncate(full, 96), atol=1e-6)
    assert model.encode_candidates(["a red square"], dimensions=48).shape == (1, 48)
    with pytest.raises(ConfigError, match="dimensions=100 is not available.*48, 96, 192, 384"):
        model.encode_queries(["blue"], dimensions=100)


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_vlm_with_latent_attention_trains_with_matryoshka(family, toy_root, tmp_path):
    from mmembed.encoders.registry import load_encoder
    from mmembed.testing.tiny_models import build_tiny
    from mmembed.training.trainer import Trainer

    model_dir = build_tiny(family, tmp_path / family)
    config = _config(toy_root, tmp_path / "run",
                     model={"encoder": str(model_dir), "lora": {"enabled": True},
                            "settings": {"pooling": "latent_attention", "latent": {"num_latents": 8, "num_heads": 2}}},
                     train={"max_steps": 6, "matryoshka_dims": [16, 8]})
    trainer = Trainer(config)
    batch = trainer.batch_at(0, 0)
    before = trainer.batch_loss(batch)
    result = trainer.train()
    assert trainer.batch_loss(batch) < before
    loaded = load_encoder(result.final_dir)
    assert loaded.matryoshka_dims == (16, 8)


def test_service_embeddings_accept_trained_dimensions_and_refuse_others(toy_dir, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from test_serve_api import build_index
    from toy import ToyEncoder

    from mmembed.encoders.base import Item
    from mmembed.retrieval import Retriever
    from mmembed.serve.app import create_app
    from mmembed.serve.settings import ServeSettings

    index_dir = build_index(toy_dir, tmp_path / "index")
    encoder = ToyEncoder()
    encoder.matryoshka_dims = (16, 8)
    app = create_app(Retriever.load(index_dir, encoder=encoder), ServeSettings(), encoder_spec="toy")
    with TestClient(app, base_url="http://localhost") as client:
        answer = client.post("/v1/embeddings", json={"input": ["a red square"], "dimensions": 16})
        assert answer.status_code == 200, answer.text
        got = np.array(answer.json()["data"][0]["embedding"])
        np.testing.assert_allclose(got, truncate(encoder.encode_candidates([Item("a", "a red square")]), 16)[0],
                                   atol=1e-6)
        refused = client.post("/v1/embeddings", json={"input": ["a red square"], "dimensions": 12})
        assert refused.status_code == 400
        assert f"trained (Matryoshka) for 8, 16, {encoder.dim}" in refused.text
