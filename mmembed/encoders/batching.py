"""Batching shared by the encoders: the Encoder protocol implemented on top of one ``embed`` method.

- :class:`BatchedEncoder` — base class implementing :class:`~mmembed.encoders.base.Encoder` on top
  of ``embed(items, role, instructions) -> torch.Tensor`` (rows L2-normalised, with gradients when
  called in training). It checks items, sorts them by ``length_keys(items)`` (default:
  ``length_key`` per item, text characters) so that a batch pads little, runs batches under
  ``torch.no_grad`` (and in eval mode when the encoder is an ``nn.Module``) with an optional tqdm
  bar, and returns float32 numpy rows in the input order. Subclasses set ``accepts_images``.
- :func:`encode_in_batches` — the batching loop on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from mmembed.encoders.base import Instructions, Item, per_item_instructions
from mmembed.encoders.inputs import check_items
from mmembed.encoders.prompts import Role
from mmembed.errors import ConfigError
from mmembed.progress import progress


def encode_in_batches(items: Sequence[Any], encode_batch: Callable[[list[int]], torch.Tensor | np.ndarray], *,
                      dim: int, batch_size: int = 32, show_progress: bool = False,
                      sort_key: Callable[[Any], float] | None = None, lengths: Sequence[float] | None = None,
                      desc: str = "encoding") -> np.ndarray:
    """Call ``encode_batch`` on batches of indices into ``items``; rows come back in input order.

    With ``sort_key`` (or precomputed ``lengths``) the items are processed longest first, so each
    batch pads little (the trick sentence-transformers uses with character counts; token counts
    waste less); results are put back in input order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(items)
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    order = list(range(n))
    if lengths is None and sort_key is not None:
        lengths = [sort_key(item) for item in items]
    if lengths is not None:
        order.sort(key=lambda i: -lengths[i])
    with progress(n, desc, show=show_progress) as bar:
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            rows = encode_batch(idx)
            if isinstance(rows, torch.Tensor):
                rows = rows.detach().float().cpu().numpy()
            out[idx] = rows
            bar.update(len(idx))
    return out


class BatchedEncoder:
    """Implements ``encode_queries``/``encode_candidates`` on top of :meth:`embed`.

    Subclasses provide ``encoder_id``, ``dim`` and :meth:`embed`; they may override
    :meth:`length_key` (a cost estimate used to group similar items into a batch).
    """

    #: Set by :func:`mmembed.encoders.registry.register`.
    encoder_type: ClassVar[str] = ""
    #: Whether items may carry images (text-only encoders set False).
    accepts_images: ClassVar[bool] = True
    encoder_id: str
    dim: int

    def embed(self, items: Sequence[Item], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised embeddings (batch, dim) as a torch tensor, differentiable in training."""
        raise NotImplementedError

    def length_key(self, item: Item) -> float:
        return len(item.text or "") + (1000.0 if item.image is not None else 0.0)

    def length_keys(self, items: Sequence[Item]) -> list[float]:
        """Cost estimates of all items at once (override to tokenize in one batch)."""
        return [self.length_key(item) for item in items]

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed queries, each with its instruction (one for all, one per query, or none)."""
        instructions = per_item_instructions(instruction, len(queries))
        return self._encode(queries, "query", instructions, batch_size, show_progress)

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        """Embed candidates (never with an instruction)."""
        return self._encode(candidates, "candidate", [None] * len(candidates), batch_size, show_progress)

    def _encode(self, items: Sequence[Item], role: Role, instructions: list[str | None], batch_size: int,
                show_progress: bool) -> np.ndarray:
        items = list(items)
        check_items(items, accepts_images=self.accepts_images, encoder_name=self.encoder_type or type(self).__name__)

        def encode_batch(idx: list[int]) -> torch.Tensor:
            return self.embed([items[i] for i in idx], role, [instructions[i] for i in idx])

        was_training = isinstance(self, torch.nn.Module) and self.training
        if was_training:
            self.eval()  # no dropout when embedding for retrieval
        try:
            with torch.no_grad():
                return encode_in_batches(items, encode_batch, dim=self.dim, batch_size=batch_size,
                                         show_progress=show_progress, lengths=self.length_keys(items),
                                         desc=f"{role}s")
        finally:
            if was_training:
                self.train()
