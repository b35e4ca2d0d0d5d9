"""The CPU default model: MM-Embed's architecture at a size that trains on two CPU cores.

MM-Embed puts a vision tower's features, through a projector, into a bidirectional LLM at the
``<image>`` position of its prompt and pools the LLM's token states. Here the parts are small and
real (shipped in registry packages): EfficientNet-Lite0 (ImageNet, frozen, features cached by
image content) -> ``grid x grid`` tokens of 1280 -> a trainable MLP projector to 384 -> placed at
``<image>`` in the MM-Embed prompt as input embeddings of all-MiniLM-L6-v2 (BERT, bidirectional)
-> :func:`~mmembed.encoders.pooling.pool` with the instruction prefix excluded -> L2 norm.

The image placeholder becomes ``grid * grid`` copies of BERT's unused vocabulary entry
``[unused0]``, whose embeddings are overwritten by the projected image tokens, so the vocabulary
is unchanged. A text-only candidate's prompt is its text, so with mean pooling its embedding is
exactly sentence-transformers' all-MiniLM-L6-v2 embedding of that text.

Trainable: the projector, the latent-attention pooler (when used) and, with
``train_backbone=True``, the BERT weights. The untrained model (``load_encoder("cpu-default")``)
initialises the projector from a fixed seed, so it is the same model in every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.data.images import as_pil
from mmembed.encoders.base import Item
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.image_cache import DEFAULT_DISK_BYTES, DEFAULT_MAX_BYTES, FeatureCache, feature_cache_dir
from mmembed.encoders.inputs import check_items
from mmembed.encoders.parts import PartsModel, TextBackbone, VisionTower
from mmembed.encoders.pooling import POOLING_MODES, LatentAttentionPooler, pool
from mmembed.encoders.prompts import IMAGE_PLACEHOLDER, Role, build_prompt, count_prefix_tokens
from mmembed.encoders.registry import register, register_named_model
from mmembed.errors import ConfigError, ModelError


@register("towers")
class TowersEncoder(PartsModel):
    """EfficientNet-Lite0 + projector + all-MiniLM-L6-v2 in the MM-Embed prompt and pooling."""

    #: Settings stored in config.json (runtime choices such as device and cache dir are not).
    SETTINGS = ("max_length", "image_grid", "pooling", "num_latents", "latent_heads", "crop_fraction",
                "train_backbone", "seed")

    def __init__(self, *, max_length: int = 256, image_grid: int = 4, pooling: str = "mean",
                 num_latents: int = 512, latent_heads: int = 8, crop_fraction: float = 0.875,
                 train_backbone: bool = False, seed: int = 0, device: str | None = "cpu",
                 dtype: str | None = None, image_cache_dir: str | Path | bool | None = None,
                 image_cache_bytes: int = DEFAULT_MAX_BYTES, image_cache_disk_bytes: int = DEFAULT_DISK_BYTES,
                 image_cache: FeatureCache | None = None):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ConfigError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLING_MODES)}")
        if max_length < image_grid * image_grid + 8:
            raise ConfigError(f"max_length {max_length} leaves no room for {image_grid ** 2} image tokens")
        self.settings = {"max_length": max_length, "image_grid": image_grid, "pooling": pooling,
                         "num_latents": num_latents, "latent_heads": latent_heads,
                         "crop_fraction": crop_fraction, "train_backbone": train_backbone, "seed": seed}
        cache = image_cache
        if cache is None:  # on disk under the user cache directory unless image_cache_dir says otherwise
            cache = FeatureCache(image_cache_bytes, feature_cache_dir(image_cache_dir), image_cache_disk_bytes)
        self.text = TextBackbone(max_length)
        self.vision = VisionTower(image_grid, crop_fraction, cache)
        hidden = self.text.hidden_size
        self.dim = hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the untrained model is the same in every process
            self.projector = nn.Sequential(nn.Linear(1280, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.pooler = (LatentAttentionPooler(hidden, num_latents, num_heads=latent_heads)
                           if pooling == "latent_attention" else None)
        self.text.requires_grad_(train_backbone)
        self.vision.requires_grad_(False)
        self._image_text = self.text.IMAGE_TOKEN * self.vision.num_tokens
        self._prefix_counts: dict[str, int] = {}
        self._hash_text = train_backbone
        device_ = resolve_device(device)
        self.to(device=device_, dtype=resolve_dtype(dtype, device_))
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype

    def _projector_and_pooler(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self.projector, self.pooler

    # -------------------------------------------------------------- embedding

    def embed(self, items: Sequence[Item], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised (batch, 384) embeddings; differentiable w.r.t. the trainable weights."""
        items = list(items)
        check_items(items, encoder_name=self.encoder_type)
        instructions = list(instructions) if instructions is not None else [None] * len(items)
        prompts = [build_prompt(self._sanitize(it.text), it.image is not None, role, self._sanitize(ins))
                   .with_image_token(self._image_text) for it, ins in zip(items, instructions)]
        input_ids, mask = self.text.tokenize([p.text for p in prompts], [it.id for it in items], self.encoder_type)
        embeds = self.text.embed_ids(input_ids).to(self.dtype)
        embeds = self._insert_images(items, input_ids, embeds)
        hidden = self.text(embeds, mask)
        exclude = torch.tensor([self._prefix_count(p.prefix) for p in prompts], device=mask.device)
        return pool(hidden, mask, self.settings["pooling"], exclude, self.pooler)

    def image_tokens(self, images: Sequence[Any], item_ids: Sequence[str]) -> torch.Tensor:
        """Projected image tokens (n, grid*grid, 384) of images (PIL or lazy)."""
        pil = [as_pil(im, item_id) for im, item_id in zip(images, item_ids)]
        return self.projector(self.vision(pil))

    def _insert_images(self, items: list[Item], input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        with_image = [it for it in items if it.image is not None]
        if not with_image:
            return embeds
        slots = input_ids == self.text.image_token_id
        counts = slots.sum(dim=1).tolist()
        expected = self.vision.num_tokens
        for it, count in zip(items, counts):
            if count != (expected if it.image is not None else 0):
                raise ModelError(f"item {it.id!r}: found {count} image token slots, expected {expected}; "
                                 "is the instruction longer than max_length?")
        tokens = self.image_tokens([it.image for it in with_image], [it.id for it in with_image])
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    def _sanitize(self, text: str | None) -> str | None:
        """User text cannot inject image slots; the replacements tokenize to the same word pieces."""
        if text is None:
            return None
        return self.text.sanitize(text.replace(IMAGE_PLACEHOLDER, "< image >"))

    def _prefix_count(self, prefix: str) -> int:
        count = self._prefix_counts.get(prefix)
        if count is None:
            count = count_prefix_tokens(self.text.tokenizer, prefix)
            self._prefix_counts[prefix] = count
        return count

    def length_keys(self, items: Sequence[Item]) -> list[float]:
        """Token counts (text + image tokens): batches of equal length pad least."""
        counts = self.text.token_counts([it.text or "" for it in items])
        return [n + (self.vision.num_tokens if it.image is not None else 0) for n, it in zip(counts, items)]


register_named_model("cpu-default", lambda **overrides: TowersEncoder(**overrides))
