"""The third-party libraries mmembed leans on: optional ones imported with an install hint, the
installed versions a run records, and transformers' loading noise kept out of the log.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Iterator
from types import ModuleType

from mmembed.errors import MissingDependencyError


def require_module(module: str, *, extra: str, what: str | None = None) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingDependencyError` with the pip hint."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        need = what or module
        raise MissingDependencyError(
            f"{need} is not installed ({e}); install it with: pip install mmembed[{extra}]") from None


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' progress bars and notices below errors in the block, then restore both.

    Loading reports every unused or newly initialised tensor (e.g. BERT's pooler, a VLM's LM head)
    as a warning; the callers check the keys that matter themselves and say so in their own words.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
