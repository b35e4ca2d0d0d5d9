"""Machinery every encoder shares: batching, input checks, devices, optional deps, checkpoints.

Stable API (other encoder modules build on exactly these names):

- :class:`BatchedEncoder` — base class implementing the :class:`~mmembed.encoders.base.Encoder`
  protocol on top of one method, ``embed(items, role, instructions) -> torch.Tensor`` (rows
  L2-normalised, with gradients when called in training). It checks items, sorts them by
  ``length_keys(items)`` (default: ``length_key`` per item, text characters)
  so that a batch pads little, runs batches under ``torch.no_grad`` (and in eval mode when the
  encoder is an ``nn.Module``) with an optional tqdm bar, and returns float32 numpy rows in the
  input order. Subclasses set ``accepts_images``.
- :func:`check_items` — empty item -> :class:`DataError` naming it; an image given to a text-only
  encoder -> :class:`DataError` naming it.
- :func:`encode_in_batches` — the batching loop on its own.
- :func:`warn_truncation` — one warning per process and encoder id when text is cut off.
- :func:`resolve_device` / :func:`resolve_dtype` — ``"auto"``/``None``/strings to torch objects.
- :func:`require_module` / :func:`package_version` — optional dependencies with an install hint.
- :func:`quiet_transformers` — no transformers progress bars or notices inside a block (loading).
- :func:`load_state_strict` — load tensors into a module; mismatches become :class:`ModelError`.
- :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`read_config` — a checkpoint is a
  directory holding ``config.json`` (``encoder_type``, ``format_version`` and the encoder's
  settings, flat) and ``model.safetensors``; it is written atomically and read with safe APIs
  only. Loading checks the type: a checkpoint of one encoder type is refused by another class.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from mmembed.encoders.base import Instructions, Item, per_item_instructions
from mmembed.encoders.prompts import Role
from mmembed.errors import ConfigError, DataError, Location, MissingDependencyError, ModelError
from mmembed.fileio import atomic_directory, write_json
from mmembed.types import has_visible_text

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------- input checks


def check_items(items: Sequence[Item], *, accepts_images: bool = True, encoder_name: str = "this encoder") -> None:
    """Refuse items an encoder cannot embed, naming the first offending item."""
    for item in items:
        has_text = has_visible_text(item.text)
        if not has_text and item.image is None:
            raise DataError("an item needs text, an image, or both; this one has neither", Location(item=item.id))
        if item.image is not None and not accepts_images:
            raise DataError(f"this item has an image but {encoder_name} encodes text only", Location(item=item.id))


#: Characters per token assumed before a text is tokenized to find where it can be cut.
CHARS_PER_TOKEN_BUDGET = 32


def clip_to_tokens(text: str | None, count_tokens: Callable[[str], int], max_tokens: int) -> str | None:
    """A prefix of ``text`` that still has more than ``max_tokens`` tokens, or ``text`` itself.

    Tokenizing a 10 MB string to keep its first 256 tokens costs seconds and gigabytes, so long
    texts are cut first. The cut is at whitespace, before which every tokenizer here (WordPiece,
    byte-level BPE, SentencePiece) tokenizes the same with or without what follows; a prefix is
    kept only once it tokenizes to more than ``max_tokens`` tokens, so the tokens a model sees
    after truncation are exactly those of the full text. The budget grows 4x until it is enough.
    """
    budget = max(max_tokens, 1) * CHARS_PER_TOKEN_BUDGET
    while text is not None and len(text) > budget:
        cut = max(text.rfind(" ", 0, budget), text.rfind("\n", 0, budget))
        prefix = text[:cut] if cut > 0 else text[:budget]
        if count_tokens(prefix) > max_tokens:
            return prefix
        budget *= 4
    return text


_warned_truncation: set[str] = set()


def warn_truncation(encoder_id: str, item_id: str, max_length: int) -> None:
    """Log once per process and encoder that inputs are being cut to ``max_length`` tokens.

    One warning rather than one per item: a corpus with long documents would otherwise flood the
    log, while silence would hide that the tail of those documents is ignored.
    """
    if encoder_id in _warned_truncation:
        return
    _warned_truncation.add(encoder_id)
    logger.warning("item %r (and possibly others) is longer than %d tokens and was truncated by %s",
                   item_id, max_length, encoder_id)


def reset_truncation_warnings() -> None:
    """Forget which encoders already warned (for tests and long-lived services)."""
    _warned_truncation.clear()


# ----------------------------------------------------------------------------- batching


def encode_in_batches(items: Sequence[Any], encode_batch: Callable[[list[int]], torch.Tensor | np.ndarray], *,
                      dim: int, batch_size: int = 32, show_progress: bool = False,
                      sort_key: Callable[[Any], float] | None = None, lengths: Sequence[float] | None = None,
                      desc: str = "encoding") -> np.ndarray:
    """Call ``encode_batch`` on batches of indices into ``items``; rows come back in input order.

    With ``sort_key`` (or precomputed ``lengths``) the items are processed longest first, so each
    batch pads little (the trick sentence-transformers uses with character counts; token counts
    waste less); results are put back in input order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(items)
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    order = list(range(n))
    if lengths is None and sort_key is not None:
        lengths = [sort_key(item) for item in items]
    if lengths is not None:
        order.sort(key=lambda i: -lengths[i])
    bar = _progress(n, desc) if show_progress else None
    try:
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            rows = encode_batch(idx)
            if isinstance(rows, torch.Tensor):
                rows = rows.detach().float().cpu().numpy()
            out[idx] = rows
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return out


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item")


class BatchedEncoder:
    """Implements ``encode_queries``/``encode_candidates`` on top of :meth:`embed`.

    Subclasses provide ``encoder_id``, ``dim`` and :meth:`embed`; they may override
    :meth:`length_key` (a cost estimate used to group similar items into a batch).
    """

    #: Set by :func:`mmembed.encoders.registry.register`.
    encoder_type: ClassVar[str] = ""
    #: Whether items may carry images (text-only encoders set False).
    accepts_images: ClassVar[bool] = True
    encoder_id: str
    dim: int

    def embed(self, items: Sequence[Item], role: Role, instructions: Sequence[str | None] | None = None
              ) -> torch.Tensor:
        """L2-normalised embeddings (batch, dim) as a torch tensor, differentiable in training."""
        raise NotImplementedError

    def length_key(self, item: Item) -> float:
        return len(item.text or "") + (1000.0 if item.image is not None else 0.0)

    def length_keys(self, items: Sequence[Item]) -> list[float]:
        """Cost estimates of all items at once (override to tokenize in one batch)."""
        return [self.length_key(item) for item in items]

    def encode_queries(self, queries: Sequence[Item], instruction: Instructions = None, *,
                       batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed queries, each with its instruction (one for all, one per query, or none)."""
        instructions = per_item_instructions(instruction, len(queries))
        return self._encode(queries, "query", instructions, batch_size, show_progress)

    def encode_candidates(self, candidates: Sequence[Item], *, batch_size: int = 32,
                          show_progress: bool = False) -> np.ndarray:
        """Embed candidates (never with an instruction)."""
        return self._encode(candidates, "candidate", [None] * len(candidates), batch_size, show_progress)

    def _encode(self, items: Sequence[Item], role: Role, instructions: list[str | None], batch_size: int,
                show_progress: bool) -> np.ndarray:
        items = list(items)
        check_items(items, accepts_images=self.accepts_images, encoder_name=self.encoder_type or type(self).__name__)

        def encode_batch(idx: list[int]) -> torch.Tensor:
            return self.embed([items[i] for i in idx], role, [instructions[i] for i in idx])

        was_training = isinstance(self, torch.nn.Module) and self.training
        if was_training:
            self.eval()  # no dropout when embedding for retrieval
        try:
            with torch.no_grad():
                return encode_in_batches(items, encode_batch, dim=self.dim, batch_size=batch_size,
                                         show_progress=show_progress, lengths=self.length_keys(items),
                                         desc=f"{role}s")
        finally:
            if was_training:
                self.train()


# ----------------------------------------------------------------------------- devices and dtypes


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}: {e}") from None


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    """``None``/``"auto"`` -> bfloat16 on CUDA, float32 on CPU; names like ``"bf16"`` accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(_DTYPES))}") from None


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


# ----------------------------------------------------------------------------- optional dependencies


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


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(directory: str | Path, encoder_type: str, config: Mapping[str, Any],
                    tensors: Mapping[str, torch.Tensor], *, extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (the old directory is replaced).

    ``config`` holds the encoder's settings (JSON values); ``encoder_type`` and ``format_version``
    are added. ``extra(staging_dir)`` may write more files into the same atomic directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    full = {"encoder_type": encoder_type, "format_version": FORMAT_VERSION, **config}
    with atomic_directory(directory) as staging:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(staging / WEIGHTS_FILE), metadata={"encoder_type": encoder_type})
        write_json(staging / CONFIG_FILE, full)
        if extra is not None:
            extra(staging)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an mmembed checkpoint; :class:`ModelError` naming what is wrong."""
    from mmembed.encoders.folders import read_folder_config

    config = read_folder_config(directory)
    path = Path(directory) / CONFIG_FILE
    if not isinstance(config.get("encoder_type"), str):
        raise ModelError(f"{path}: missing the 'encoder_type' key that says which encoder wrote it")
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version!r} is newer than this mmembed reads ({FORMAT_VERSION})")
    return config


def load_checkpoint(directory: str | Path, expected_type: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and tensors of a checkpoint written by ``expected_type``; refuses any other type."""
    config = read_config(directory)
    if config["encoder_type"] != expected_type:
        raise ModelError(f"{str(directory)!r} holds a {config['encoder_type']!r} encoder, "
                         f"which cannot be loaded as a {expected_type!r} encoder; use load_encoder() "
                         "to pick the class from the checkpoint")
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        return config, {}
    from safetensors.torch import load_file

    try:
        return config, load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise ModelError(f"{weights}: unreadable weights: {e}") from None


def load_state_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module``; any missing or unexpected key is a :class:`ModelError`."""
    try:
        result = module.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"{what}: weights do not fit the model: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(f"{what}: weights do not fit the model (missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]})")
