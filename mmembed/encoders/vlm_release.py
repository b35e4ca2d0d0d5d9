"""Read the released nvidia/MM-Embed checkpoint for our composed model, on current transformers.

The release ships remote code (``modeling_nvmmembed.py``, written for transformers 4.43) that
subclasses ``LlavaNextForConditionalGeneration``, replaces its LLM with NV-Embed's bidirectional
Mistral (``embedding_model``) and adds NV-Embed's latent-attention pooler. This module reads the
same files without that code and without pinning an old transformers, and gives
:meth:`~mmembed.encoders.vlm.VLMEncoder.from_release` the encoder's arguments
(:func:`release_encoder_arguments`); it never builds the encoder itself:

- weights: ``model.safetensors`` or shards + ``model.safetensors.index.json``, keys
  ``vision_tower.vision_model.*`` (CLIP ViT-L/14-336), ``multi_modal_projector.linear_{1,2}.*``,
  ``image_newline``, ``language_model.*`` (a Mistral *base* model: ``embed_tokens``, ``layers``,
  ``norm``; no LM head) and ``latent_attention_model.{latents, cross_attend_blocks.*}``. The first
  four are exactly the parameter names of transformers 5's ``LlavaNextModel``; the last map onto
  :class:`~mmembed.encoders.pooling.LatentAttentionPooler`. Every key must be consumed.
- config.json: a LLaVA-NeXT config plus ``retriever`` (the NV-Embed repo the LLM config came
  from), ``padding_side``, ``add_eos_token`` and ``global_image_patch_only``.
- behaviour reproduced: bidirectional attention in the LLM; image token and PAD ids are mapped
  before the embedding lookup (image -> 0, PAD -> EOS: "We use tokenizer from Llava-Next but later
  replace PAD with EOS Token"); EOS appended to every prompt (``add_eos_token``); global view only
  (the first, "resized original" patch), packed as LLaVA-NeXT packs a single view: 576 patch
  tokens followed by the ``image_newline`` vector; latent-attention pooling over a mask that hides
  the instruction; L2 normalisation.

The LLM's config: the release builds its LLM from the config of the repository its
``config.retriever`` names (nvidia/NV-Embed-v1), not from config.json's ``text_config`` (which
holds Mistral-7B-Instruct-v0.2's values: rope_theta 1e6, no sliding window). That config is not
in the MM-Embed folder, so it is resolved in this order (:func:`llm_config_source`):
``nvembed_config=PATH`` (a local copy of NV-Embed's config.json or its folder); the NV-Embed-v1
values shipped with mmembed (``nv_embed_v1.json``: Mistral-7B-v0.1's, inferred rather than read,
see docs/mmembed-release.md) when ``retriever`` names NV-Embed-v1; ``retriever`` itself when it is
a local folder; ``nvembed_config="text_config"`` only when asked for. The vocabulary size is
always taken from the ``embed_tokens`` weight (32000 rows, while LLaVA's text_config says 32064).
The LLM attends over the whole sequence: NV-Embed-v1's sliding window (4096) is recorded in its
config but never applied by the release's code, so it is not applied here either.
The latent pooler's head count comes from the NV-Embed config (8 in NV-Embed-v1; ``latent_heads=``
overrides it); its widths from the weight shapes.

The instruction mask is the release's by default (``instruction_mask="release"``: BOS + the
``Instruct: ...`` tokens + one position are hidden, ``Query: `` stays in the mean; see
:mod:`.prompts`); pass ``instruction_mask="prefix"`` for the NV-Embed convention.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mmembed.dependencies import quiet_transformers
from mmembed.encoders.devices import resolve_device, resolve_dtype
from mmembed.encoders.folders import is_kind, read_folder_config
from mmembed.encoders.pooling import LatentAttentionPooler
from mmembed.errors import ModelError

logger = logging.getLogger(__name__)

LATENT_PREFIX = "latent_attention_model."
#: ``config.retriever`` values whose LLM config ships with mmembed (``nv_embed_v1.json``).
NV_EMBED_V1 = ("nvidia/NV-Embed-v1",)
SHIPPED_NV_EMBED_V1 = Path(__file__).with_name("nv_embed_v1.json")
#: ``nvembed_config=TEXT_CONFIG`` asks for config.json's own text_config (not what the release does).
TEXT_CONFIG = "text_config"
RELEASE_FIELDS = ("retriever", "padding_side", "add_eos_token", "global_image_patch_only")
INDEX_FILE = "model.safetensors.index.json"


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> file, from the shard index or the single safetensors file."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ModelError(f"{index}: cannot read the shard index: {e}") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index}: no weight_map")
        return {name: path / file for name, file in weight_map.items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise ModelError(f"{path}: neither {INDEX_FILE} nor model.safetensors found")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 (a safetensors handle is not iterable)
    return dict.fromkeys(names, single)


def read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for key in keys:
                out[key] = f.get_tensor(key)
    return out


def tensor_shape(files: dict[str, Path], name: str) -> list[int]:
    from safetensors import safe_open

    if name not in files:
        raise ModelError(f"the checkpoint has no tensor {name!r}; is this an MM-Embed directory?")
    with safe_open(str(files[name]), framework="pt") as f:
        return list(f.get_slice(name).get_shape())


def llm_config_source(raw: dict[str, Any], nvembed_config: str | Path | None) -> Path | str:
    """Where the LLM's config comes from: an NV-Embed config file, or :data:`TEXT_CONFIG`."""
    if nvembed_config is not None:
        return TEXT_CONFIG if str(nvembed_config) == TEXT_CONFIG else Path(nvembed_config)
    retriever = str(raw.get("retriever") or "")
    if retriever in NV_EMBED_V1:
        return SHIPPED_NV_EMBED_V1
    if retriever and (Path(retriever) / "config.json").is_file():
        return Path(retriever)
    raise ModelError(f"config.json names retriever {retriever!r}, whose LLM config mmembed does not ship; pass "
                     f"nvembed_config=PATH (a local copy of its config.json), or nvembed_config={TEXT_CONFIG!r} to use "
                     "config.json's text_config (which the release does not use)")


def release_config(path: Path, files: dict[str, Path], nvembed_config: str | Path | None = None):
    """(LlavaNextConfig with the LLM config as the release built it, raw config.json, NV-Embed config)."""
    from transformers import LlavaNextConfig

    raw = read_folder_config(path)
    data = {k: v for k, v in raw.items() if k not in RELEASE_FIELDS + ("auto_map", "architectures", "_name_or_path")}
    source = llm_config_source(raw, nvembed_config)
    nvembed: dict[str, Any] = {}
    if source == TEXT_CONFIG:
        text = dict(data.get("text_config") or {})
    else:
        nvembed = _read_nvembed_config(Path(source))
        drop = ("architectures", "_name_or_path", "auto_map")
        text = {k: v for k, v in nvembed["text_config"].items() if k not in drop}
    text["model_type"] = "mistral"
    rows, width = tensor_shape(files, "language_model.embed_tokens.weight")
    if text.get("hidden_size", width) != width:
        raise ModelError(f"{path}: the LLM config from {source} has hidden_size {text['hidden_size']}, the weights "
                         f"{width}; pass nvembed_config= pointing at the config this checkpoint was built with")
    text["vocab_size"] = rows
    # NV-Embed-v1 says sliding_window 4096, but the release never applies it: its bidirectional
    # Mistral builds a padding-only mask and 4.43's eager/SDPA attention has no window of its own.
    # transformers 5 would apply the window even to bidirectional attention, so it is switched off.
    text["sliding_window"] = None
    data["text_config"] = text
    logger.info("MM-Embed: LLM config from %s (rope_theta %s, sliding_window %s)", source, text.get("rope_theta"),
                text.get("sliding_window"))
    return LlavaNextConfig(**data), raw, nvembed


def _read_nvembed_config(path: Path) -> dict[str, Any]:
    file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{file}: cannot read the NV-Embed config: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("text_config"), dict):
        raise ModelError(f"{file}: no text_config (expected NV-Embed's config.json)")
    return data


def _latent_heads(nvembed: dict[str, Any], override: int | None) -> int:
    if override is not None:
        return override
    heads = (nvembed.get("latent_attention_config") or {}).get("num_cross_heads", 8)
    if not isinstance(heads, int) or heads < 1:
        raise ModelError(f"latent_attention_config.num_cross_heads must be a positive integer, got {heads!r}")
    return heads


def build_latent_pooler(files: dict[str, Path], hidden_size: int, heads: int) -> LatentAttentionPooler:
    """NV-Embed's pooler with shapes read from the weights and its weights loaded strictly."""
    num_latents, latent_dim = tensor_shape(files, LATENT_PREFIX + "latents")
    inner = tensor_shape(files, LATENT_PREFIX + "cross_attend_blocks.0.fn.to_q.weight")[0]
    ff_hidden = tensor_shape(files, LATENT_PREFIX + "cross_attend_blocks.1.fn.net.0.weight")[0]
    if inner % heads:
        raise ModelError(f"latent attention width {inner} is not divisible by {heads} heads; set latent_heads")
    pooler = LatentAttentionPooler(hidden_size, num_latents=num_latents, latent_dim=latent_dim, num_heads=heads,
                                   head_dim=inner // heads, mlp_mult=ff_hidden // (2 * hidden_size))
    names = [n for n in files if n.startswith(LATENT_PREFIX)]
    state = {n.removeprefix(LATENT_PREFIX): t for n, t in read_tensors(files, names).items()}
    result = pooler.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"latent attention weights do not fit NV-Embed's layout: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    return pooler


def load_release_backbone(path: Path, config, files: dict[str, Path], dtype: torch.dtype,
                          attn_implementation: str = "sdpa"):
    """LlavaNextModel with the release's vision tower, projector, newline and LLM weights."""
    from transformers import LlavaNextModel

    with quiet_transformers():  # the latent weights are "unexpected" here; they are checked below
        model, info = LlavaNextModel.from_pretrained(path, config=config, local_files_only=True, dtype=dtype,
                                                     attn_implementation=attn_implementation,
                                                     output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.startswith(LATENT_PREFIX))
    mismatched = info.get("mismatched_keys") or []
    if missing or unexpected or mismatched:
        raise ModelError(f"{path}: weights do not fit the MM-Embed layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, mismatched {list(mismatched)[:5]}")
    return model


#: Encoder settings the release fixes (a saved checkpoint repeats them; they are not overrides).
RELEASE_SETTINGS = ("pooling", "bidirectional", "append_eos", "padding_side", "latent", "adapter_kwargs")


def release_encoder_arguments(path: str | Path, *, nvembed_config: str | Path | None = None,
                              latent_heads: int | None = None, device: str | torch.device | None = None,
                              dtype: str | torch.dtype | None = None,
                              attn_implementation: str = "sdpa") -> dict[str, Any]:
    """The :class:`~mmembed.encoders.vlm.VLMEncoder` arguments that reproduce the released model.

    Model, processor and latent pooler read from ``path``; pooling, bidirectional attention, EOS,
    the PAD quirk and the padding side as the release has them. See the module docstring for
    ``nvembed_config``; :meth:`~mmembed.encoders.vlm.VLMEncoder.from_release` builds the encoder.
    """
    from transformers import AutoProcessor

    path = Path(path)
    if not is_kind(path, "mmembed_release"):
        raise ModelError(f"{str(path)!r} is not an MM-Embed release directory (config.json lacks 'retriever' / "
                         "'global_image_patch_only')")
    files = weight_files(path)
    config, raw, nvembed = release_config(path, files, nvembed_config)
    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    model = load_release_backbone(path, config, files, torch_dtype, attn_implementation)
    pooler = build_latent_pooler(files, config.text_config.hidden_size, _latent_heads(nvembed, latent_heads))
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    if not raw.get("global_image_patch_only", True):
        logger.warning("%s: global_image_patch_only is false; only the global view is supported", path)
    return {"model": model, "processor": processor, "pooling": "latent_attention", "bidirectional": True,
            "append_eos": bool(raw.get("add_eos_token", True)), "padding_side": raw.get("padding_side", "right"),
            "latent_pooler": pooler, "adapter_kwargs": {"pad_as_eos": True}, "device": device, "dtype": torch_dtype,
            "source": {"format": "mmembed_release", "path": str(path.resolve()),
                       **({"nvembed_config": str(nvembed_config)} if nvembed_config is not None else {})}}
