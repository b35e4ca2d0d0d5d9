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
import warnings
from dataclasses import dataclass
from pathlib import Path

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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_pixels(im.size, item_id, max_pixels)  # before decoding any pixel data
                im.load()
                return to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image refused as a decompression bomb: {e}", loc) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"unreadable image: {e}", loc) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent areas become white (emoji and icons are drawn on transparency)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
