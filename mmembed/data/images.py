"""Images under one root: path checks, lazy loading, RGB conversion and a pixel limit.

Paths in M-BEIR files are relative to the image root and are checked *lexically*: absolute
paths, ``..`` components, NUL bytes and drive letters are refused, so a data file cannot name a
file outside the root. Symlinks inside the root are followed: M-BEIR users keep the 169 GB image
archive elsewhere and link it in (``M-BEIR/mbeir_images -> /data/mbeir_images``), and whoever
can create a link inside the data root already chose what it serves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmembed.errors import ImageError, Location

#: Default pixel limit: well above any retrieval image, well below a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000


def unsafe_relative_path(rel_path: str) -> str | None:
    """Why ``rel_path`` may not be used under a root (``None`` when it may): a lexical check."""
    if not rel_path or not rel_path.strip():
        return "is empty"
    if "\0" in rel_path:
        return "contains a NUL byte"
    if os.path.isabs(rel_path) or rel_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel_path):
        return "must be relative to the image root"
    if ".." in re.split(r"[/\\]", rel_path):
        return "escapes the image root (a '..' component)"
    return None


class ImageStore:
    """Resolves and loads the images of a dataset under ``root``."""

    def __init__(self, root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root).resolve()
        self.max_pixels = max_pixels

    def resolve(self, rel_path: str, item_id: str | None = None) -> Path:
        """The path of ``rel_path`` under the root (symlinks inside it are followed when read)."""
        loc = Location(item=item_id, field="img_path")
        problem = unsafe_relative_path(rel_path)
        if problem:
            raise ImageError(f"image path {rel_path!r} {problem}", loc)
        return self.root / rel_path

    def ref(self, rel_path: str | None, item_id: str) -> LazyImage | None:
        """A lazy handle on an item's image (``None`` when it has none)."""
        if rel_path is None or not rel_path.strip():
            return None
        return LazyImage(self.resolve(rel_path, item_id), item_id, self.max_pixels)

    def load(self, rel_path: str, item_id: str) -> Image.Image:
        return load_image_file(self.resolve(rel_path, item_id), item_id, self.max_pixels)


@dataclass(frozen=True)
class LazyImage:
    """An image that is read from disk only when an encoder needs its pixels."""

    path: Path
    item_id: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    def load(self) -> Image.Image:
        return load_image_file(self.path, self.item_id, self.max_pixels)


ImageLike = Image.Image | LazyImage


def as_pil(image: ImageLike, item_id: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Pixels of an in-memory or lazy image, as RGB."""
    if isinstance(image, LazyImage):
        return image.load()
    if isinstance(image, Image.Image):
        check_pixels(image.size, item_id, max_pixels)
        return to_rgb(image)
    raise ImageError(f"expected a PIL image or a lazy image, got {type(image).__name__}", Location(item=item_id))


def check_pixels(size: tuple[int, int], item_id: str | None, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels",
                         Location(item=item_id))


def load_image_file(path: Path, item_id: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    loc = Location(file=str(path), item=item_id)
    if not path.is_file():
        raise ImageError("image file not found", loc)
    # No warnings filter is changed here: ``warnings.catch_warnings`` is not thread-safe, and
    # concurrent callers once left an "error" filter installed for good. The declared size is
    # compared with ``max_pixels`` before any pixel is decoded; Pillow's own bomb check still raises
    # above twice its limit (and may print a DecompressionBombWarning in between).
    try:
        with Image.open(path) as im:
            check_pixels(im.size, item_id, max_pixels)  # before decoding any pixel data
            im.load()
            return to_rgb(im)
    except ImageError as e:
        raise ImageError(e.reason, loc) from None  # the file, which pixel and mode checks do not know
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image refused as a decompression bomb: {e}", loc) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"unreadable image: {e}", loc) from None


#: Modes with an alpha channel (``La`` / ``RGBa``: premultiplied), composited on white.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB pixels of any PIL mode; transparent areas become white (emoji and icons are drawn on
    transparency).

    PIL's own ``convert("RGB")`` clips high-depth greyscale to 0-255, so a 16-bit PNG (mode ``I;16``)
    would read as all white: 16-bit and 32-bit integer images (``I;16*``, ``I``, which PNG and TIFF
    16-bit greyscale decode to) are scaled from 0-65535 instead, and float images (``F``) from 0-1
    when every value lies in [0, 1] (normalised data), else taken as 0-255. Modes PIL cannot
    convert are an :class:`ImageError`, never a silently wrong picture.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I" or mode.startswith("I;16"):
        return _grey_rgb(np.asarray(image, dtype=np.float64) / 257.0)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        normalised = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
        return _grey_rgb(np.nan_to_num(values) * (255.0 if normalised else 1.0))
    if mode == "La":  # premultiplied: PIL converts it to nothing, so un-premultiply by hand
        grey, alpha = (np.asarray(image, dtype=np.float64)[..., i] for i in (0, 1))
        return _on_white(_grey_rgb(grey * 255.0 / np.maximum(alpha, 1.0)), alpha)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return _on_white(rgba.convert("RGB"), np.asarray(rgba.getchannel("A"), dtype=np.float64))
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(f"image mode {mode!r} cannot be converted to RGB: {e}") from None


def _grey_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def _on_white(rgb: Image.Image, alpha: np.ndarray) -> Image.Image:
    """``rgb`` composited over white with ``alpha`` (0-255)."""
    mask = Image.fromarray(np.clip(np.rint(alpha), 0, 255).astype(np.uint8), "L")
    canvas = Image.new("RGB", rgb.size, (255, 255, 255))
    canvas.paste(rgb, mask=mask)
    return canvas
