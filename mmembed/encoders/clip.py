"""CLIPEncoder: CLIP or SigLIP dual towers with UniIR's score fusion (the CLIP_SF baseline).

Routing by modality: text-only items go through the text tower, image-only items through the
image tower, and image+text items are fused as UniIR's CLIP_SF does: the sum of the L2-normalised
text and image embeddings, normalised again (``normalize(normalize(t) + normalize(i))``).

Instructions: UniIR prepends the task instruction to the query text (``"{instruction} {text}"``);
so does this encoder. A query that has only an image therefore gets the instruction as its text
and is fused like an image+text item, as in UniIR. Candidates never get an instruction.

Text longer than the text tower's positions (77 for CLIP) is truncated with one warning per run.
SigLIP was trained on text padded to its full length without an attention mask, so its text is
padded to ``max_length`` and no mask is passed, as its model card prescribes.

Checkpoints are self-contained: ``backbone/`` holds a transformers copy of the (possibly
fine-tuned) towers and the processor; CLIP-sized models make copying cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmembed.data.images import as_pil
from mmembed.encoders.batching import BatchedEncoder
from mmembed.encoders.checkpoint import load_checkpoint, save_checkpoint
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.inputs import check_items, warn_truncation
from mmembed.encoders.prompts import Role, uniir_query_text
from mmembed.encoders.registry import register, register_folder_loader
from mmembed.errors import ConfigError, ModelError

BACKBONE_DIR = "backbone"
SUPPORTED = ("clip", "siglip", "siglip2")


def fuse(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """UniIR's score fusion: normalize(normalize(text) + normalize(image))."""
    return F.normalize(F.normalize(text, dim=-1) + F.normalize(image, dim=-1), dim=-1)


@register("clip")
class CLIPEncoder(BatchedEncoder):
    """Dual-tower encoder over a transformers CLIP or SigLIP model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, processor: Any, *, max_length: int | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 source: str = ""):
        self.model_type = model.config.model_type
        if self.model_type not in SUPPORTED:
            raise ConfigError(f"CLIPEncoder supports {', '.join(SUPPORTED)} models, not {self.model_type!r}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        positions = model.config.text_config.max_position_embeddings
        self.max_length = min(max_length or positions, positions)
        self.pad_to_max = self.model_type.startswith("siglip")
        self.dim = int(getattr(model.config, "projection_dim", None) or model.config.text_config.hidden_size)
        self.source = source
        self.encoder_id = f"clip:{self.model_type}:{Path(source).name or self.model_type}"

    @classmethod
    def from_hf(cls, path: str | Path, *, trust_remote_code: bool = False, **settings: Any) -> CLIPEncoder:
        """An encoder over the local transformers CLIP/SigLIP directory ``path`` (never downloads)."""
        from transformers import AutoModel, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{str(path)!r} is not a transformers model directory: it has no config.json")
        device = resolve_device(settings.get("device"))
        model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code,
                                          dtype=resolve_dtype(settings.get("dtype"), device))
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        return cls(model, processor, source=str(path.resolve()), **settings)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> CLIPEncoder:
        """Load a checkpoint written by :meth:`save_pretrained`."""
        config, _ = load_checkpoint(directory, cls.encoder_type)
        settings = {"max_length": config.get("max_length"), "dtype": config.get("dtype"), **overrides}
        encoder = cls.from_hf(Path(directory) / BACKBONE_DIR, **settings)
        encoder.encoder_id = f"clip:{encoder.model_type}:{Path(directory).resolve().name}"
        return encoder

    def save_pretrained(self, directory: str | Path) -> Path:
        """A self-contained checkpoint: settings in config.json, the towers in ``backbone/``."""
        config = {"model_type": self.model_type, "max_length": self.max_length,
                  "dtype": str(self.dtype).removeprefix("torch.")}

        def extra(staging: Path) -> None:
            self.model.save_pretrained(staging / BACKBONE_DIR)
            self.processor.save_pretrained(staging / BACKBONE_DIR)

        return save_checkpoint(directory, self.encoder_type, config, {}, extra=extra)

    # ------------------------------------------------------------------ embedding

    def embed(self, items: Sequence[Any], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised embeddings (batch, dim), float32, differentiable outside ``no_grad``."""
        items = list(items)
        check_items(items, accepts_images=True, encoder_name=self.encoder_id)
        instructions = list(instructions) if instructions is not None else [None] * len(items)
        if role == "candidate" and any(instructions):  # a programming error: see prompts.build_prompt
            raise ValueError("candidates never get an instruction")
        texts = [uniir_query_text(it.text, ins) if role == "query" else it.text for it, ins in zip(items, instructions)]
        text_rows = [i for i, t in enumerate(texts) if t and t.strip()]
        image_rows = [i for i, it in enumerate(items) if it.image is not None]
        out = torch.zeros(len(items), self.dim, device=self.device)
        if text_rows:
            ids = [items[i].id for i in text_rows]
            out[text_rows] += F.normalize(self._text([texts[i] for i in text_rows], ids), dim=-1)
        if image_rows:
            pixels = [as_pil(items[i].image, items[i].id) for i in image_rows]
            out[image_rows] += F.normalize(self._image(pixels), dim=-1)
        return F.normalize(out, dim=-1)  # fused rows: normalize(t + i); single-tower rows stay unit

    def length_key(self, item: Any) -> float:
        return len(item.text or "")

    def _text(self, texts: list[str], ids: list[str]) -> torch.Tensor:
        self._warn_if_long(texts, ids)
        padding = "max_length" if self.pad_to_max else True
        enc = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        kwargs = {"input_ids": enc["input_ids"].to(self.device)}
        if not self.pad_to_max and "attention_mask" in enc:
            kwargs["attention_mask"] = enc["attention_mask"].to(self.device)
        return _features(self.model.get_text_features(**kwargs)).float()

    def _image(self, images: list) -> torch.Tensor:
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float()

    def _warn_if_long(self, texts: list[str], ids: list[str]) -> None:
        for text, item_id in zip(texts, ids):
            if len(self.tokenizer(text, verbose=False)["input_ids"]) > self.max_length:
                warn_truncation(self.encoder_id, item_id, self.max_length)
                return


def _features(output: Any) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output with ``pooler_output``)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


register_folder_loader("clip", CLIPEncoder.from_hf)
