"""What a model folder is: the one place that reads a folder's ``config.json`` to pick a loader.

Four kinds load (:func:`classify_folder`):

- ``mmembed``: a checkpoint written by an mmembed encoder's ``save_pretrained`` (its config.json
  names an ``encoder_type``);
- ``mmembed_release``: the released nvidia/MM-Embed folder (a LLaVA-NeXT config.json plus
  ``retriever`` and ``global_image_patch_only``; see :mod:`.vlm_release`);
- ``vlm``: a plain transformers vision-language model (LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
  Idefics3, SmolVLM), embedded with :class:`~mmembed.encoders.vlm.VLMEncoder`'s defaults;
- ``clip``: a transformers CLIP / SigLIP folder (:class:`~mmembed.encoders.clip.CLIPEncoder`);
- ``sentence_transformers``: a text model saved by sentence-transformers (``modules.json``;
  :mod:`.sentence_transformer`).

Anything else is refused with what was found and what would have been accepted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmembed.errors import ModelError

FolderKind = Literal["mmembed", "mmembed_release", "vlm", "clip", "sentence_transformers"]
CONFIG_FILE = "config.json"
#: The fields that only the released MM-Embed's config.json has.
RELEASE_MARKERS = ("retriever", "global_image_patch_only")
CLIP_MODEL_TYPES = ("clip", "siglip", "siglip2")


@dataclass(frozen=True)
class ModelFolder:
    """A model folder and what :func:`classify_folder` found it to be."""

    path: Path
    kind: FolderKind
    config: dict[str, Any] = field(repr=False)


def read_folder_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of ``path``; :class:`ModelError` naming what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"model directory {str(folder)!r} does not exist")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ModelError(f"{str(folder)!r} is not a model folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{file}: malformed JSON: {e}") from None
    except OSError as e:
        raise ModelError(f"{file}: cannot read: {e}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{file}: expected a JSON object")
    return config


def classify_folder(path: str | os.PathLike) -> ModelFolder:
    """Which kind of model folder ``path`` is (see the module docstring)."""
    from mmembed.encoders.vlm_families import SUPPORTED_MODEL_TYPES

    config = read_folder_config(path)
    folder = Path(path)
    if isinstance(config.get("encoder_type"), str):
        return ModelFolder(folder, "mmembed", config)
    model_type = config.get("model_type")
    if model_type == "llava_next" and all(k in config for k in RELEASE_MARKERS):
        return ModelFolder(folder, "mmembed_release", config)
    if model_type in SUPPORTED_MODEL_TYPES:
        return ModelFolder(folder, "vlm", config)
    if (folder / "modules.json").is_file():  # sentence-transformers' own layout wins over its model_type
        return ModelFolder(folder, "sentence_transformers", config)
    if model_type in CLIP_MODEL_TYPES:
        return ModelFolder(folder, "clip", config)
    what = f"model_type {model_type!r}" if model_type else "neither 'encoder_type' nor 'model_type'"
    raise ModelError(f"{folder / CONFIG_FILE}: {what}; mmembed loads its own checkpoints (encoder_type), the "
                     f"released MM-Embed, transformers VLMs ({', '.join(SUPPORTED_MODEL_TYPES)}) and "
                     f"{'/'.join(CLIP_MODEL_TYPES)} and sentence-transformers folders")


def is_kind(path: str | os.PathLike, kind: FolderKind) -> bool:
    """Whether ``path`` is a model folder of ``kind`` (never raises)."""
    try:
        return classify_folder(path).kind == kind
    except ModelError:
        return False
