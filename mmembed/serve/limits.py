"""Input checks of the service: uploaded images, text lengths and ``k``, each failing as one clear 4xx.

Uploaded images go through the same rules as dataset images (:mod:`mmembed.data.images`): the
pixel limit is checked from the header before any pixel is decoded, decompression bombs are
refused, and the pixels become RGB the same way. The format is sniffed from the bytes (the
declared content type is not trusted), and only :data:`~mmembed.serve.settings.IMAGE_FORMATS` are
opened at all.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass

from PIL import Image

from mmembed.data.images import to_rgb
from mmembed.serve.models import SearchQuery
from mmembed.serve.settings import IMAGE_FORMATS, ServeSettings


@dataclass(frozen=True)
class Upload:
    """Image bytes from a request, decoded on a worker."""

    data: bytes
    what: str = "image"


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


def megabytes(size: int) -> str:
    """A byte count for people: '9.7 MB' (decimal megabytes, what file managers show)."""
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.1f} kB"


def check_upload_size(size: int, settings: ServeSettings, what: str = "image") -> None:
    limit = settings.max_upload_bytes
    if size > limit:
        raise ApiError(413, "image_too_large", f"the {what} is {megabytes(size)} ({size} bytes); the limit is "
                                               f"{megabytes(limit)} ({limit} bytes) per image")


def decode_image(data: bytes, settings: ServeSettings, what: str = "image") -> Image.Image:
    """RGB pixels of an uploaded image file, or an :class:`ApiError` (413, 415 or 400)."""
    check_upload_size(len(data), settings, what)
    return decode_image_bytes(data, settings.max_pixels, what)


def decode_image_bytes(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """RGB pixels of image file bytes whose header declares at most ``max_pixels`` pixels.

    The header is parsed by the format's own Pillow plugin, constructed directly rather than through
    ``Image.open``: ``Image.open`` applies Pillow's process-wide decompression-bomb policy, which
    raises or warns depending on the global warnings filters. Changing those filters per call
    (``warnings.catch_warnings``) is not thread-safe, and concurrent requests once left an "error"
    filter installed for good. Here the limit is compared with the declared size, and nothing
    depends on warnings state.
    """
    if not data:
        raise ApiError(400, "empty_image", f"the {what} is empty")
    image = _open_header(data, what)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ApiError(413, "too_many_pixels", f"the {what} is {width}x{height} = {width * height:,} pixels; "
                                               f"the limit is {max_pixels:,} pixels")
    with image:
        return _decode_pixels(image, what)


def _open_header(data: bytes, what: str) -> Image.Image:
    claimed = claimed_format(data)
    if claimed is None:
        raise ApiError(415, "unsupported_image_type",
                       f"the {what} is not an image of a supported type ({_formats_text()})")
    Image.init()
    factory = Image.OPEN[claimed][0]
    try:
        return factory(io.BytesIO(data), "")
    except (OSError, SyntaxError, ValueError, IndexError, TypeError, struct.error, EOFError) as e:
        raise ApiError(400, "corrupt_image", f"the {what} starts like a {claimed} file but cannot be read "
                                             f"({_reason(e)})") from None
    except Image.DecompressionBombError:  # a plugin's own check (GIF frames)
        raise ApiError(413, "too_many_pixels", f"the {what} declares too many pixels") from None


def _reason(e: Exception) -> str:
    return str(e) or type(e).__name__
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
        image.load()
        return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # a frame larger than the declared canvas (GIF); the warning is caught in case another
        # library turned warnings into errors: this code never changes the filters itself
        raise ApiError(413, "too_many_pixels", f"the {what} has a frame over the pixel limit") from None
    except (OSError, SyntaxError, ValueError, IndexError, struct.error, EOFError) as e:
        raise ApiError(400, "corrupt_image", f"the {what} is corrupt or truncated ({_reason(e)})") from None


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
    if query.offset + query.k > settings.max_depth:
        raise ApiError(422, "invalid_offset", f"offset + k is {query.offset + query.k}; results go no deeper than "
                                              f"{settings.max_depth}")


def b64_upload(data: str, what: str, settings: ServeSettings) -> Upload:
    """An image sent as base64 or as a ``data:`` URL; never a URL to fetch."""
    if data.startswith(("http://", "https://", "ftp://", "file:")):
        raise ApiError(422, "image_url_not_allowed", f"the {what} is a URL; this service never fetches URLs: "
                                                     "send a data URL (data:image/png;base64,...) or base64")
    if data.startswith("data:"):
        header, sep, data = data.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(422, "invalid_base64", f"the {what} is a data URL without ';base64,' data")
    check_upload_size(len(data) * 3 // 4, settings, what)  # before decoding
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"the {what} is not valid base64") from None
    return Upload(raw, what)
