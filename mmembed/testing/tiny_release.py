"""A tiny random checkpoint in the exact file and key layout of the released nvidia/MM-Embed.

Everything the loader (:mod:`mmembed.encoders.vlm_release`) reads is reproduced at toy size:
two safetensors shards plus ``model.safetensors.index.json``; keys ``vision_tower.vision_model.*`` (the
release's names, which transformers 5 maps onto its ``vision_tower.*``),
``multi_modal_projector.*``, ``image_newline``, ``language_model.*`` (a Mistral base model whose
embedding table has exactly the BPE vocabulary, with ``<image>`` and ``<pad>`` *outside* it, as
32000/32001 are in the release) and ``latent_attention_model.*`` (NV-Embed's names: ``latents``,
``cross_attend_blocks.0.{norm,norm_context,fn.to_q,fn.to_kv,fn.to_out}``,
``cross_attend_blocks.1.{norm,fn.net.0,fn.net.2}``; head width = hidden size as in NV-Embed);
a config.json with the release's extra fields and a text_config that, like the release's, is *not*
the config the LLM was built from: its vocab_size (like LLaVA's 32064) disagrees with the weights
and its rope_theta / sliding_window are Mistral-7B-Instruct-v0.2's (1e6, none) while the LLM was
built with NV-Embed-v1's Mistral-7B-v0.1 values (1e4, 4096). That LLM config is written beside the
release as an NV-Embed-style directory (``config.json`` with ``text_config`` and
``latent_attention_config``), as a user's local copy of nvidia/NV-Embed-v1 would be.

:func:`build_tiny_release` returns the directory and the in-memory modules, so that tests can
compute a reference embedding independently of the loader.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmembed.encoders.pooling import LatentAttentionPooler
from mmembed.testing.tiny_models import TEXT_HIDDEN, VISION_HIDDEN, llava_next_tokenizer

NUM_LATENTS = 16
LATENT_HEADS = 8
IMAGE, PATCH = 28, 7


@dataclass
class TinyRelease:
    path: Path
    nvembed_config: Path  # the NV-Embed-style directory holding the LLM's real config
    model: nn.Module  # LlavaNextModel with the release's weights
    pooler: LatentAttentionPooler
    processor: object


def build_tiny_release(out_dir: str | Path, seed: int = 0, shards: int = 2) -> TinyRelease:
    """Write the checkpoint to ``out_dir`` and its NV-Embed config to ``{out_dir}-NV-Embed``."""
    from safetensors.torch import save_file
    from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextModel, LlavaNextProcessor

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    tokenizer = llava_next_tokenizer(seed)
    vocab = tokenizer.convert_tokens_to_ids("<image>")  # the LLM's table ends right before <image>
    pinpoints = [[IMAGE, 2 * IMAGE], [2 * IMAGE, IMAGE], [2 * IMAGE, 2 * IMAGE]]
    text = {"model_type": "mistral", "vocab_size": vocab, "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 2 * TEXT_HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2}
    vision = {"model_type": "clip_vision_model", "hidden_size": VISION_HIDDEN, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE, "patch_size": PATCH,
              "projection_dim": VISION_HIDDEN}
    config = LlavaNextConfig(text_config=text, vision_config=vision, image_token_index=vocab,
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=pinpoints)
    model = LlavaNextModel(config).eval()
    pooler = LatentAttentionPooler(TEXT_HIDDEN, num_latents=NUM_LATENTS, num_heads=LATENT_HEADS,
                                   head_dim=TEXT_HIDDEN).eval()
    state = {_release_key(k): v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"latent_attention_model.{k}": v.contiguous() for k, v in pooler.state_dict().items()})
    _write_shards(state, out, shards, save_file)
    _write_config(out, text, vision, vocab, pinpoints)
    nvembed = _write_nvembed_config(out.with_name(out.name + "-NV-Embed"), text)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE},
                                                 crop_size={"height": IMAGE, "width": IMAGE},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    processor.save_pretrained(out)
    return TinyRelease(out, nvembed, model, pooler, processor)


def _release_key(name: str) -> str:
    """transformers 5 names the CLIP tower's tensors ``vision_tower.*``; the release ``vision_tower.vision_model.*``."""
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + name.removeprefix("vision_tower.")
    return name


def _write_shards(state: dict[str, torch.Tensor], out: Path, shards: int, save_file) -> None:
    names = sorted(state)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2), encoding="utf-8")


def _write_config(out: Path, text: dict, vision: dict, vocab: int, pinpoints: list) -> None:
    config = {
        "_name_or_path": "nvidia/MM-Embed", "architectures": ["NVMMEmbedModel"],
        "auto_map": {"AutoModel": "modeling_nvmmembed.NVMMEmbedModel"}, "model_type": "llava_next",
        "retriever": "nvidia/NV-Embed-v1", "padding_side": "right", "add_eos_token": True,
        "global_image_patch_only": True, "ignore_index": -100, "image_token_index": vocab,
        "image_grid_pinpoints": pinpoints, "projector_hidden_act": "gelu", "tie_word_embeddings": False,
        "use_image_newline_parameter": True, "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "torch_dtype": "float32", "transformers_version": "4.43.4",
        # The release's text_config is Mistral-7B-Instruct-v0.2's (padded vocabulary, rope_theta 1e6, no
        # sliding window); its code never reads it: the LLM comes from config.retriever.
        "text_config": {**text, "vocab_size": vocab + 64, "rope_theta": 1e6, "sliding_window": None},
        "vision_config": vision,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_nvembed_config(directory: Path, text: dict) -> Path:
    """An NV-Embed-style config.json: the LLM's real config and the latent pooler's shape."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    config = {
        "model_type": "nvembed", "architectures": ["NVEmbedModel"], "padding_side": "right",
        "add_eos": True, "is_mask_instruction": True, "mask_type": "b",
        "text_config": {**text, "model_type": "bidir_mistral", "architectures": ["MistralModel"]},
        "latent_attention_config": {"model_type": "latent_attention", "num_latents_value": NUM_LATENTS,
                                    "num_cross_heads": LATENT_HEADS, "cross_dim_head": TEXT_HIDDEN,
                                    "hidden_dim": TEXT_HIDDEN, "latent_dim": TEXT_HIDDEN},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
