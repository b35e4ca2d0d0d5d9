"""Settings of the search service: where it listens, who may call it, and every size limit.

Loadable like every mmembed configuration (``load_config(ServeSettings, path, overrides)``); the
``mmembed serve`` flags override single fields. Defaults are safe for a laptop: localhost only,
bounded uploads, pixels, text, ``k``, and a bounded queue in front of the encoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.errors import ConfigError

#: Environment variable read for the API key when none is given explicitly.
API_KEY_ENV = "MMEMBED_API_KEY"
#: Image formats accepted in uploads (Pillow format names); anything else is answered 415.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass
class ServeSettings:
    """How the service runs; every limit is enforced before any model sees the input."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Required in the ``X-API-Key`` header of every API call except health and readiness.
    #: ``None``: no key (fine on localhost). ``mmembed serve`` falls back to ``$MMEMBED_API_KEY``.
    api_key: str | None = None
    #: Largest uploaded image, in bytes (encoded file size).
    max_upload_bytes: int = 8 * 1024 * 1024
    #: Largest request body, in bytes (a multipart search, or an embed request with base64 images).
    max_request_bytes: int = 24 * 1024 * 1024
    #: Largest uploaded image, in pixels (width x height), checked before any pixel is decoded.
    max_pixels: int = min(DEFAULT_MAX_PIXELS, 16_000_000)
    #: Longest query text and instruction, in characters.
    max_text_chars: int = 2000
    #: Largest ``k`` of a search.
    max_k: int = 100
    #: Most items of one embed request.
    max_embed_items: int = 32
    #: Threads that run encoder calls. Encoder calls are serialised by one lock (the CPU encoder's
    #: feature cache is not thread-safe), so more workers only overlap the non-encoder work.
    workers: int = 1
    #: Requests allowed to wait for a worker; beyond ``workers + queue_size`` the answer is 503.
    queue_size: int = 16
    #: Seconds a client is told to wait (``Retry-After``) when the queue is full.
    retry_after_s: int = 1
    #: Largest side of a served candidate thumbnail, in pixels.
    max_thumbnail_side: int = 1024
    #: Open connections uvicorn accepts before answering 503 itself (a backstop for floods).
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("port", "max_upload_bytes", "max_request_bytes", "max_pixels", "max_text_chars", "max_k",
                     "max_embed_items", "workers", "retry_after_s", "max_thumbnail_side", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve setting {name} must be a positive integer, got {value!r}")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ConfigError(f"serve setting queue_size must be an integer >= 0, got {self.queue_size!r}")
        if self.port > 65535:
            raise ConfigError(f"serve setting port must be at most 65535, got {self.port}")
        if self.max_request_bytes < self.max_upload_bytes:
            raise ConfigError(f"max_request_bytes ({self.max_request_bytes}) must be at least max_upload_bytes "
                              f"({self.max_upload_bytes})")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("serve setting api_key is empty; leave it unset for no key")

    @property
    def capacity(self) -> int:
        """Requests in the encoder pool at once (running + waiting)."""
        return self.workers + self.queue_size


def api_key_from_env(explicit: str | None) -> str | None:
    """The explicit key, else ``$MMEMBED_API_KEY`` (an empty variable means no key)."""
    if explicit:
        return explicit
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
