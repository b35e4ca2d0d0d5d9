"""What a training run updates: LoRA on the language backbone, the projector, the pooler, and more on request.

Encoders differ in where their parts live, so :func:`encoder_parts` finds them once:

- the VLM encoder (:class:`~mmembed.encoders.vlm.VLMEncoder`): its family adapter names the LLM
  and the vision-language projector; the rest of the transformers model is the vision tower;
  the latent-attention pooler is separate. LoRA goes through ``encoder.enable_lora`` (peft), so
  checkpoints keep the adapter as a peft adapter directory.
- the towers models (CPU default and its score-fusion variant): MiniLM is the language backbone,
  ``projector`` / ``image_proj`` the projector, EfficientNet the vision tower (always frozen: its
  features come from a cache and carry no gradient). LoRA is injected into MiniLM with peft; the
  exported checkpoint stores each adapted layer's low-rank factors (:func:`lora_as_factors`),
  which loading merges into plain BERT weights.

:class:`EmbeddingModel` puts the encoder's modules in one ``nn.Module`` whose ``forward`` embeds,
which is what DDP, FSDP and DeepSpeed wrap.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mmembed.encoders.common import require_module
from mmembed.errors import ConfigError
from mmembed.training.config import LoraSettings, ModelSettings

logger = logging.getLogger(__name__)

#: Parameter-name prefix of the encoder inside :class:`EmbeddingModel`.
INNER = "inner."


@dataclass
class EncoderParts:
    """Where an encoder's parts are (``None`` when it has no such part)."""

    language: nn.Module
    projector: nn.Module | None
    pooler: nn.Module | None
    vision: list[nn.Parameter]
    #: The vision tower's output is cached without gradients (training it is impossible).
    vision_cached: bool


def encoder_parts(encoder) -> EncoderParts:
    """The language backbone, projector, pooler and vision parameters of a supported encoder."""
    adapter = getattr(encoder, "adapter", None)
    if adapter is not None and hasattr(adapter, "language_model"):  # VLMEncoder
        language, projector = adapter.language_model, adapter.projector
        own = {id(p) for p in language.parameters()} | {id(p) for p in projector.parameters()}
        vision = [p for p in encoder.model.parameters() if id(p) not in own]
        return EncoderParts(language, projector, encoder.latent_pooler, vision, False)
    text = getattr(encoder, "text", None)
    if text is not None and hasattr(text, "model"):  # towers models
        projector = getattr(encoder, "projector", None) or getattr(encoder, "image_proj", None)
        vision = list(encoder.vision.parameters()) if hasattr(encoder, "vision") else []
        return EncoderParts(text.model, projector, getattr(encoder, "pooler", None), vision, True)
    raise ConfigError(f"training does not know the parts of a {type(encoder).__name__} encoder "
                      "(supported: the towers models and VLMEncoder)")


class EmbeddingModel(nn.Module):
    """The encoder's modules in one module; ``forward`` embeds queries and/or candidates.

    One forward call per backward keeps DDP's bookkeeping simple; GradCache calls it once per side
    and chunk. Parameter names are the encoder's own with the prefix ``inner.``.

    With ``anchor=True`` every output also depends on every trainable parameter through a term
    multiplied by zero (values and gradients are unchanged). A batch without images would otherwise
    leave the projector out of the graph — a loss with no gradient at all when only the projector
    trains, and under DDP ranks that disagree about which parameters take part. FSDP shards
    parameters outside their own module's forward, so it runs without the anchor.
    """

    def __init__(self, encoder, anchor: bool = True, length_buckets: int = 1):
        super().__init__()
        self._encoder = [encoder]  # a list, so the encoder is not registered twice
        self.anchor = anchor
        self.length_buckets = length_buckets
        self._anchored: list[nn.Parameter] | None = None
        if isinstance(encoder, nn.Module):
            self.inner = encoder
        else:
            named = {}
            for n, module in enumerate(encoder.modules()):
                name = next((k for k, v in vars(encoder).items() if v is module), f"part{n}")
                named[name] = module
            self.inner = nn.ModuleDict(named)

    @property
    def encoder(self):
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
        keys = self._lengths(items)
        keys = [k + 1.3 * len((ins or "").split()) for k, ins in zip(keys, instructions)]
        order = sorted(range(len(items)), key=keys.__getitem__)
        size = -(-len(items) // self.length_buckets)
        parts = [order[i:i + size] for i in range(0, len(order), size)]
        out = torch.cat([self.encoder.embed([items[i] for i in part], role, [instructions[i] for i in part])
                         for part in parts])
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return out[inverse.to(out.device)]

    def _lengths(self, items: list) -> list[float]:
        encoder = self.encoder
        if hasattr(encoder, "length_keys"):
            return list(encoder.length_keys(items))
        return [encoder.length_key(item) for item in items]

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if not isinstance(self.encoder, nn.Module):
            self.encoder.train(mode)
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by encoder-relative name (what a checkpoint must restore)."""
        return {name.removeprefix(INNER): p.detach() for name, p in self.named_parameters() if p.requires_grad}


def needs_text_training(settings: ModelSettings, names: Sequence[str]) -> bool:
    """Whether the towers' MiniLM weights will change (LoRA or a pattern matching ``text.``)."""
    patterns = [re.compile(p) for p in settings.train_patterns]
    return settings.lora.enabled or any(p.search(n) for p in patterns for n in names if n.startswith("text."))


def configure_trainable(encoder, model: EmbeddingModel, settings: ModelSettings) -> list[str]:
    """Freeze everything, then add LoRA and unfreeze the requested parts; returns the trainable names."""
    parts = encoder_parts(encoder)
    if settings.train_vision and parts.vision_cached:
        raise ConfigError("model.train_vision: this encoder's vision features are cached without gradients; "
                          "its vision tower cannot be trained")
    model.requires_grad_(False)
    if settings.lora.enabled:
        _add_lora(encoder, parts, settings.lora)
    for module, wanted in ((parts.projector, settings.train_projector), (parts.pooler, settings.train_pooler)):
        if wanted and module is not None:
            module.requires_grad_(True)
    if settings.train_vision:
        for p in parts.vision:
            p.requires_grad_(True)
    named = [(n.removeprefix(INNER), p) for n, p in model.named_parameters()]
    for pattern in settings.train_patterns:
        regex = re.compile(pattern)
        hits = [p for n, p in named if regex.search(n)]
        if not hits:
            raise ConfigError(f"model.train_patterns: {pattern!r} matches no parameter (names look like "
                              f"{named[0][0]!r})")
        for p in hits:
            p.requires_grad_(True)
    trainable = [n for n, p in named if p.requires_grad]
    if not trainable:
        raise ConfigError("model: nothing to train (enable lora, train_projector/pooler or give train_patterns)")
    total = sum(p.numel() for _, p in named)
    count = sum(p.numel() for _, p in named if p.requires_grad)
    logger.info("training %d tensors, %d of %d parameters (%.2f%%)", len(trainable), count, total,
                100 * count / max(total, 1))
    return trainable


def _lora_names(names: Sequence[str]) -> list[str]:
    return [n for n in names if "lora_" in n]


def _add_lora(encoder, parts: EncoderParts, lora: LoraSettings) -> None:
    if hasattr(encoder, "enable_lora"):
        existing = _lora_names([n for n, _ in parts.language.named_parameters()])
        if existing:  # continuing from a checkpoint that has an adapter: train it further
            for name, p in parts.language.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
            return
        encoder.enable_lora(r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                            target_modules=lora.target_modules, train_projector=False)
        for name, p in parts.language.named_parameters():
            p.requires_grad_("lora_" in name)
        return
    peft = require_module("peft", extra="train", what="peft (LoRA)")
    targets = lora.target_modules or linear_layer_names(parts.language)
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    peft.inject_adapter_in_model(config, parts.language)
    for name, p in parts.language.named_parameters():
        p.requires_grad_("lora_" in name)


def linear_layer_names(module: nn.Module) -> list[str]:
    """The distinct last name parts of every ``nn.Linear`` in ``module`` (peft target names)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


@contextlib.contextmanager
def lora_as_factors(module: nn.Module, prefix: str = "") -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Temporarily put every peft LoRA layer under ``module`` back to its plain base layer.

    For exporting a towers model: inside the block the state dict has the original names and the
    pretrained weights, and the yielded mapping holds each adapted layer's low-rank update as
    ``{prefix + layer name: (A, scale * B)}`` so that ``W + B @ A`` is the trained weight. Saving
    the factors instead of merged weights keeps a checkpoint of a LoRA run small (a few MB
    instead of every adapted BERT matrix). The LoRA layers are put back after the block.
    """
    swaps, factors = [], {}
    for name, child in list(module.named_modules()):
        base = getattr(child, "base_layer", None)
        if base is None or not hasattr(child, "lora_A") or not hasattr(child, "active_adapters"):
            continue
        (adapter,) = child.active_adapters  # one adapter is all training ever adds
        a = child.lora_A[adapter].weight.detach()
        b = child.lora_B[adapter].weight.detach() * child.scaling[adapter]
        factors[prefix + name] = (a.clone(), b.clone())
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        swaps.append((parent, attr, child))
        setattr(parent, attr, base)
    try:
        yield factors
    finally:
        for parent, attr, child in reversed(swaps):
            setattr(parent, attr, child)


def module_prefix(root: nn.Module, module: nn.Module) -> str:
    """The state-dict prefix of ``module`` inside ``root`` (``""`` for the root itself)."""
    for name, candidate in root.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")


def disable_dropout(module: nn.Module) -> None:
    """Set every dropout probability to zero (nn.Dropout modules and attention-dropout attributes)."""
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0
        for attr in ("attention_dropout", "dropout_prob"):
            if isinstance(getattr(child, attr, None), float):
                setattr(child, attr, 0.0)


def enable_gradient_checkpointing(parts: EncoderParts) -> None:
    """Non-reentrant activation checkpointing of the language backbone (transformers models)."""
    language = parts.language
    if not hasattr(language, "gradient_checkpointing_enable"):
        raise ConfigError(f"model.gradient_checkpointing: {type(language).__name__} does not support it")
    language.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
