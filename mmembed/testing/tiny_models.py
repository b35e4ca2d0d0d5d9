"""Tiny randomly initialised models of every supported family, built offline in well under a second.

No registry ships VLM, CLIP or SigLIP weights, so the code paths for real checkpoints are tested
on these: the same transformers classes, configs, processors and tokenizer files as the real
models, only with a few layers of width 32-64 and a ~1000-token byte-level BPE vocabulary
trained in-process. Each family's directory loads with the ordinary ``from_pretrained`` calls
(model, tokenizer, processor) exactly as a real checkpoint directory would.

The tokenizers have the family's special tokens first (with the real token strings), record
processor-specific token names (``image_token`` ...) as init kwargs so that they are saved, carry
a chat template, and hold "True", "False", "Yes" and "No" as single tokens (the reranker scores
those).

``build_tiny(family, out_dir)`` writes one family; results are cached per process so that a test
session builds each family once.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import torch

from mmembed.dependencies import quiet_transformers

logger = logging.getLogger(__name__)

VLM_FAMILIES = ("llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm")
DUAL_FAMILIES = ("clip", "siglip")
FAMILIES = VLM_FAMILIES + DUAL_FAMILIES

#: Words the reranker reads as answers; each must be a single token (with and without a space).
ANSWER_WORDS = ("True", "False", "Yes", "No")

TEXT_HIDDEN = 64
VISION_HIDDEN = 32

_CACHE: dict[tuple[str, int], Path] = {}

_WORDS = (
    "a", "the", "dog", "cat", "car", "red", "blue", "green", "small", "large", "photo", "image", "picture", "of",
    "on", "in", "with", "and", "man", "woman", "child", "ball", "tree", "house", "street", "city", "river",
    "boat", "plane", "bird", "flower", "food", "table", "shirt", "hat", "running", "sitting", "standing",
    "playing", "two", "three", "near", "under", "over", "retrieve", "find", "query", "instruct", "caption",
    "text", "document", "passage", "question", "answer", "match", "does", "this", "that", "is", "are",
    "wikipedia", "news", "recipe", "emoji", "face", "smiling", "grinning", "heart", "star", "animal", "person",
    "sport", "water", "sky", "night", "day"
)


# ----------------------------------------------------------------------------- tokenizers


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(400):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))))
    answers = " ".join(ANSWER_WORDS)
    lines += ([answers, " " + answers, "Instruct: Query: Answer: True or False? Yes or No?"]
              + list(ANSWER_WORDS)) * 200
    return lines


def build_tiny_tokenizer(specials: list[str], *, vocab_size: int = 1000, bos: str | None = None,
                         eos: str | None = None, pad: str | None = None, unk: str | None = None,
                         add_bos: bool = False, add_eos: bool = False, trailing_specials: tuple[str, ...] = (),
                         chat_template: str | None = None, seed: int = 0, **token_kwargs: str):
    """A byte-level BPE tokenizer with ``specials`` at ids 0..n-1, wrapped for transformers.

    ``trailing_specials`` are added after the learned vocabulary (ids >= vocab size), the way
    LLaVA-NeXT appends ``<image>`` and ``<pad>`` to Mistral's 32000 tokens. ``token_kwargs``
    (``image_token="<image>"`` ...) are recorded as tokenizer attributes and saved with it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    for word in ANSWER_WORDS:  # make sure each answer word is one token, with or without a leading space
        for form in (word, "Ġ" + word):
            if tok.token_to_id(form) is None:  # the fixed corpus guarantees it: a broken corpus is a bug
                raise RuntimeError(f"tiny tokenizer did not learn {form!r} as one token")
    if trailing_specials:
        tok.add_special_tokens(list(trailing_specials))
    _set_post_processor(tok, processors, bos if add_bos else None, eos if add_eos else None)
    kwargs = {k: v for k, v in {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}.items() if v}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs, **token_kwargs)
    if chat_template:
        wrapped.chat_template = chat_template
    return wrapped


def _set_post_processor(tok, processors, bos: str | None, eos: str | None) -> None:
    if not bos and not eos:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return
    single = " ".join(([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else []))
    pair = single + " " + " ".join(([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else []))
    special = [(t, tok.token_to_id(t)) for t in (bos, eos) if t]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _template(image_token: str, turn_start: str, turn_end: str) -> str:
    """A minimal chat template rendering text parts and images (as the family's image token)."""
    return (
        "{% for message in messages %}" + turn_start + "{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_token + "\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        + turn_end + "\n{% endfor %}{% if add_generation_prompt %}" + turn_start + "assistant\n{% endif %}"
    )


# ----------------------------------------------------------------------------- families


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` checkpoint (model + tokenizer + processor) into ``out_dir``.

    Cached per process on ``(family, seed)``: a second call copies nothing and returns the first
    directory when it still exists.
    """
    if family not in FAMILIES:  # a test's own mistake: mmembed.testing serves test code only
        raise ValueError(f"unknown tiny family {family!r}; expected one of {', '.join(FAMILIES)}")
    cached = _CACHE.get((family, seed))
    if cached is not None and (cached / "config.json").is_file():
        return cached
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    builder = {"llava_next": _llava_next, "qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl,
               "idefics3": _idefics3, "smolvlm": _smolvlm, "clip": _clip, "siglip": _siglip}[family]
    model, processor = builder(seed)
    model.eval()
    with quiet_transformers():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    _CACHE[(family, seed)] = out
    logger.debug("built tiny %s model in %s", family, out)
    return out




def _text_config(vocab_size: int, **extra) -> dict:
    return {"vocab_size": vocab_size, "hidden_size": TEXT_HIDDEN, "intermediate_size": 2 * TEXT_HIDDEN,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-6, **extra}


def llava_next_tokenizer(seed: int = 0):
    """Mistral-like layout: <unk>=0, <s>=1, </s>=2, BPE, then <image> and <pad> after the vocabulary."""
    return build_tiny_tokenizer(["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                                add_bos=True, trailing_specials=("<image>", "<pad>"), seed=seed,
                                chat_template=_template("<image>", "[INST] ", " [/INST]"), image_token="<image>")


def _llava_next(seed: int):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = llava_next_tokenizer(seed)
    image, patch = 28, 7
    config = LlavaNextConfig(
        text_config={"model_type": "mistral", **_text_config(len(tokenizer), sliding_window=None),
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"model_type": "clip_vision_model", "hidden_size": VISION_HIDDEN, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image, "patch_size": patch,
                       "projection_dim": VISION_HIDDEN},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=[[image, 2 * image], [2 * image, image], [2 * image, 2 * image]],
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image}, crop_size={"height": image, "width": image},
        image_grid_pinpoints=config.image_grid_pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=tokenizer.chat_template)
    return LlavaNextForConditionalGeneration(config), processor


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]


def qwen_tokenizer(seed: int = 0):
    return build_tiny_tokenizer(
        _QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", seed=seed,
        chat_template=_template("<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>", "<|im_end|>"),
        image_token="<|image_pad|>", video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>")


def _qwen_ids(tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return ids


def _qwen_text(tokenizer) -> dict:
    # head_dim 16 -> mrope sections sum to 8 (temporal, height, width)
    return {**_text_config(len(tokenizer)), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    # patch 4, merge 2: a 32x32 image is an 8x8 patch grid -> 16 image tokens
    return Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})


def _qwen2_vl(seed: int):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from mmembed.encoders.processors import NoVideoQwen2VLProcessor

    tokenizer = qwen_tokenizer(seed)
    config = Qwen2VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config={"depth": 2, "embed_dim": VISION_HIDDEN, "hidden_size": TEXT_HIDDEN, "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
        **_qwen_ids(tokenizer))
    processor = NoVideoQwen2VLProcessor(image_processor=_qwen_image_processor(), tokenizer=tokenizer,
                                        chat_template=tokenizer.chat_template)
    return Qwen2VLForConditionalGeneration(config), processor


def _qwen2_5_vl(seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from mmembed.encoders.processors import NoVideoQwen2_5_VLProcessor

    tokenizer = qwen_tokenizer(seed)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer),
        vision_config={"depth": 2, "hidden_size": VISION_HIDDEN, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": TEXT_HIDDEN, "patch_size": 4, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 16, "fullatt_block_indexes": [1]},
        **_qwen_ids(tokenizer))
    processor = NoVideoQwen2_5_VLProcessor(image_processor=_qwen_image_processor(), tokenizer=tokenizer,
                                           chat_template=tokenizer.chat_template)
    return Qwen2_5_VLForConditionalGeneration(config), processor


_IDEFICS_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                     "<end_of_utterance>", "<global-img>", "<pad>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def idefics_tokenizer(seed: int = 0, add_bos: bool = True):
    return build_tiny_tokenizer(
        _IDEFICS_SPECIALS, bos="<|im_start|>", eos="<end_of_utterance>", pad="<pad>", add_bos=add_bos, seed=seed,
        chat_template=_template("<image>", "<|im_start|>", "<end_of_utterance>"), image_token="<image>",
        fake_image_token="<fake_token_around_image>", end_of_utterance_token="<end_of_utterance>",
        global_image_token="<global-img>")


def _idefics_configs(tokenizer, vision_type: str) -> dict:
    # 32x32 image, patch 8 -> 16 patches; pixel shuffle with scale 2 -> 4 image tokens
    return {"text_config": {"model_type": "llama", **_text_config(len(tokenizer)),
                            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                            "pad_token_id": tokenizer.pad_token_id},
            "vision_config": {"model_type": vision_type, "hidden_size": VISION_HIDDEN, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            "scale_factor": 2, "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
            "pad_token_id": tokenizer.pad_token_id}


def _idefics_image_kwargs() -> dict:
    return {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 32}, "do_image_splitting": False}


def _idefics3(seed: int):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = idefics_tokenizer(seed, add_bos=True)
    config = Idefics3Config(**_idefics_configs(tokenizer, "idefics3_vision"))
    processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**_idefics_image_kwargs()),
                                  tokenizer=tokenizer, image_seq_len=4, chat_template=tokenizer.chat_template)
    return Idefics3ForConditionalGeneration(config), processor


def _smolvlm(seed: int):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    from mmembed.encoders.processors import NoVideoSmolVLMProcessor

    tokenizer = idefics_tokenizer(seed, add_bos=False)
    config = SmolVLMConfig(**_idefics_configs(tokenizer, "smolvlm_vision"))
    processor = NoVideoSmolVLMProcessor(image_processor=SmolVLMImageProcessorPil(**_idefics_image_kwargs()),
                                        tokenizer=tokenizer, image_seq_len=4, chat_template=tokenizer.chat_template)
    return SmolVLMForConditionalGeneration(config), processor


def _clip(seed: int):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = build_tiny_tokenizer(["<|startoftext|>", "<|endoftext|>"], bos="<|startoftext|>",
                                     eos="<|endoftext|>", pad="<|endoftext|>", add_bos=True, add_eos=True, seed=seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": 2 * TEXT_HIDDEN,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": VISION_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=48)
    tokenizer.model_max_length = 64
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _siglip(seed: int):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    tokenizer = build_tiny_tokenizer(["<pad>", "</s>", "<unk>"], eos="</s>", pad="<pad>", unk="<unk>",
                                     add_eos=True, seed=seed)
    tokenizer.model_max_length = 16
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": 2 * TEXT_HIDDEN,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": TEXT_HIDDEN, "intermediate_size": 2 * TEXT_HIDDEN, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8})
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return SiglipModel(config), SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
