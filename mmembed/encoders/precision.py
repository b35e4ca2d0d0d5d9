"""Serving an encoder in bfloat16 where it keeps its float32 embeddings, per modality.

On CPUs with bfloat16 matrix units a text encoder runs much faster in bfloat16 at a cosine above
0.9999 to its float32 embeddings, while image features drift further (EfficientNet's depthwise
convolutions and BatchNorm). :func:`with_precision` measures that parity on a fixed probe set
when the model loads and builds a :class:`MixedPrecisionEncoder`:

- text-only inputs go to a bfloat16 copy of the model, refused when their parity is below
  :data:`PARITY_BOUND`;
- inputs with an image go to the bfloat16 copy only when image parity also reaches the bound,
  else to the float32 model.

Its ``encoder_id`` is the float32 model's: the identity of the weights, not of the arithmetic,
so an index built in float32 accepts it — which is sound because parity was measured and enforced.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmembed.encoders.base import Instructions, Item, per_item_instructions
from mmembed.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
#: Lowest cosine between reduced-precision and float32 embeddings of the probe set that is served.
PARITY_BOUND = 0.9999
_PROBE_TEXTS = (
    "red heart", "a cat sitting on a wooden table next to a cup of coffee",
    "Which emoji shows a person running?", "thunderstorm", "ice cream cone with two scoops",
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "smiling face with sunglasses", "airplane departure", "1234 numbers and symbols #%&",
    "a long description " * 12,
)
_PROBE_INSTRUCTION = "Retrieve the image that matches this description."


class MixedPrecisionEncoder:
    """Text-only inputs by a reduced-precision copy; inputs with images by whichever model passed
    parity (see the module docstring). Encodes like any :class:`~mmembed.encoders.base.Encoder`."""

    def __init__(self, reference: Any, reduced: Any, precision: dict[str, str], parity: dict[str, float]):
        self.reference = reference
        self.reduced = reduced
        self.precision = precision
        self.parity = parity
        self.dim = reference.dim
        self.tokenizer = getattr(getattr(reference, "text", None), "tokenizer", None)

    @property
    def encoder_id(self) -> str:
        return self.reference.encoder_id

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *, batch_size: int = 32,
                       show_progress: bool = False) -> np.ndarray:
        instructions = per_item_instructions(instruction, len(queries))
        return self._split(list(queries), lambda model, items, idx: model.encode_queries(
            items, [instructions[i] for i in idx], batch_size=batch_size, show_progress=show_progress))

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        return self._split(list(candidates), lambda model, items, idx: model.encode_candidates(
            items, batch_size=batch_size, show_progress=show_progress))

    def _split(self, items: list[Item], encode: Any) -> np.ndarray:
        images_reduced = self.precision["image"] == self.precision["text"]
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for model, wanted in ((self.reduced, True), (self.reference, False)):
            idx = [i for i, it in enumerate(items) if (it.image is None or images_reduced) == wanted]
            if idx:
                out[idx] = np.asarray(encode(model, [items[i] for i in idx], idx), dtype=np.float32)
        return out


def with_precision(encoder: Any, dtype: str, *, bound: float = PARITY_BOUND) -> Any:
    """``encoder`` (float32) served in ``dtype``: itself for float32, else a
    :class:`MixedPrecisionEncoder` after measuring parity; a :class:`ConfigError` when text parity
    is below ``bound`` or the encoder cannot be cast."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return encoder
    if not isinstance(encoder, torch.nn.Module):
        raise ConfigError(f"--dtype {dtype}: the {type(encoder).__name__} encoder is not a torch module that can be "
                          "cast; serve it in float32")
    reduced = reduced_copy(encoder, getattr(torch, dtype))
    parity = {"text": text_parity(encoder, reduced), "image": image_parity(encoder, reduced)}
    if parity["text"] < bound:
        raise ConfigError(f"--dtype {dtype}: text embeddings reach cosine {parity['text']:.6f} to float32 on the "
                          f"probe set, below the bound {bound}; serve this model in float32")
    images = dtype if parity["image"] >= bound else "float32"
    logger.info("serving text in %s (parity %.6f) and images in %s (parity %.6f; bound %s)", dtype,
                parity["text"], images, parity["image"], bound)
    return MixedPrecisionEncoder(encoder, reduced, {"text": dtype, "image": images}, parity)


def reduced_copy(encoder: torch.nn.Module, dtype: torch.dtype) -> Any:
    """A copy of ``encoder`` in ``dtype``. Its image-feature cache is a memory-only one of its own:
    features computed in ``dtype`` must never reach the float32 model's (shared, on-disk) cache."""
    from mmembed.encoders.image_cache import FeatureCache

    memo: dict[int, Any] = {}
    cache = getattr(getattr(getattr(encoder, "vision", None), "cached", None), "cache", None)
    if cache is not None:
        memo[id(cache)] = FeatureCache(cache.max_bytes, None)
    reduced = copy.deepcopy(encoder, memo)
    return reduced.to(dtype).eval()


def text_parity(reference: Any, reduced: Any) -> float:
    items = [Item(f"probe {i}", text) for i, text in enumerate(_PROBE_TEXTS)]
    return min(_min_cosine(reference.encode_queries(items, _PROBE_INSTRUCTION),
                           reduced.encode_queries(items, _PROBE_INSTRUCTION)),
               _min_cosine(reference.encode_candidates(items), reduced.encode_candidates(items)))


def image_parity(reference: Any, reduced: Any) -> float:
    images = probe_images()
    items = [Item(f"probe image {i}", None, image) for i, image in enumerate(images)]
    items += [Item(f"probe pair {i}", _PROBE_TEXTS[i], image) for i, image in enumerate(images)]
    return _min_cosine(reference.encode_candidates(items), reduced.encode_candidates(items))


def probe_images(n: int = 6, size: int = 96) -> list[Image.Image]:
    """Fixed synthetic images: colour gradients with blocks of noise (seeded, so every load measures
    the same set)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = []
    for i in range(n):
        pixels = np.stack([np.add.outer(ramp * (i % 3 == c), ramp * ((i + c) % 2)) / 2 for c in range(3)], axis=-1)
        y, x = rng.integers(0, size // 2, 2)
        pixels[y:y + size // 3, x:x + size // 3] = rng.integers(0, 256, (size // 3, size // 3, 3))
        images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    return images


def _min_cosine(a: Any, b: Any) -> float:
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())
