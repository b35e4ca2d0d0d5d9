"""The module the engine wraps (DDP, FSDP, DeepSpeed): a trainable encoder whose ``forward`` embeds."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmembed.encoders.base import TrainableEncoder
from mmembed.errors import ConfigError

#: Parameter-name prefix of the encoder inside :class:`EmbeddingModule`.
INNER = "inner."


class EmbeddingModule(nn.Module):
    """The encoder's ``torch_module()`` under ``inner``; ``forward`` embeds queries and/or candidates.

    One forward call per backward keeps DDP's bookkeeping simple; GradCache calls it once per side
    and chunk. Parameter names are the encoder's own with the prefix ``inner.``.

    With ``anchor=True`` every output also depends on every trainable parameter through a term
    multiplied by zero (values and gradients are unchanged). A batch without images would otherwise
    leave the projector out of the graph — a loss with no gradient at all when only the projector
    trains, and under DDP ranks that disagree about which parameters take part. FSDP shards
    parameters outside their own module's forward, so it runs without the anchor.
    """

    def __init__(self, encoder: TrainableEncoder, anchor: bool = True, length_buckets: int = 1):
        super().__init__()
        if not isinstance(encoder, TrainableEncoder):
            raise ConfigError(f"a {type(encoder).__name__} encoder cannot be trained: it does not implement "
                              "mmembed.encoders.base.TrainableEncoder (the towers models and VLMEncoder do)")
        self._encoder = [encoder]  # a list, so that an encoder that is its own module is not registered twice
        self.anchor = anchor
        self.length_buckets = length_buckets
        self._anchored: list[nn.Parameter] | None = None
        self.inner = encoder.torch_module()

    @property
    def encoder(self) -> TrainableEncoder:
        return self._encoder[0]

    def forward(self, queries: Sequence | None = None, instructions: Sequence[str | None] | None = None,
                candidates: Sequence | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        q = self._embed(list(queries), "query", instructions) if queries is not None else None
        c = self._embed(list(candidates), "candidate", None) if candidates is not None else None
        if self.anchor and torch.is_grad_enabled():
            if self._anchored is None:
                self._anchored = [p for p in self.parameters() if p.requires_grad]
            if self._anchored:
                zero = torch.stack([p.reshape(-1)[0].float() for p in self._anchored]).sum() * 0.0
                q = q + zero if q is not None else None
                c = c + zero if c is not None else None
        return q, c

    def _embed(self, items: list, role: str, instructions: Sequence[str | None] | None) -> torch.Tensor:
        """``encoder.embed``, in ``length_buckets`` passes over items sorted by length (less padding).

        Each row's embedding does not depend on what it is padded with, so this only saves the
        compute spent on padding (a batch mixing 10-token names and 60-token definitions).
        """
        instructions = list(instructions) if instructions is not None else [None] * len(items)
        if self.length_buckets <= 1 or len(items) < 2 * self.length_buckets:
            return self.encoder.embed(items, role, instructions)
        keys = list(self.encoder.length_keys(items))
        keys = [k + 1.3 * len((ins or "").split()) for k, ins in zip(keys, instructions)]
        order = sorted(range(len(items)), key=keys.__getitem__)
        size = -(-len(items) // self.length_buckets)
        parts = [order[i:i + size] for i in range(0, len(order), size)]
        out = torch.cat([self.encoder.embed([items[i] for i in part], role, [instructions[i] for i in part])
                         for part in parts])
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return out[inverse.to(out.device)]

    def train(self, mode: bool = True) -> EmbeddingModule:
        super().train(mode)  # the encoder's modules are this module's children
        self.encoder.train(mode)  # and whatever else the encoder ties to the mode
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by encoder-relative name (what a checkpoint must restore)."""
        return {name.removeprefix(INNER): p.detach() for name, p in self.named_parameters() if p.requires_grad}
