"""Encoders: the :class:`Encoder` protocol, the registry, and the built-in models.

``load_encoder("cpu-default")`` builds the CPU default model; ``load_encoder(directory)`` loads a
saved checkpoint of any registered type. Names that need torch are imported on first use, so
``import mmembed.encoders`` stays cheap (the CLI imports it to print help).
"""

from __future__ import annotations

import importlib
from typing import Any

from mmembed.encoders.base import Encoder, Item, as_items, l2_normalize, per_item_instructions

_LAZY = {
    "load_encoder": "mmembed.encoders.registry",
    "register": "mmembed.encoders.registry",
    "register_named_model": "mmembed.encoders.registry",
    "registered_types": "mmembed.encoders.registry",
    "named_models": "mmembed.encoders.registry",
    "encoder_class": "mmembed.encoders.registry",
    "BatchedEncoder": "mmembed.encoders.batching",
    "TowersEncoder": "mmembed.encoders.towers",
    "FusionTowersEncoder": "mmembed.encoders.towers_fusion",
    "FeatureCache": "mmembed.encoders.image_cache",
}

__all__ = ["Encoder", "Item", "as_items", "l2_normalize", "per_item_instructions", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
