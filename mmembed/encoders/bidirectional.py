"""Bidirectional attention for decoder LLMs (NV-Embed / MM-Embed remove the causal mask).

transformers 5 builds every decoder's mask in ``masking_utils.create_causal_mask`` (and its
sliding-window twin), which falls back to ``create_bidirectional_mask`` — padding mask only —
when the model config says ``is_causal = False``. That alone is not enough: when no padding
is present the bidirectional mask is skipped (``None``), and the SDPA / flash-attention
integrations then read the attention module's own ``is_causal`` attribute and would apply a causal
mask after all. So both switches are set: the config flag (mask construction) and the flag on
every attention module of the LLM (the kernels' fallback). No model class is subclassed and no
function is patched, so this keeps working for Llama, Mistral, Qwen2 and the VLMs built on them.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def set_bidirectional(language_model: nn.Module, enabled: bool = True) -> int:
    """Make ``language_model`` attend in both directions (or causally again); returns #modules changed.

    Only the given module is touched (pass the LLM of a VLM, not the whole VLM: vision towers keep
    their own, already non-causal, settings).
    """
    config = getattr(language_model, "config", None)
    if config is None:  # a programming error: encoders pass their transformers language model
        raise TypeError(f"{type(language_model).__name__} has no config; pass a transformers model")
    config.is_causal = not enabled
    changed = 0
    for module in language_model.modules():
        if isinstance(getattr(module, "is_causal", None), bool) and module is not language_model:
            module.is_causal = not enabled
            changed += 1
    if enabled and changed == 0:
        logger.warning("%s has no attention module with an is_causal flag; bidirectional attention relies on "
                       "the config flag alone", type(language_model).__name__)
    return changed

