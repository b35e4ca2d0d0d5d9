"""Input checks of the service: uploaded images, text lengths and ``k``, each failing as one clear 4xx.

Uploaded images go through the same rules as dataset images (:mod:`mmembed.data.images`): the
pixel limit is checked from the header before any pixel is decoded, decompression bombs are
refused, and the pixels become RGB the same way. The format is sniffed from the bytes (the
declared content type is not trusted), and only :data:`~mmembed.serve.settings.IMAGE_FORMATS` are
opened at all.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from mmembed.data.images import check_pixels, to_rgb
from mmembed.errors import ImageError
from mmembed.serve.models import SearchQuery
from mmembed.serve.settings import IMAGE_FORMATS, ServeSettings


class ApiError(Exception):
    """An answer other than 200: status, a stable code and a message for people."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def _formats_text() -> str:
    return ", ".join(IMAGE_FORMATS)


def check_upload_size(size: int, settings: ServeSettings, what: str = "image") -> None:
    if size > settings.max_upload_bytes:
        raise ApiError(413, "image_too_large",
                       f"the {what} is {size} bytes; the limit is {settings.max_upload_bytes} bytes")


def decode_image(data: bytes, settings: ServeSettings, what: str = "image") -> Image.Image:
    """RGB pixels of an uploaded image file, or an :class:`ApiError` (413, 415 or 400)."""
    check_upload_size(len(data), settings, what)
    if not data:
        raise ApiError(400, "empty_image", f"the {what} is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        claimed = claimed_format(data)
        if claimed is not None:
            raise ApiError(400, "corrupt_image",
                           f"the {what} starts like a {claimed} file but cannot be read") from None
        raise ApiError(415, "unsupported_image_type",
                       f"the {what} is not an image of a supported type ({_formats_text()})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(400, "corrupt_image", f"the {what} cannot be read: {e}") from None
    with image:
        try:
            check_pixels(image.size, what, settings.max_pixels)
        except ImageError:
            width, height = image.size
            raise ApiError(413, "too_many_pixels", f"the {what} has {width}x{height} = {width * height} pixels; "
                                                   f"the limit is {settings.max_pixels} pixels") from None
        return _decode_pixels(image, what)


def claimed_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"))


def _decode_pixels(image: Image.Image, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "too_many_pixels", f"the {what} was refused as a decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(400, "corrupt_image", f"the {what} is corrupt or truncated: {e}") from None


def check_text(value: str | None, name: str, settings: ServeSettings) -> None:
    if value is not None and len(value) > settings.max_text_chars:
        raise ApiError(422, "text_too_long",
                       f"{name} is {len(value)} characters long; the limit is {settings.max_text_chars}")


def check_k(k: int, settings: ServeSettings) -> None:
    if not 1 <= k <= settings.max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {settings.max_k}, got {k}")


def check_search(query: SearchQuery, has_image: bool, settings: ServeSettings) -> None:
    """Everything about a search that does not need the index: what is present, lengths, ``k``."""
    if query.text is None and not has_image:
        raise ApiError(422, "empty_query", "give text, an image, or both")
    if query.instruction is not None and query.task is not None:
        raise ApiError(422, "invalid_request", "give an instruction or a task, not both")
    check_text(query.text, "text", settings)
    check_text(query.instruction, "instruction", settings)
    check_k(query.k, settings)
