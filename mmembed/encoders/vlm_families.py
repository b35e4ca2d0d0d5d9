"""Per-family adapters: what differs between LLaVA-NeXT, Qwen2(.5)-VL and Idefics3/SmolVLM.

An adapter knows a family's image token string, how to turn prompt texts and images into model
inputs, how to run the transformers model to get the LLM's last hidden states together with the
attention mask of that (image-expanded) sequence, and where the LLM and the vision-language
projector live (for bidirectional attention and LoRA). The encoder (:mod:`.vlm`) does
everything else the same way for every family.

Position ids are derived from the attention mask wherever the model would otherwise count padding
(LLaVA-NeXT, Idefics3, SmolVLM), so an embedding does not depend on the padding side; Qwen2-VL
computes its own (multimodal RoPE) positions from the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mmembed.errors import ConfigError, ModelError


@dataclass
class ModelInputs:
    """Tensors for one batch, ready for :meth:`FamilyAdapter.hidden_states`."""

    tensors: dict[str, torch.Tensor]
    #: Rows whose tokens the adapter cut to ``max_length`` (adapters that truncate token ids).
    truncated: tuple[int, ...] = ()

    def to(self, device: torch.device, dtype: torch.dtype) -> ModelInputs:
        moved = {}
        for key, value in self.tensors.items():
            value = value.to(device)
            moved[key] = value.to(dtype) if value.is_floating_point() else value
        return ModelInputs(moved, self.truncated)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row, whatever the padding side (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class FamilyAdapter:
    """Base class; one subclass per model family."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`prepare` cuts token ids to ``max_length`` itself (else the encoder cuts text).
    truncates_tokens: ClassVar[bool] = False
    #: Attribute names, on the base model, of the LLM and the vision-language projector.
    language_model_attr: ClassVar[str] = "language_model"
    projector_attr: ClassVar[str] = "multi_modal_projector"

    def __init__(self, model: nn.Module, processor: Any, image_size: int | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_size = image_size

    @property
    def image_token(self) -> str:
        """What replaces the prompt's image placeholder (before the processor expands it)."""
        raise NotImplementedError

    @property
    def reserved_tokens(self) -> tuple[str, ...]:
        """Token strings that user text must not contain (they would become image slots)."""
        return (self.image_token,)

    @property
    def language_model(self) -> nn.Module:
        return _get_attr(self.model, self.language_model_attr)

    @property
    def projector(self) -> nn.Module:
        return _get_attr(self.model, self.projector_attr)

    def prepare(self, texts: list[str], images: list[Image.Image | None], max_length: int | None = None
                ) -> ModelInputs:
        """Tokenize ``texts`` (padded on the tokenizer's side) and process the images.

        ``max_length`` is used by adapters with :attr:`truncates_tokens` only.
        """
        raise NotImplementedError

    def hidden_states(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, attention mask) of the LLM over the image-expanded sequence."""
        raise NotImplementedError


def _get_attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


class LlavaNextAdapter(FamilyAdapter):
    """LLaVA-NeXT with the global view only, as MM-Embed's release: no anyres tiles.

    Long prompts are cut in token space as the release's tokenizer cut them: the first
    ``max_length`` tokens with the image counted as one token, the final EOS kept; the image token
    is expanded afterwards (no re-tokenization of cut text, so the kept tokens are exactly the
    release's).

    The image is squashed to the vision tower's square input (LLaVA-NeXT's own "resized original
    image", the first of its patches), encoded, projected, and followed by the learned
    ``image_newline`` vector, exactly as LLaVA-NeXT packs a single-view image: for the 336-px
    CLIP tower that is 576 patch tokens plus one newline token. ``image_size`` other than the
    tower's size interpolates the position embeddings.
    """

    model_types = ("llava_next",)
    truncates_tokens = True

    def __init__(self, model: nn.Module, processor: Any, image_size: int | None = None,
                 append_image_newline: bool = True, pad_as_eos: bool = False):
        super().__init__(model, processor, image_size)
        config = model.config
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise ConfigError(f"unsupported vision_feature_select_strategy {config.vision_feature_select_strategy!r}")
        self.native_size = config.vision_config.image_size
        self.view_size = image_size or self.native_size
        patch = config.vision_config.patch_size
        if self.view_size % patch:
            raise ConfigError(f"image_size {self.view_size} must be a multiple of the vision patch size {patch}")
        extra = 1 if config.vision_feature_select_strategy == "full" else 0
        self.append_image_newline = append_image_newline
        self.tokens_per_image = (self.view_size // patch) ** 2 + extra + int(append_image_newline)
        self.image_token_id = config.image_token_id
        #: MM-Embed's release maps PAD to EOS before the embedding lookup.
        self.pad_as_eos = pad_as_eos

    @property
    def image_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    def prepare(self, texts: list[str], images: list[Image.Image | None], max_length: int | None = None
                ) -> ModelInputs:
        rows, truncated = [], []
        for i, ids in enumerate(self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]):
            if max_length is not None and len(ids) > max_length:
                ids = self._cut(ids, max_length)
                truncated.append(i)
            if (self.image_token_id in ids) != (images[i] is not None):
                raise ConfigError(f"item {i} of the batch: its image token was cut off by max_length={max_length}; "
                                  "raise max_length or shorten the instruction")
            rows.append(self._expand(ids))
        tensors = self._pad(rows)
        present = [im for im in images if im is not None]
        if present:
            size = self.view_size
            processed = self.processor.image_processor(
                present, size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                image_grid_pinpoints=[[size, size]], return_tensors="pt")
            tensors["pixel_values"] = processed["pixel_values"][:, 0]  # the global view
        return ModelInputs(tensors, tuple(truncated))

    def _cut(self, ids: list[int], max_length: int) -> list[int]:
        """The first ``max_length`` tokens; a final EOS stays last (the release's tokenizer truncated
        the content and then added its special tokens)."""
        eos = self.tokenizer.eos_token_id
        if eos is not None and ids[-1] == eos and max_length > 1:
            return ids[:max_length - 1] + [eos]
        return ids[:max_length]

    def _expand(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for token in ids:
            out.extend([token] * self.tokens_per_image if token == self.image_token_id else [token])
        return out

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt"))

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, tokens_per_image, hidden) features of global views."""
        config = self.model.config
        kwargs = {"interpolate_pos_encoding": True} if self.view_size != self.native_size else {}
        out = self.model.vision_tower(pixel_values, output_hidden_states=True, **kwargs)
        layer = config.vision_feature_layer
        if isinstance(layer, int):
            selected = out.hidden_states[layer]
        else:
            selected = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        features = self.model.multi_modal_projector(selected)
        if self.append_image_newline:
            newline = self.model.image_newline.to(features.dtype)
            features = torch.cat([features, newline.expand(features.shape[0], 1, -1)], dim=1)
        return features

    def hidden_states(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        ids = inputs.tensors["input_ids"]
        mask = inputs.tensors["attention_mask"]
        embed = self.language_model.get_input_embeddings()
        lookup = ids.clone()
        is_image = ids == self.image_token_id
        lookup[is_image] = 0  # the image token may lie outside the LLM's vocabulary (it does in MM-Embed)
        if self.pad_as_eos and self.tokenizer.pad_token_id is not None:
            lookup[ids == self.tokenizer.pad_token_id] = self.tokenizer.eos_token_id
        embeds = embed(lookup)
        if "pixel_values" in inputs.tensors:
            features = self.image_features(inputs.tensors["pixel_values"]).to(embeds.dtype)
            if int(is_image.sum()) != features.shape[0] * features.shape[1]:
                raise ModelError(f"{type(self).__name__}: the processor wrote {int(is_image.sum())} image tokens for "
                                 f"{features.shape[0]} images of {features.shape[1]} tokens (processor and model "
                                 "configs disagree)")
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
        out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                                  use_cache=False)
        return out.last_hidden_state, mask


class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL and Qwen2.5-VL: native dynamic resolution; ``image_size``**2 caps the pixels."""

    model_types = ("qwen2_vl", "qwen2_5_vl")
    projector_attr = "visual.merger"

    @property
    def image_token(self) -> str:
        return "".join(self.reserved_tokens)

    @property
    def reserved_tokens(self) -> tuple[str, ...]:
        tok = self.tokenizer
        start = getattr(tok, "vision_start_token", None) or "<|vision_start|>"
        end = getattr(tok, "vision_end_token", None) or "<|vision_end|>"
        return start, self.processor.image_token, end

    def prepare(self, texts: list[str], images: list[Image.Image | None], max_length: int | None = None
                ) -> ModelInputs:
        present = [im for im in images if im is not None]
        kwargs: dict[str, Any] = {}
        if self.image_size:
            ip = self.processor.image_processor
            factor = ip.patch_size * ip.merge_size
            kwargs["size"] = {"shortest_edge": min(factor * factor, self.image_size ** 2),
                              "longest_edge": self.image_size ** 2}
        out = self.processor(text=texts, images=present or None, padding=True, return_tensors="pt", **kwargs)
        keep = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
        return ModelInputs({k: out[k] for k in keep if k in out})

    def hidden_states(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**inputs.tensors, use_cache=False)
        return out.last_hidden_state, inputs.tensors["attention_mask"]


class Idefics3Adapter(FamilyAdapter):
    """Idefics3 and SmolVLM: by default one global view at the vision tower's size (no splitting).

    With ``image_size`` the processor's own scheme is used: the image is resized to that longest
    edge and split into vision-size tiles, followed by the global view.
    """

    model_types = ("idefics3", "smolvlm")
    language_model_attr = "text_model"
    projector_attr = "connector"

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    def prepare(self, texts: list[str], images: list[Image.Image | None], max_length: int | None = None
                ) -> ModelInputs:
        kwargs: dict[str, Any] = {"do_image_splitting": bool(self.image_size)}
        if self.image_size:
            kwargs["size"] = {"longest_edge": self.image_size}
        if any(im is not None for im in images):
            nested = [[im] if im is not None else [] for im in images]
            out = self.processor(text=texts, images=nested, padding=True, return_tensors="pt", **kwargs)
        else:
            out = self.processor(text=texts, padding=True, return_tensors="pt")
        keep = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
        return ModelInputs({k: out[k] for k in keep if k in out})

    def hidden_states(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        mask = inputs.tensors["attention_mask"]
        out = self.model(**inputs.tensors, position_ids=positions_from_mask(mask), use_cache=False)
        return out.last_hidden_state, mask


ADAPTERS: tuple[type[FamilyAdapter], ...] = (LlavaNextAdapter, QwenVLAdapter, Idefics3Adapter)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str) -> type[FamilyAdapter]:
    """The adapter of a transformers ``model_type``; :class:`ConfigError` listing supported ones."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ConfigError(f"unsupported VLM model type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
