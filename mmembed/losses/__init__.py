"""Contrastive losses on embeddings, and the cross-process gathers they use."""

from mmembed.losses.contrastive import (
    DEFAULT_TEMPERATURE,
    PAD_KEY,
    InfoNCELoss,
    false_negative_mask,
    hash_ids,
    info_nce,
    pack_key_sets,
    targets_and_mask,
)
from mmembed.losses.distributed import gather_keys, gather_with_grad, global_sum, world

__all__ = [
    "DEFAULT_TEMPERATURE",
    "PAD_KEY",
    "InfoNCELoss",
    "false_negative_mask",
    "gather_keys",
    "gather_with_grad",
    "global_sum",
    "hash_ids",
    "info_nce",
    "pack_key_sets",
    "targets_and_mask",
    "world",
]
