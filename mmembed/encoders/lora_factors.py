"""LoRA layers of peft seen as low-rank factors: what the towers models save instead of merged weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def linear_layer_names(module: nn.Module) -> list[str]:
    """The distinct last name parts of every ``nn.Linear`` in ``module`` (peft target names)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


def live_lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every peft LoRA layer under ``module``."""
    return [(name, child) for name, child in module.named_modules()
            if getattr(child, "base_layer", None) is not None and hasattr(child, "lora_A")
            and hasattr(child, "active_adapters")]


@contextlib.contextmanager
def lora_as_factors(module: nn.Module, prefix: str = "") -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Temporarily put every peft LoRA layer under ``module`` back to its plain base layer.

    Inside the block the state dict has the original names and weights, and the yielded mapping
    holds each adapted layer's low-rank update as ``{prefix + layer name: (A, scale * B)}`` so that
    ``W + B @ A`` is the trained weight. Saving the factors instead of merged weights keeps a
    checkpoint of a LoRA run small (a few MB instead of every adapted BERT matrix). The LoRA layers
    are put back after the block.
    """
    swaps, factors = [], {}
    for name, child in live_lora_layers(module):
        (adapter,) = child.active_adapters  # add_lora adds one adapter, and refuses a second
        a = child.lora_A[adapter].weight.detach()
        b = child.lora_B[adapter].weight.detach() * child.scaling[adapter]
        factors[prefix + name] = (a.clone(), b.clone())
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        swaps.append((parent, attr, child))
    for parent, attr, child in swaps:
        setattr(parent, attr, child.base_layer)
    try:
        yield factors
    finally:
        for parent, attr, child in reversed(swaps):
            setattr(parent, attr, child)
