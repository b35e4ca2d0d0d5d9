"""The one module that loads encoders: encoder types, named models, folder loaders, :func:`load_encoder`.

Stable API:

- ``@register("type-name")`` on an encoder class records it under that type and sets
  ``cls.encoder_type``. The class must provide ``from_pretrained(directory, **overrides)``; it
  loads the folders :func:`~mmembed.encoders.folders.classify_folder` calls ``mmembed`` whose
  config.json names that type.
- ``register_folder_loader(kind, loader)`` records what loads the other kinds of folder the
  classifier knows (``loader(path, **overrides) -> Encoder``): the released nvidia/MM-Embed folder
  and plain transformers VLMs (:class:`~mmembed.encoders.vlm.VLMEncoder`), CLIP/SigLIP folders
  (:class:`~mmembed.encoders.clip.CLIPEncoder`) and sentence-transformers folders.
- ``register_named_model("name", factory)`` records a model that is built rather than loaded
  (``factory(**overrides) -> Encoder``), e.g. ``"cpu-default"``: the untrained CPU default model
  assembled from the pretrained parts shipped in registry packages.
- ``load_encoder(path_or_name, **overrides)``: a named model if the argument is one of those
  names, otherwise a folder: the classifier decides its kind, the loader registered for it loads
  it. Named models take precedence over a directory of the same name; write ``./cpu-default`` to
  mean the directory.
- ``registered_types()`` / ``named_models()`` / ``encoder_class(type)``.

Encoder modules register themselves when imported; the built-in ones are imported (by name, so
that this module imports none of them) on first use here, so registration never depends on what
the caller happened to import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any, TypeVar

from mmembed.encoders.base import Encoder
from mmembed.encoders.folders import FolderKind, classify_folder
from mmembed.errors import ModelError

T = TypeVar("T", bound=type)

_TYPES: dict[str, type] = {}
_NAMED: dict[str, Callable[..., Encoder]] = {}
_FOLDER_LOADERS: dict[FolderKind, Callable[..., Encoder]] = {}

#: Modules that register built-in encoders. Missing ones are skipped; their import must not need
#: optional dependencies (those are imported when a model is built).
_BUILTIN_MODULES = (
    "mmembed.encoders.towers",
    "mmembed.encoders.towers_fusion",
    "mmembed.encoders.vlm",
    "mmembed.encoders.clip",
    "mmembed.encoders.sentence_transformer",
    "mmembed.assets",  # the trained checkpoints shipped with the package (named models)
)
_builtins_loaded = False


def register(encoder_type: str) -> Callable[[T], T]:
    """Class decorator recording ``cls`` as the reader of checkpoints of ``encoder_type``."""

    def decorate(cls: T) -> T:
        existing = _TYPES.get(encoder_type)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            # a programming error: two encoder classes claim one type (no user input reaches here)
            raise ValueError(f"encoder type {encoder_type!r} is already registered by {existing.__qualname__}")
        cls.encoder_type = encoder_type
        _TYPES[encoder_type] = cls
        return cls

    return decorate


def register_named_model(name: str, factory: Callable[..., Encoder]) -> None:
    """Record a model that ``load_encoder(name, **overrides)`` builds by calling ``factory``."""
    _NAMED[name] = factory


def register_folder_loader(kind: FolderKind, loader: Callable[..., Encoder]) -> None:
    """Record ``loader(path, **overrides)`` as what loads folders of ``kind`` (see :mod:`.folders`)."""
    _FOLDER_LOADERS[kind] = loader


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def registered_types() -> list[str]:
    _load_builtins()
    return sorted(_TYPES)


def named_models() -> list[str]:
    _load_builtins()
    return sorted(_NAMED)


def encoder_class(encoder_type: str) -> type:
    """The class registered for ``encoder_type``; :class:`ModelError` listing the known ones."""
    _load_builtins()
    try:
        return _TYPES[encoder_type]
    except KeyError:
        known = ", ".join(sorted(_TYPES)) or "none"
        raise ModelError(f"unknown encoder type {encoder_type!r}; registered types: {known}") from None


def load_encoder(path_or_name: str | os.PathLike, **overrides: Any) -> Encoder:
    """A named model (built) or a model folder (loaded by what is registered for its kind).

    ``overrides`` go to the factory or the loader (e.g. ``device="cpu"``).
    """
    _load_builtins()
    key = os.fspath(path_or_name)
    if key in _NAMED:
        return _NAMED[key](**overrides)
    if not os.path.isdir(key):
        raise ModelError(f"model directory {key!r} does not exist (and it is not a named model: "
                         f"{', '.join(sorted(_NAMED)) or 'none'})")
    folder = classify_folder(key)
    if folder.kind == "mmembed":
        from mmembed.encoders.matryoshka import attach_trained_dims

        return attach_trained_dims(encoder_class(folder.config["encoder_type"]).from_pretrained(key, **overrides), key)
    loader = _FOLDER_LOADERS.get(folder.kind)
    if loader is None:  # a built-in module that registers this kind failed to import
        raise ModelError(f"{key!r} is a {folder.kind} folder, but no loader for it is registered")
    return loader(key, **overrides)
