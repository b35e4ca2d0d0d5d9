"""VLMEncoder: a multimodal LLM from transformers, composed (never subclassed) into a bi-encoder.

One class serves every supported family (LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM);
:mod:`.vlm_families` holds what differs between them. Each item becomes an MM-Embed prompt
(:mod:`.prompts`) with the family's image token, the LLM's last hidden states are pooled
(:mod:`.pooling`; which leading tokens of a query are excluded is the ``instruction_mask``
convention of :mod:`.prompts`: ``"prefix"`` by default, ``"release"`` for the released MM-Embed),
and rows are L2-normalised. The LLM can attend bidirectionally (:mod:`.bidirectional`), as NV-Embed and
MM-Embed do.

Models are read from a local directory only (``local_files_only=True``); remote code runs only
when the caller passes ``trust_remote_code=True``. ``max_length`` counts text tokens plus each
image's *placeholder* tokens, not the expanded image tokens (the release truncated before the
image was expanded too); longer items lose the end of their text, with one warning per run.
LLaVA-NeXT cuts token ids exactly as the release's tokenizer did; the other families cut the
text and re-render the prompt.
``append_eos`` (default on, as the release's tokenizer did) ends every prompt with EOS, which is
what ``last`` pooling reads. Saving and LoRA live in :mod:`.vlm_checkpoint`.

``image_size`` (default: the family's own default view) sets the image resolution: LLaVA-NeXT —
the side of the single global view (the tower's 336 px by default; anyres tiles are never used);
Qwen2(.5)-VL — images are scaled to at most ``image_size**2`` pixels; Idefics3/SmolVLM — unset
means one global view at the tower's size, a value means the processor's tiling at that longest
edge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmembed.data.images import as_pil
from mmembed.dependencies import quiet_transformers
from mmembed.encoders.base import TrainableEncoder, TrainableParts
from mmembed.encoders.batching import BatchedEncoder
from mmembed.encoders.bidirectional import set_bidirectional
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.inputs import check_items, clip_to_tokens, warn_truncation
from mmembed.encoders.pooling import POOLING_MODES, LatentAttentionPooler, pool
from mmembed.encoders.prompts import (
    IMAGE_PLACEHOLDER,
    INSTRUCTION_MASKS,
    InstructionMask,
    Prompt,
    Role,
    build_prompt,
    escape_tokens,
    excluded_tokens,
    release_instruction_part,
)
from mmembed.encoders.registry import register, register_folder_loader
from mmembed.encoders.vlm_families import FamilyAdapter, adapter_class
from mmembed.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

#: NV-Embed's latent-attention shape relative to the LLM: 512 latents, 8 heads.
DEFAULT_LATENT = {"num_latents": 512, "num_heads": 8}


@register("vlm")
class VLMEncoder(BatchedEncoder, TrainableEncoder):
    """A bi-encoder over a Hugging Face vision-language model (see the module docstring)."""

    def __init__(self, model: nn.Module, processor: Any, *, pooling: str = "mean", bidirectional: bool = False,
                 max_length: int = 512, image_size: int | None = None, append_eos: bool = True,
                 padding_side: str = "right", latent_pooler: LatentAttentionPooler | None = None,
                 latent: dict[str, int] | None = None, adapter_kwargs: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 source: dict[str, Any] | None = None, seed: int = 0, instruction_mask: InstructionMask = "prefix"):
        if pooling not in POOLING_MODES:
            raise ConfigError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLING_MODES)}")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        if instruction_mask not in INSTRUCTION_MASKS:
            raise ConfigError(f"instruction_mask must be one of {', '.join(INSTRUCTION_MASKS)}, "
                              f"got {instruction_mask!r}")
        self.instruction_mask = instruction_mask
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)  # trainers opt in (LoRA, projector); saving relies on it
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = padding_side
        self.model_type = model.config.model_type
        self.adapter: FamilyAdapter = adapter_class(self.model_type)(model, processor, image_size,
                                                                    **(adapter_kwargs or {}))
        self.pooling, self.bidirectional, self.max_length = pooling, bidirectional, max_length
        self.image_size, self.append_eos, self.padding_side = image_size, append_eos, padding_side
        self.adapter_kwargs = dict(adapter_kwargs or {})
        set_bidirectional(self.adapter.language_model, bidirectional)
        hidden = self.adapter.language_model.config.hidden_size
        self.latent = {**DEFAULT_LATENT, **(latent or {})} if pooling == "latent_attention" else None
        self.latent_pooler = latent_pooler
        if pooling == "latent_attention" and latent_pooler is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.latent_pooler = LatentAttentionPooler(hidden, **self.latent)
        if self.latent_pooler is not None:
            self.latent_pooler = self.latent_pooler.to(self.device).eval()
            self.latent = {k: v for k, v in self.latent_pooler.config.items() if k != "hidden_size"}
        self.dim = hidden
        self.source = source or {"format": "hf", "path": getattr(model.config, "_name_or_path", "")}
        self.peft_model = None  # set by vlm_checkpoint.enable_lora / load_lora
        self.encoder_id = self._make_id()
        self._exclusions: dict[str, int] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_hf(cls, path: str | Path, *, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                **settings: Any) -> VLMEncoder:
        """An encoder over the transformers checkpoint directory ``path`` (never downloads)."""
        model, processor = load_hf_backbone(path, trust_remote_code=trust_remote_code,
                                            attn_implementation=attn_implementation, dtype=resolve_dtype(
                                                dtype, resolve_device(device)))
        return cls(model, processor, device=device, dtype=dtype,
                   source={"format": "hf", "path": str(Path(path).resolve())}, **settings)

    @classmethod
    def from_release(cls, path: str | Path, *, nvembed_config: str | Path | None = None,
                     latent_heads: int | None = None, instruction_mask: InstructionMask = "release",
                     device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                     attn_implementation: str = "sdpa", max_length: int = 512, **settings: Any) -> VLMEncoder:
        """The released nvidia/MM-Embed folder ``path``, embedding as the release does.

        ``settings`` go to the encoder (e.g. ``image_size``); pooling, bidirectional attention, EOS,
        the PAD quirk and the padding side are the release's. See :mod:`.vlm_release` for
        ``nvembed_config``, ``latent_heads`` and ``instruction_mask``.
        """
        from mmembed.encoders.vlm_release import RELEASE_SETTINGS, release_encoder_arguments

        for key in RELEASE_SETTINGS:
            settings.pop(key, None)  # fixed by the release (a saved checkpoint repeats them)
        arguments = release_encoder_arguments(path, nvembed_config=nvembed_config, latent_heads=latent_heads,
                                              device=device, dtype=dtype, attn_implementation=attn_implementation)
        return cls(**arguments, instruction_mask=instruction_mask, max_length=max_length, **settings)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> VLMEncoder:
        """Load a checkpoint written by :meth:`save_pretrained`."""
        from mmembed.encoders.vlm_checkpoint import load_vlm_checkpoint

        return load_vlm_checkpoint(cls, directory, **overrides)

    def save_pretrained(self, directory: str | Path, *, copy_backbone: bool = False,
                        dtype: torch.dtype | None = None) -> Path:
        """Write a checkpoint; see :func:`mmembed.encoders.vlm_checkpoint.save_vlm_checkpoint`.

        ``dtype`` (the towers models' stored precision) does not apply: a VLM checkpoint holds the
        adapter and the few trained tensors in the model's own dtype.
        """
        from mmembed.encoders.vlm_checkpoint import save_vlm_checkpoint

        if dtype is not None:
            logger.warning("a stored dtype applies to the towers models only; the VLM is saved as it is")
        return save_vlm_checkpoint(self, directory, copy_backbone=copy_backbone)

    def enable_lora(self, r: int = 8, alpha: int = 64, dropout: float = 0.0,
                    target_modules: Sequence[str] | None = None, train_projector: bool = True) -> None:
        """Add LoRA adapters to the LLM (MM-Embed: r=8, alpha=64) and make them trainable."""
        from mmembed.encoders.vlm_checkpoint import enable_lora

        enable_lora(self, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                    train_projector=train_projector)

    def settings(self) -> dict[str, Any]:
        """The constructor settings, as JSON values (what a checkpoint records)."""
        return {"model_type": self.model_type, "pooling": self.pooling, "bidirectional": self.bidirectional,
                "max_length": self.max_length, "image_size": self.image_size, "append_eos": self.append_eos,
                "padding_side": self.padding_side, "latent": self.latent, "adapter_kwargs": self.adapter_kwargs,
                "instruction_mask": self.instruction_mask}

    def _make_id(self, name: str | None = None) -> str:
        name = name or Path(str(self.source.get("path", ""))).name or self.model_type
        bidir = "-bidir" if self.bidirectional else ""
        return f"vlm:{self.model_type}:{name}:{self.pooling}{bidir}"

    # ------------------------------------------------------------------ the TrainableEncoder protocol

    def torch_module(self) -> nn.ModuleDict:
        """The transformers model (``model``) and the latent-attention pooler (``latent_pooler``) in one module."""
        modules: dict[str, nn.Module] = {"model": self.model}
        if self.latent_pooler is not None:
            modules["latent_pooler"] = self.latent_pooler
        return nn.ModuleDict(modules)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.torch_module().parameters() if p.requires_grad]

    def trainable_parts(self) -> TrainableParts:
        language, projector = self.adapter.language_model, self.adapter.projector
        own = {id(p) for p in language.parameters()} | {id(p) for p in projector.parameters()}
        vision = [p for p in self.model.parameters() if id(p) not in own]  # the rest of the model
        return TrainableParts(language, projector, self.latent_pooler, vision, False)

    def for_language_training(self) -> VLMEncoder:
        """This encoder: a checkpoint stores every backbone tensor that is trainable when saved."""
        return self

    def add_lora(self, *, r: int, alpha: int, dropout: float, target_modules: Sequence[str] | None) -> None:
        """A fresh trainable LoRA adapter on the LLM; an adapter loaded with the encoder stays, frozen.

        See :func:`mmembed.encoders.vlm_checkpoint.add_trainable_adapter`.
        """
        from mmembed.encoders.vlm_checkpoint import add_trainable_adapter

        add_trainable_adapter(self, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)

    def train(self, mode: bool = True) -> VLMEncoder:
        self.torch_module().train(mode)
        return self

    def eval(self) -> VLMEncoder:
        return self.train(False)

    # ------------------------------------------------------------------ embedding

    def embed(self, items: Sequence[Any], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised embeddings (batch, dim), float32, differentiable outside ``no_grad``."""
        items = list(items)
        check_items(items, accepts_images=True, encoder_name=self.encoder_id)
        instructions = list(instructions) if instructions is not None else [None] * len(items)
        prompts = [self._prompt(item, role, instr) for item, instr in zip(items, instructions)]
        images = [as_pil(item.image, item.id) if item.image is not None else None for item in items]
        inputs = self.adapter.prepare([p.text for p in prompts], images, self.max_length).to(self.device, self.dtype)
        for row in inputs.truncated:
            warn_truncation(self.encoder_id, items[row].id, self.max_length)
        hidden, mask = self.adapter.hidden_states(inputs)
        mask = mask.to(hidden.device)
        exclude = torch.tensor([self._excluded(p) for p in prompts], device=hidden.device)
        # pads may hold NaN (fully masked rows under causal attention with left padding): zero them
        hidden = hidden.float().masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        return pool(hidden, mask, self.pooling, exclude_lengths=exclude, latent_pooler=self.latent_pooler)

    def length_key(self, item: Any) -> float:
        return len(item.text or "") + (4000.0 if item.image is not None else 0.0)

    def _excluded(self, prompt: Prompt) -> int:
        """Leading tokens of ``prompt`` that pooling leaves out (the ``instruction_mask`` convention)."""
        if self.instruction_mask == "prefix":
            key: str | None = prompt.prefix or None
        else:
            key = release_instruction_part(prompt.text)
        if key is None:
            return 0
        if key not in self._exclusions:
            self._exclusions[key] = excluded_tokens(self.tokenizer, prompt, self.instruction_mask,
                                                    appends_eos=self.append_eos, image_token=self.adapter.image_token)
        return self._exclusions[key]

    def _render(self, text: str | None, has_image: bool, role: Role, instruction: str | None) -> Prompt:
        user = (IMAGE_PLACEHOLDER, *self.adapter.reserved_tokens)  # typed tokens never become image slots
        prompt = build_prompt(escape_tokens(text, user), has_image, role,
                              escape_tokens(instruction, user)).with_image_token(self.adapter.image_token)
        if self.append_eos and self.tokenizer.eos_token:
            return Prompt(prompt.text + self.tokenizer.eos_token, prompt.prefix, prompt.has_image)
        return prompt

    def _count_text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def _prompt(self, item: Any, role: Role, instruction: str | None) -> Prompt:
        """The item's prompt, its text cut so that the whole fits in ``max_length`` tokens."""
        has_image = item.image is not None
        text = clip_to_tokens(item.text, self._count_text, self.max_length)  # a 10 MB text costs nothing
        prompt = self._render(text, has_image, role, instruction)
        if self.adapter.truncates_tokens:
            return prompt  # cut in token space by the adapter
        excess = self._length(prompt.text) - self.max_length
        if excess <= 0 or not item.text:
            return prompt
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        keep = len(ids) - excess
        while keep > 0:  # re-tokenizing at the cut can merge differently: check again
            prompt = self._render(self.tokenizer.decode(ids[:keep]), has_image, role, instruction)
            excess = self._length(prompt.text) - self.max_length
            if excess <= 0:
                break
            keep -= excess
        if keep <= 0:
            prompt = self._render(None, has_image, role, instruction) if has_image else prompt
        warn_truncation(self.encoder_id, item.id, self.max_length)
        return prompt


register_folder_loader("vlm", VLMEncoder.from_hf)
register_folder_loader("mmembed_release", VLMEncoder.from_release)


def load_hf_backbone(path: str | Path, *, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                     dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """The base model (no LM head) and processor of a local transformers VLM directory."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    from mmembed.encoders.processors import processor_class_for

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{str(path)!r} is not a transformers model directory: it has no config.json")
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    adapter_class(config.model_type)  # refuse unsupported families before loading weights
    with quiet_transformers():  # the load report lists the unused LM head; we check keys below
        model, info = AutoModel.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype,
            attn_implementation=attn_implementation, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelError(f"{path}: the checkpoint lacks weights the model needs: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    processor_cls = processor_class_for(config.model_type) or AutoProcessor
    processor = processor_cls.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    return model, processor
