"""Score fusion of the same two towers: the UniIR CLIP_SF-style baseline for the CPU parts.

Each modality is embedded on its own and the unit vectors are added (UniIR score fusion):

- text -> all-MiniLM-L6-v2 mean-pooled, normalised (exactly sentence-transformers' embedding);
- image -> EfficientNet-Lite0 global-average-pooled 1280-d features (frozen, cached by content)
  -> a trainable linear map to 384 -> normalised;
- image + text -> normalise(text + image).

Instructions (``instruction_mode``): ``"prepend"`` (default, as UniIR does) makes a query's text
``"{instruction} {text}"`` — so an image-only query with an instruction gets a text part made of
the instruction alone, fused with its image; ``"ignore"`` drops instructions. Candidates never get
one. Unlike :mod:`.towers`, the modalities never attend to each other: that is the point of the
baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmembed.data.images import as_pil
from mmembed.encoders.base import Item
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.image_cache import DEFAULT_DISK_BYTES, DEFAULT_MAX_BYTES, FeatureCache, feature_cache_dir
from mmembed.encoders.inputs import check_items
from mmembed.encoders.parts import PartsModel, TextBackbone, VisionTower
from mmembed.encoders.pooling import pool
from mmembed.encoders.prompts import Role, uniir_query_text
from mmembed.encoders.registry import register, register_named_model
from mmembed.errors import ConfigError

INSTRUCTION_MODES = ("prepend", "ignore")


@register("towers-fusion")
class FusionTowersEncoder(PartsModel):
    """all-MiniLM-L6-v2 and EfficientNet-Lite0 (+ linear map), fused by adding unit vectors."""

    SETTINGS = ("max_length", "instruction_mode", "crop_fraction", "train_backbone", "seed")

    def __init__(self, *, max_length: int = 256, instruction_mode: str = "prepend", crop_fraction: float = 0.875,
                 train_backbone: bool = False, seed: int = 0, device: str | None = "cpu", dtype: str | None = None,
                 image_cache_dir: str | Path | bool | None = None, image_cache_bytes: int = DEFAULT_MAX_BYTES,
                 image_cache_disk_bytes: int = DEFAULT_DISK_BYTES,
                 image_cache: FeatureCache | None = None):
        super().__init__()
        if instruction_mode not in INSTRUCTION_MODES:
            raise ConfigError(f"unknown instruction_mode {instruction_mode!r}; "
                              f"expected one of {', '.join(INSTRUCTION_MODES)}")
        self.settings = {"max_length": max_length, "instruction_mode": instruction_mode,
                         "crop_fraction": crop_fraction, "train_backbone": train_backbone, "seed": seed}
        self.text = TextBackbone(max_length)
        cache = image_cache
        if cache is None:  # on disk under the user cache directory unless image_cache_dir says otherwise
            cache = FeatureCache(image_cache_bytes, feature_cache_dir(image_cache_dir), image_cache_disk_bytes)
        self.vision = VisionTower(1, crop_fraction, cache)
        self.dim = self.text.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.image_proj = nn.Linear(1280, self.dim)
        self.text.requires_grad_(train_backbone)
        self.vision.requires_grad_(False)
        self._hash_text = train_backbone
        device_ = resolve_device(device)
        self.to(device=device_, dtype=resolve_dtype(dtype, device_))
        self.eval()

    def _projector_and_pooler(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self.image_proj, None

    def embed(self, items: Sequence[Item], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised (batch, 384) embeddings; differentiable w.r.t. the trainable weights."""
        items = list(items)
        check_items(items, encoder_name=self.encoder_type)
        if role == "candidate" and instructions is not None and any(instructions):  # a programming error
            raise ValueError("candidates never get an instruction")  # (see prompts.build_prompt)
        instructions = list(instructions) if instructions is not None else [None] * len(items)
        texts = [self._text_of(it, ins) for it, ins in zip(items, instructions)]
        out = torch.zeros(len(items), self.dim, device=self.image_proj.weight.device)
        text_rows = [i for i, t in enumerate(texts) if t]
        if text_rows:
            out = out.index_add(0, torch.tensor(text_rows, device=out.device),
                                self._embed_texts([texts[i] for i in text_rows], [items[i].id for i in text_rows]))
        image_rows = [i for i, it in enumerate(items) if it.image is not None]
        if image_rows:
            out = out.index_add(0, torch.tensor(image_rows, device=out.device),
                                self._embed_images([items[i] for i in image_rows]))
        return F.normalize(out, dim=-1)

    def _text_of(self, item: Item, instruction: str | None) -> str:
        if self.settings["instruction_mode"] != "prepend":
            instruction = None
        return uniir_query_text((item.text or "").strip(), (instruction or "").strip()) or ""

    def _embed_texts(self, texts: list[str], ids: list[str]) -> torch.Tensor:
        input_ids, mask = self.text.tokenize([self.text.sanitize(t) for t in texts], ids, self.encoder_type)
        hidden = self.text(self.text.embed_ids(input_ids), mask)
        return pool(hidden, mask, "mean")

    def _embed_images(self, items: list[Item]) -> torch.Tensor:
        features = self.vision([as_pil(it.image, it.id) for it in items])[:, 0]
        return F.normalize(self.image_proj(features.to(self.image_proj.weight.dtype)).float(), dim=-1)

    def length_keys(self, items: Sequence[Item]) -> list[float]:
        """Token counts of the texts: batches of equal length pad least."""
        return [float(n) for n in self.text.token_counts([it.text or "" for it in items])]


register_named_model("cpu-default-fusion", lambda **overrides: FusionTowersEncoder(**overrides))
