"""The Encoder protocol: everything that consumes embeddings depends on this and nothing else.

An encoder turns :class:`Item` s into float32, L2-normalised rows. Queries may carry a task
instruction; candidates never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from mmembed.data.images import ImageLike, ImageStore
from mmembed.errors import ArgumentError, DataError, Location
from mmembed.types import Candidate, Modality, Query, has_visible_text

if TYPE_CHECKING:
    import torch
    from torch import nn

Instructions = str | None | Sequence[str | None]


@dataclass(frozen=True)
class Item:
    """What an encoder sees: an id (for error messages), optional text, optional image."""

    id: str
    text: str | None = None
    image: ImageLike | None = None

    @property
    def modality(self) -> Modality:
        try:
            return Modality.of(has_visible_text(self.text), self.image is not None)
        except DataError as e:
            raise DataError(e.reason, Location(item=self.id)) from None


def as_items(records: Sequence[Query | Candidate | Item], images: ImageStore | None = None) -> list[Item]:
    """Items from records; image paths are resolved against ``images`` and loaded lazily."""
    items = []
    for r in records:
        if isinstance(r, Item):
            items.append(r)
            continue
        image = None
        if r.image:
            if images is None:
                raise DataError("this item has an image but no image root was given", Location(item=r.id))
            image = images.ref(r.image, r.id)
        items.append(Item(r.id, r.text, image))
    return items


def per_item_instructions(instruction: Instructions, n: int) -> list[str | None]:
    """Broadcast one instruction (or none) to ``n`` queries, or check a per-query list."""
    if instruction is None or isinstance(instruction, str):
        return [instruction] * n
    instructions = list(instruction)
    if len(instructions) != n:
        raise ArgumentError(f"instruction: got {len(instructions)} instructions for {n} queries")
    return instructions


@runtime_checkable
class Encoder(Protocol):
    """A bi-encoder for queries and candidates of any modality."""

    #: Identifies the encoder and its weights; keys embedding caches and index manifests.
    encoder_id: str
    #: Embedding dimension.
    dim: int

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed queries, each with its instruction (one for all, one per query, or none)."""
        ...

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        """Embed candidates (never with an instruction)."""
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class TrainableParts:
    """Where a trainable encoder's parts are (``None`` when it has no such part)."""

    #: The language backbone (what LoRA adapts and gradient checkpointing applies to).
    language: nn.Module
    projector: nn.Module | None
    pooler: nn.Module | None
    vision: list[nn.Parameter]
    #: The vision tower's output is cached without gradients (training it is impossible).
    vision_cached: bool


@runtime_checkable
class TrainableEncoder(Encoder, Protocol):
    """An :class:`Encoder` that :mod:`mmembed.training` can train: the trainer depends on this and nothing else.

    The CPU towers models (:class:`~mmembed.encoders.parts.PartsModel`) and
    :class:`~mmembed.encoders.vlm.VLMEncoder` implement it. Every parameter is frozen until the
    trainer unfreezes what the configuration asks for.
    """

    def torch_module(self) -> nn.Module:
        """One ``nn.Module`` holding every parameter, named as the encoder names them (what DDP wraps)."""
        ...

    def trainable_parts(self) -> TrainableParts:
        """The language backbone, projector, pooler and vision parameters."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Training (dropout on) or evaluation mode, as ``nn.Module.train``."""
        ...

    def embed(self, items: Sequence[Item], role: str, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised (batch, dim) embeddings with gradients outside ``torch.no_grad``."""
        ...

    def length_keys(self, items: Sequence[Item]) -> list[float]:
        """Cost estimates of items (to embed similar lengths together)."""
        ...

    def for_language_training(self) -> TrainableEncoder:
        """This encoder, or a copy of it, that saves its language backbone's weights when they change.

        The trainer calls it before anything else when LoRA or ``train_patterns`` will change the
        language backbone, and trains what it returns.
        """
        ...

    def add_lora(self, *, r: int, alpha: int, dropout: float, target_modules: Sequence[str] | None) -> None:
        """Add a fresh trainable LoRA adapter to the language backbone (only its weights trainable).

        A LoRA update loaded with the encoder stays in effect, frozen, under the new adapter, and
        :meth:`save_pretrained` keeps both.
        """
        ...

    def save_pretrained(self, directory: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write the encoder (LoRA included) so that ``load_encoder(directory)`` reads it back."""
        ...
