"""Features of a frozen vision tower, cached by image content.

A frozen tower maps the same pixels to the same features, and on CPU it is the slowest part of
encoding (30-120 ms per image), so features are kept by the SHA-256 of the RGB pixels, the image
size and the tower id (weights + preprocessing + output shape): a resized or re-encoded copy is a
different image, while the same image under two ids or paths is computed once.

Two levels: an in-memory LRU bounded in bytes, and a directory of ``.safetensors`` files (one per
image, written atomically, read without pickle), so features survive the process and are shared
by every command (evaluate, mine, index build, train) that uses the same tower. The directory is on
by default, under the user cache directory (:func:`feature_cache_dir`), and bounded in size: past
``disk_max_bytes`` the least recently used files are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from mmembed.fileio import atomic_open, user_cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Default bound of the on-disk level (about 25,000 images at the default 4x4 grid).
DEFAULT_DISK_BYTES = 2 * 1024 ** 3
#: Environment: ``off`` or a path for the image features (the rest of mmembed's cache: ``MMEMBED_CACHE``).
IMAGE_CACHE_ENV = "MMEMBED_IMAGE_CACHE"
OFF = ("", "off", "none", "false", "0")


def feature_cache_dir(requested: str | os.PathLike | bool | None = None) -> Path | None:
    """Where image features are kept on disk (``None``: memory only).

    ``requested`` wins when given (a path, or ``False`` / ``"off"`` for none); otherwise
    ``$MMEMBED_IMAGE_CACHE`` (a path or ``off``), otherwise ``image-features`` under
    :func:`~mmembed.fileio.user_cache_dir` (``$MMEMBED_CACHE``, ``$XDG_CACHE_HOME/mmembed`` or
    ``~/.cache/mmembed``).
    """
    if requested is False or (isinstance(requested, str) and requested.strip().lower() in OFF):
        return None
    if requested is not None and requested is not True:
        return Path(requested)
    env = os.environ.get(IMAGE_CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env)
    return user_cache_dir() / "image-features"


def image_key(image: Image.Image, tower_id: str) -> str:
    """Content key of an RGB image for one tower (hex SHA-256)."""
    digest = hashlib.sha256()
    digest.update(tower_id.encode("utf-8"))
    digest.update(f"|{image.mode}|{image.width}x{image.height}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """LRU of feature tensors in memory (bounded in bytes), backed by an optional directory."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, directory: str | Path | None = None,
                 disk_max_bytes: int = DEFAULT_DISK_BYTES):
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory is not None else None
        self.disk_max_bytes = disk_max_bytes
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._disk_bytes: int | None = None  # scanned on the first write
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, key: str) -> torch.Tensor | None:
        tensor = self._memory.get(key)
        if tensor is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return tensor
        tensor = self._read_disk(key)
        if tensor is not None:
            self._remember(key, tensor)
            self.hits += 1
            return tensor
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        self._remember(key, tensor)
        self._write_disk(key, tensor)

    def clear(self) -> None:
        """Empty the memory level (the directory is left alone)."""
        self._memory.clear()
        self._bytes = 0

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        old = self._memory.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._memory[key] = tensor
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str) -> torch.Tensor | None:
        if self.directory is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors.torch import load

        try:
            tensor = load(path.read_bytes())["features"]
        except Exception as e:  # a corrupt file is a miss, recomputed and overwritten
            logger.warning("ignoring unreadable cached features %s: %s", path, e)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return tensor

    def _write_disk(self, key: str, tensor: torch.Tensor) -> None:
        if self.directory is None:
            return
        from safetensors.torch import save

        data = save({"features": tensor})
        try:
            with atomic_open(self._path(key), "wb") as f:
                f.write(data)
        except OSError as e:  # a full or read-only disk costs speed, never a result
            logger.warning("cannot cache image features in %s: %s", self.directory, e)
            return
        if self._disk_bytes is None:
            self._disk_bytes = sum(size for _, size, _ in self._files())
        else:
            self._disk_bytes += len(data)
        if self._disk_bytes > self.disk_max_bytes:
            self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached file."""
        found = []
        assert self.directory is not None
        for path in self.directory.glob("*/*.safetensors"):
            try:
                stat = path.stat()
            except OSError:
                continue  # removed by another process meanwhile
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _evict(self) -> None:
        """Remove the least recently used files until the directory is back under 90 % of its bound."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(0.9 * self.disk_max_bytes)
        removed = 0
        for _, size, path in files:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        self._disk_bytes = total
        logger.info("image feature cache %s: removed %d least recently used files (bound %d MB)", self.directory,
                    removed, self.disk_max_bytes // 2 ** 20)


class CachedTower:
    """Runs ``features(pixels)`` only for images whose features are not cached.

    ``preprocess`` turns RGB PIL images into the tower's input batch; ``features`` maps that batch
    to one tensor per image (stacked on dim 0). ``calls`` counts tower invocations.
    """

    def __init__(self, tower_id: str, preprocess: Callable[[Sequence[Image.Image]], torch.Tensor],
                 features: Callable[[torch.Tensor], torch.Tensor], cache: FeatureCache | None = None,
                 batch_size: int = 32):
        self.tower_id = tower_id
        self.preprocess = preprocess
        self.features = features
        self.cache = cache if cache is not None else FeatureCache()
        self.batch_size = batch_size
        self.calls = 0

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of ``images`` stacked in order (float32, CPU, no gradient)."""
        keys = [image_key(im, self.tower_id) for im in images]
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, Image.Image] = {}
        for key, im in zip(keys, images):
            if key in found or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is not None:
                found[key] = cached
            else:
                todo[key] = im
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            self.calls += 1
            out = self.features(self.preprocess([im for _, im in chunk])).float().cpu()
            for (key, _), row in zip(chunk, out):
                row = row.clone()
                self.cache.put(key, row)
                found[key] = row
        return torch.stack([found[key] for key in keys])
