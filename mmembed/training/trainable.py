"""What a training run updates: LoRA on the language backbone, the projector, the pooler, and more on request.

Everything here goes through the :class:`~mmembed.encoders.base.TrainableEncoder` protocol: the
encoder says where its language backbone, projector, pooler and vision tower are
(``trainable_parts``) and how LoRA is added to it (``add_lora``); this module freezes everything
and unfreezes what the configuration asks for.

Continuing from a LoRA checkpoint (stage 2 or 3 from the previous stage) is one behaviour for
every encoder: the loaded update stays in effect, frozen, and a fresh adapter with the configured
``model.lora`` settings trains on top of it; the saved model holds both.
"""

from __future__ import annotations

import logging
import re

from torch import nn

from mmembed.encoders.base import TrainableEncoder, TrainableParts
from mmembed.errors import ConfigError
from mmembed.training.config import ModelSettings
from mmembed.training.embedding_module import INNER, EmbeddingModule

logger = logging.getLogger(__name__)


def language_will_train(encoder: TrainableEncoder, settings: ModelSettings) -> bool:
    """Whether LoRA or a ``train_patterns`` entry will change the encoder's language backbone."""
    if settings.lora.enabled:
        return True
    language = {id(p) for p in encoder.trainable_parts().language.parameters()}
    patterns = [re.compile(p) for p in settings.train_patterns]
    return any(pattern.search(name) for name, p in encoder.torch_module().named_parameters()
               if id(p) in language for pattern in patterns)


def configure_trainable(encoder: TrainableEncoder, model: EmbeddingModule, settings: ModelSettings) -> list[str]:
    """Freeze everything, then add LoRA and unfreeze the requested parts; returns the trainable names."""
    parts = encoder.trainable_parts()
    if settings.train_vision and parts.vision_cached:
        raise ConfigError("model.train_vision: this encoder's vision features are cached without gradients; "
                          "its vision tower cannot be trained")
    model.requires_grad_(False)
    if settings.lora.enabled:
        lora = settings.lora
        encoder.add_lora(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    for module, wanted in ((parts.projector, settings.train_projector), (parts.pooler, settings.train_pooler)):
        if wanted and module is not None:
            module.requires_grad_(True)
    if settings.train_vision:
        for p in parts.vision:
            p.requires_grad_(True)
    named = [(n.removeprefix(INNER), p) for n, p in model.named_parameters()]
    _train_patterns(settings.train_patterns, named)
    trainable = [n for n, p in named if p.requires_grad]
    if not trainable:
        raise ConfigError("model: nothing to train (enable lora, train_projector/pooler or give train_patterns)")
    total = sum(p.numel() for _, p in named)
    count = sum(p.numel() for _, p in named if p.requires_grad)
    logger.info("training %d tensors, %d of %d parameters (%.2f%%)", len(trainable), count, total,
                100 * count / max(total, 1))
    return trainable


def _train_patterns(patterns: list[str], named: list[tuple[str, nn.Parameter]]) -> None:
    """Unfreeze every parameter whose name matches one of ``model.train_patterns``."""
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [p for n, p in named if regex.search(n)]
        if not hits:
            raise ConfigError(f"model.train_patterns: {pattern!r} matches no parameter (names look like "
                              f"{named[0][0]!r})")
        for p in hits:
            p.requires_grad_(True)


def disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability to zero (nn.Dropout modules and attention-dropout attributes)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0
        for attr in ("attention_dropout", "dropout_prob"):
            if isinstance(getattr(child, attr, None), float):
                setattr(child, attr, 0.0)


def enable_gradient_checkpointing(parts: TrainableParts) -> None:
    """Non-reentrant activation checkpointing of the language backbone (transformers models)."""
    language = parts.language
    if not hasattr(language, "gradient_checkpointing_enable"):
        raise ConfigError(f"model.gradient_checkpointing: {type(language).__name__} does not support it")
    language.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
