"""LoRA and checkpoints of :class:`~mmembed.encoders.vlm.VLMEncoder`.

A checkpoint directory holds:

- ``config.json``: ``encoder_type: "vlm"``, the encoder settings, and where the backbone is:
  ``backbone: {"format": "hf" | "mmembed_release", "path": ..., "fingerprint": ...}``;
- ``model.safetensors``: the latent-attention pooler (``pooler.*``) and every backbone tensor that
  was trainable when saved (``backbone.*``, e.g. the vision-language projector) — the backbone is
  frozen on load, so these are exactly the tensors training may have changed outside LoRA;
- ``adapter/``: the peft LoRA adapter, when the encoder has one; a run continued from a LoRA
  checkpoint adds a fresh adapter on top of the frozen earlier ones, saved by peft in
  ``adapter/<name>/`` (``stage1``, ``stage2`` ...) and all active on loading;
- ``backbone/``: with ``copy_backbone=True`` only, a full transformers copy of the backbone
  (LoRA not merged) and its processor.

By default the backbone is *referenced* (absolute path plus a fingerprint of its config.json)
rather than copied: a 7B backbone is ~15 GB and training saves checkpoints often, while the
tensors that training changes are small. The fingerprint makes a moved or replaced base fail
loudly instead of embedding with the wrong weights; pass ``backbone=NEW_PATH`` to
``from_pretrained`` after moving it, or save with ``copy_backbone=True`` for a self-contained
directory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmembed.dependencies import require_module
from mmembed.encoders.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from mmembed.errors import ConfigError, ModelError

ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lora_config(encoder, r: int, alpha: int, dropout: float, target_modules: Sequence[str] | None):
    peft = require_module("peft", extra="train", what="peft (LoRA)")
    names = "|".join(re.escape(n) for n in (target_modules or LORA_TARGETS))
    lm = re.escape(encoder.adapter.language_model_attr)
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=rf"{lm}\..*\.({names})")


def enable_lora(encoder, *, r: int = 8, alpha: int = 64, dropout: float = 0.0,
                target_modules: Sequence[str] | None = None, train_projector: bool = True,
                train_pooler: bool = True) -> None:
    """Inject LoRA into the encoder's LLM (in place) and make LoRA, projector and pooler trainable."""
    peft = require_module("peft", extra="train", what="peft (LoRA)")
    if encoder.peft_model is not None:
        raise ModelError("this encoder already has a LoRA adapter")
    config = _lora_config(encoder, r, alpha, dropout, target_modules)
    try:
        encoder.peft_model = peft.get_peft_model(encoder.model, config)  # injects into encoder.model in place
    except ValueError as e:  # peft: no module matches the target names
        raise ConfigError(f"LoRA target_modules {list(target_modules or LORA_TARGETS)}: {e}") from None
    if train_projector:
        encoder.adapter.projector.requires_grad_(True)
    if train_pooler and encoder.latent_pooler is not None:
        encoder.latent_pooler.requires_grad_(True)


def add_trainable_adapter(encoder, *, r: int, alpha: int, dropout: float,
                          target_modules: Sequence[str] | None) -> None:
    """A fresh LoRA adapter with these settings, the only trainable LLM weights.

    An adapter loaded with the encoder (a run continued from a LoRA checkpoint) stays active and
    frozen: the new one learns on top of it, as the towers models' new adapter learns on top of
    the loaded update merged into BERT. Both are saved; nothing else changes trainability.
    """
    if encoder.peft_model is None:
        enable_lora(encoder, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                    train_projector=False, train_pooler=False)
        name = "default"
    else:
        earlier = list(encoder.peft_model.peft_config)
        name = f"stage{len(earlier)}"
        try:
            encoder.peft_model.add_adapter(name, _lora_config(encoder, r, alpha, dropout, target_modules))
        except ValueError as e:
            raise ConfigError(f"LoRA target_modules {list(target_modules or LORA_TARGETS)}: {e}") from None
        encoder.peft_model.base_model.set_adapter([*earlier, name])
    for param_name, p in encoder.adapter.language_model.named_parameters():
        p.requires_grad_(_is_lora(param_name) and f".{name}." in param_name)


def load_lora(encoder, adapter_dir: Path) -> None:
    """The saved adapter(s): ``adapter_dir`` itself and any adapter peft saved in a sub-directory, all active."""
    peft = require_module("peft", extra="train", what="peft (LoRA)")
    encoder.peft_model = peft.PeftModel.from_pretrained(encoder.model, str(adapter_dir), is_trainable=False)
    more = sorted(p.name for p in adapter_dir.iterdir() if (p / "adapter_config.json").is_file())
    for name in more:
        encoder.peft_model.load_adapter(str(adapter_dir / name), adapter_name=name, is_trainable=False)
    if more:
        encoder.peft_model.base_model.set_adapter(["default", *more], inference_mode=True)
    encoder.model.eval()


def _is_lora(name: str) -> bool:
    return "lora_" in name or "lora_magnitude" in name


def clean_backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own tensors under their transformers names (LoRA weights left out)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if not _is_lora(k)}


def _trained_backbone_tensors(encoder) -> dict[str, torch.Tensor]:
    return {name.replace(".base_layer.", "."): p.detach() for name, p in encoder.model.named_parameters()
            if p.requires_grad and not _is_lora(name)}


def fingerprint(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a backbone's config.json: cheap, and changes with the model."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ModelError(f"backbone {str(path)!r} has no config.json")
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16]


def save_vlm_checkpoint(encoder, directory: str | Path, *, copy_backbone: bool = False) -> Path:
    """Write ``encoder`` to ``directory`` (atomically; see the module docstring for the layout)."""
    tensors = {}
    if encoder.latent_pooler is not None:
        tensors.update({f"pooler.{k}": v for k, v in encoder.latent_pooler.state_dict().items()})
    source = dict(encoder.source)
    if copy_backbone:
        backbone = {"format": "hf", "path": BACKBONE_DIR}
    else:
        tensors.update({f"backbone.{k}": v for k, v in _trained_backbone_tensors(encoder).items()})
        backbone = {"format": source["format"], "path": source["path"], "fingerprint": fingerprint(source["path"])}
        if "nvembed_config" in source:  # a release loaded with an explicit LLM config reloads with it
            backbone["nvembed_config"] = source["nvembed_config"]
    config = {**encoder.settings(), "backbone": backbone, "dtype": str(encoder.dtype).removeprefix("torch.")}

    def extra(staging: Path) -> None:
        if encoder.peft_model is not None:
            encoder.peft_model.save_pretrained(str(staging / ADAPTER_DIR))
        if copy_backbone:
            _write_backbone_copy(encoder, staging / BACKBONE_DIR)

    return save_checkpoint(directory, encoder.encoder_type, config, tensors, extra=extra)


def _write_backbone_copy(encoder, target: Path) -> None:
    from safetensors.torch import save_file

    target.mkdir()
    encoder.model.config.save_pretrained(target)
    state = {k: v.detach().cpu().contiguous() for k, v in clean_backbone_state(encoder.model).items()}
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    encoder.processor.save_pretrained(target)


def load_vlm_checkpoint(cls, directory: str | Path, *, backbone: str | Path | None = None,
                        trust_remote_code: bool = False, **overrides: Any):
    """Rebuild the encoder saved in ``directory``; ``overrides`` replace saved settings (device ...)."""
    directory = Path(directory)
    config, tensors = load_checkpoint(directory, cls.encoder_type)
    where = config.get("backbone") or {}
    fmt = where.get("format", "hf")
    if backbone is not None:
        path = Path(backbone)
    elif where.get("path") == BACKBONE_DIR:
        path = directory / BACKBONE_DIR
    else:
        path = Path(str(where.get("path", "")))
        expected = where.get("fingerprint")
        if expected and path.is_dir() and fingerprint(path) != expected:
            raise ModelError(f"{directory}: the backbone at {str(path)!r} is not the one this checkpoint was "
                             "trained on (its config.json changed); pass backbone=... to load it anyway")
    if not path.is_dir():
        raise ModelError(f"{directory}: backbone directory {str(path)!r} does not exist; pass backbone=NEW_PATH "
                         "if it was moved")
    settings = {k: config[k] for k in ("pooling", "bidirectional", "max_length", "image_size", "append_eos",
                                       "padding_side", "latent", "adapter_kwargs", "instruction_mask") if k in config}
    settings.setdefault("dtype", config.get("dtype"))
    settings.update(overrides)
    if fmt == "mmembed_release":
        if "nvembed_config" in where:
            settings.setdefault("nvembed_config", where["nvembed_config"])
        encoder = cls.from_release(path, **settings)
    else:
        encoder = cls.from_hf(path, trust_remote_code=trust_remote_code, **settings)
    if (directory / ADAPTER_DIR).is_dir():
        load_lora(encoder, directory / ADAPTER_DIR)
    _apply_tensors(encoder, tensors, directory)
    encoder.encoder_id = encoder._make_id(directory.resolve().name)
    return encoder


def _apply_tensors(encoder, tensors: dict[str, torch.Tensor], directory: Path) -> None:
    pooler = {k.removeprefix("pooler."): v for k, v in tensors.items() if k.startswith("pooler.")}
    backbone = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    unknown = [k for k in tensors if not k.startswith(("pooler.", "backbone."))]
    if unknown:
        raise ModelError(f"{directory}: unexpected tensors {unknown[:5]}")
    if encoder.latent_pooler is not None:
        load_state_strict(encoder.latent_pooler, pooler, f"{directory} (latent-attention pooler)")
    elif pooler:
        raise ModelError(f"{directory}: holds pooler weights but pooling is {encoder.pooling!r}")
    if backbone:
        params = dict(encoder.model.named_parameters())
        names = {k.replace(".base_layer.", "."): k for k in params}
        missing = [k for k in backbone if k not in names]
        if missing:
            raise ModelError(f"{directory}: backbone tensors that the model does not have: {missing[:5]}")
        with torch.no_grad():
            for key, value in backbone.items():
                target = params[names[key]]
                if target.shape != value.shape:
                    raise ModelError(f"{directory}: {key} has shape {tuple(value.shape)}, "
                                     f"the model {tuple(target.shape)}")
                target.copy_(value.to(target.dtype))
