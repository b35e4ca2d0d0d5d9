"""VLMReranker: zero-shot reranking by asking a generative vision-language model True or False.

MM-Embed's reranking recipe (section 5 of the method notes): show the model the query and one
candidate, images included, with a task-specific question ("Does the above image match the query
caption? True or False"), and score the candidate by P("True") — the softmax over the "True" and
"False" logits at the answer position (the prompt's last token, after the chat template's
generation prompt). Supported families: LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM,
loaded from a local directory only (``local_files_only``; remote code only when asked).

Unlike the MM-Embed *encoder* (global view only), the reranker feeds images the way the model was
trained to see them: each family's stock processor and chat template (LLaVA-NeXT anyres tiles,
Qwen's dynamic resolution, Idefics3's splitting as configured in the processor). A pair's prompt
holds up to two images (query's, then candidate's); ``processor_kwargs`` passes options such as a
pixel cap to the processor.

Batching: pairs are batched (padded on ``padding_side``, left by default). The answer position is
each row's last real token, found from the attention mask, so both padding sides read the same
logit. Position ids are derived from the mask, as ``generate`` does, for the families whose forward
would otherwise count left padding (Qwen2-VL computes its multimodal positions from the mask
itself); rotary embeddings are relative, so this keeps positions identical to the unpadded prompt
rather than changing scores. A pair's score does not depend on its batch mates (tested).

No shared-prefix (KV cache) reuse here, deliberately: (1) Qwen2(.5)-VL derives the multimodal
RoPE positions of a cached continuation from the prefill's ``rope_deltas``, which assumes a
text-only continuation — a candidate image after a cached query prefix would get wrong positions;
(2) the other families would need their image features spliced into a continuation by hand (their
forward computes image features only for the current call's ``pixel_values``), which couples the
reranker to per-family internals of each transformers release. The LLM reranker (text only)
does reuse prefixes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmembed.data.images import as_pil
from mmembed.dependencies import quiet_transformers
from mmembed.encoders.base import Item
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.inputs import check_items
from mmembed.encoders.vlm_families import adapter_class, positions_from_mask
from mmembed.errors import ConfigError, ModelError
from mmembed.progress import progress
from mmembed.rerank.base import BaseReranker, TextTruncator, aligned_pairs, batches
from mmembed.rerank.templates import DEFAULT_ANSWER_WORDS, AnswerTokens, pair_content, question_for, resolve_templates

logger = logging.getLogger(__name__)

#: Families whose processor wants images nested per prompt (the others take one flat list).
_NESTED_IMAGES = ("idefics3", "smolvlm")
#: Families that compute their own (multimodal RoPE) positions from the attention mask.
_OWN_POSITIONS = ("qwen2_vl", "qwen2_5_vl")
#: Rough per-image cost, in characters of text, for grouping pairs of similar size into a batch.
_IMAGE_COST = 4000.0


class VLMReranker(BaseReranker):
    """A Hugging Face generative VLM as a zero-shot True/False reranker (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, processor: Any, *, templates: dict | None = None,
                 answer_words: Sequence[str] = DEFAULT_ANSWER_WORDS, use_instruction: bool = True,
                 max_text_tokens: int = 256, padding_side: str = "left",
                 processor_kwargs: dict[str, Any] | None = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, name: str | None = None, **base: Any):
        super().__init__(**base)
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model_type = model.config.model_type
        adapter_class(self.model_type)  # refuses unsupported families, listing the supported ones
        self.device = resolve_device(device)
        # None keeps the dtype the model was loaded in (from_pretrained resolves "auto" itself)
        self.dtype = next(model.parameters()).dtype if dtype is None else resolve_dtype(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.templates, self.answer_words = resolve_templates(templates), tuple(answer_words)
        self.answers = AnswerTokens.from_tokenizer(self.tokenizer, self.answer_words)
        self.use_instruction, self.padding_side = use_instruction, padding_side
        self.processor_kwargs = dict(processor_kwargs or {})
        self.truncator = TextTruncator(self.tokenizer, max_text_tokens)
        self.name = name or Path(str(getattr(model.config, "_name_or_path", "") or self.model_type)).name
        self.reranker_id = f"vlm:{self.model_type}:{self.name}:p_true"
        self._image_token: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, trust_remote_code: bool = False, attn_implementation: str = "sdpa",
                        dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
                        **settings: Any) -> VLMReranker:
        """A reranker over the local transformers VLM directory ``path`` (never downloads)."""
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from mmembed.encoders.processors import processor_class_for

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelError(f"{str(path)!r} is not a transformers model directory: it has no config.json")
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        adapter_class(config.model_type)  # refuse unsupported families before loading weights
        torch_dtype = resolve_dtype(dtype, resolve_device(device))
        with quiet_transformers():  # no per-tensor load report
            model = AutoModelForImageTextToText.from_pretrained(
                path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch_dtype,
                attn_implementation=attn_implementation)
        processor_cls = processor_class_for(config.model_type) or AutoProcessor
        processor = processor_cls.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        return cls(model, processor, device=device, dtype=torch_dtype, name=path.resolve().name, **settings)

    # ------------------------------------------------------------------ prompts

    def prompt(self, query: Item, candidate: Item, instruction: str | None = None) -> str:
        """The full prompt text of one pair (image placeholders not yet expanded)."""
        question = question_for(query, candidate, self.templates, self.answer_words)
        parts = pair_content(query, candidate, question, instruction if self.use_instruction else None,
                             query_text=self.truncator(query.text, query.id),
                             candidate_text=self.truncator(candidate.text, candidate.id))
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        if template:
            # rendered through the tokenizer: some processors' own apply_chat_template needs a video processor
            return self.tokenizer.apply_chat_template([{"role": "user", "content": parts}], chat_template=template,
                                                      tokenize=False, add_generation_prompt=True)
        # No chat template: a plain prompt with the family's image token, answer after "Answer:".
        return "".join(self.image_token if p["type"] == "image" else p["text"] for p in parts) + "\nAnswer:"

    @property
    def image_token(self) -> str:
        if self._image_token is None:
            self._image_token = adapter_class(self.model_type)(self.model, self.processor).image_token
        return self._image_token

    def prepare(self, prompts: list[str], images: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        """Processor outputs for a batch of prompts, each with its list of images (0-2)."""
        self.tokenizer.padding_side = self.padding_side
        kwargs = {"padding": True, "return_tensors": "pt", **self.processor_kwargs}
        if not any(images):
            out = self.processor(text=prompts, **kwargs)
        elif self.model_type in _NESTED_IMAGES:
            out = self.processor(text=prompts, images=images, **kwargs)
        else:
            out = self.processor(text=prompts, images=[im for row in images for im in row], **kwargs)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    # ------------------------------------------------------------------ scoring

    def score_pairs(self, queries: Sequence[Item], candidates: Sequence[Item],
                    instructions: Sequence[str | None] | None = None, *, show_progress: bool = False) -> np.ndarray:
        """P("True") of each pair ``(queries[i], candidates[i])``."""
        queries, candidates, instructions = aligned_pairs(queries, candidates, instructions)
        check_items([*queries, *candidates], encoder_name=self.reranker_id)
        order = sorted(range(len(queries)), key=lambda i: -_cost(queries[i], candidates[i]))
        out = np.zeros(len(queries), dtype=np.float64)
        with progress(len(order), "reranking (VLM)", "pair", show=show_progress) as bar, torch.inference_mode():
            for chunk in batches(order, self.batch_size):
                prompts = [self.prompt(queries[i], candidates[i], instructions[i]) for i in chunk]
                images = [_images(queries[i], candidates[i]) for i in chunk]
                out[chunk] = self.p_true(self.prepare(prompts, images)).cpu().numpy()
                bar.update(len(chunk))
        return out

    def p_true(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """P("True") at each row's last real token of a prepared batch."""
        moved = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                 for k, v in tensors.items()}
        mask = moved["attention_mask"]
        last = mask.shape[1] - 1 - mask.flip(-1).long().argmax(-1)  # last real token, either padding side
        kwargs: dict[str, Any] = {"logits_to_keep": last.unsqueeze(1), "use_cache": False}
        if self.model_type not in _OWN_POSITIONS:
            kwargs["position_ids"] = positions_from_mask(mask)
        logits = self.model(**moved, **kwargs).logits[:, 0]
        return self.answers.p_true(logits)


def _images(query: Item, candidate: Item) -> list[Image.Image]:
    return [as_pil(item.image, item.id) for item in (query, candidate) if item.image is not None]


def _cost(query: Item, candidate: Item) -> float:
    return sum(len(item.text or "") + (_IMAGE_COST if item.image is not None else 0.0) for item in (query, candidate))
