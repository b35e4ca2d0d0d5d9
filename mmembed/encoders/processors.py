"""Processors that work without torchvision: the no-video-processor workaround.

Without torchvision, transformers 5 picks the PIL image processors on its own, but the
Qwen2-VL, Qwen2.5-VL and SmolVLM *processors* refuse to build or load because their video
processor needs torchvision. Retrieval never embeds video, so these subclasses simply have no
video sub-processor: ``ProcessorMixin`` derives the sub-processors from the ``__init__``
signature, and these signatures leave ``video_processor`` out (and keep ``chat_template`` so that
it survives save and reload). Saved files name the original processor class, so a machine with
torchvision can still open the directory with ``AutoProcessor``.

The classes are created on first access (``from mmembed.encoders.processors import ...`` works),
so importing this module does not import transformers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_BASES = {
    "NoVideoQwen2VLProcessor": ("transformers", "Qwen2VLProcessor"),
    "NoVideoQwen2_5_VLProcessor": ("transformers", "Qwen2_5_VLProcessor"),
    "NoVideoSmolVLMProcessor": ("transformers", "SmolVLMProcessor"),
}

__all__ = list(_BASES)


@cache
def _make(name: str) -> type:
    import importlib

    module, base_name = _BASES[name]
    smolvlm = name == "NoVideoSmolVLMProcessor"
    if smolvlm:
        _require_num2words()
    base = getattr(importlib.import_module(module), base_name)

    if smolvlm:
        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None,
                     **kwargs):
            base.__init__(self, image_processor, tokenizer, None, image_seq_len=image_seq_len,
                          chat_template=chat_template, **kwargs)
    else:
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = base.to_dict(self)
        out["processor_class"] = base_name  # loadable by AutoProcessor where torchvision exists
        return out

    doc = f"{base_name} without the video sub-processor (works without torchvision)."
    return type(name, (base,), {"__init__": __init__, "to_dict": to_dict, "__doc__": doc, "__module__": __name__})


def _require_num2words() -> None:
    from mmembed.errors import MissingDependencyError

    try:
        import num2words  # noqa: F401  (SmolVLM's processor refuses to build without it)
    except ImportError:
        raise MissingDependencyError("the SmolVLM processor needs the num2words package; "
                                     "install it with: pip install num2words") from None


def __getattr__(name: str) -> type:
    if name in _BASES:
        return _make(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def processor_class_for(model_type: str) -> type | None:
    """The no-video processor class for a model type, or ``None`` when the stock one works."""
    name = {"qwen2_vl": "NoVideoQwen2VLProcessor", "qwen2_5_vl": "NoVideoQwen2_5_VLProcessor",
            "smolvlm": "NoVideoSmolVLMProcessor"}.get(model_type)
    return _make(name) if name else None
