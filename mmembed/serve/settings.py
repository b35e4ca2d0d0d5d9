"""Settings of the search service: where it listens, who may call it, and every size limit.

Loadable like every mmembed configuration (``load_config(ServeSettings, path, overrides)``); the
``mmembed serve`` flags override single fields. Defaults are safe for a laptop: localhost only,
bounded uploads, pixels, text, ``k``, and a bounded queue in front of the encoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmembed.data.images import DEFAULT_MAX_PIXELS
from mmembed.errors import ConfigError

#: Environment variable read for the API key when none is given explicitly.
API_KEY_ENV = "MMEMBED_API_KEY"
#: Image formats accepted in uploads (Pillow format names); anything else is answered 415.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: Served-name suffixes that pick the input type (``NAME-query`` embeds queries).
INPUT_TYPE_SUFFIXES = ("-query", "-document")


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
    #: Deepest result a search may reach with paging (``offset + k``).
    max_depth: int = 1000
    #: Most items of one embed request (OpenAI's own limit; LangChain sends up to 1000 per request).
    #: Encoder calls still take at most ``batch_max_items`` items at a time.
    max_embed_items: int = 2048
    #: Threads that decode uploaded images and run reranking requests. Encoder calls run on one
    #: batching thread (see ``batch_max_items``) whatever this is.
    workers: int = 2
    #: Requests allowed in the encoder path beyond ``workers``; past ``workers + queue_size`` the
    #: answer is 503 at once.
    queue_size: int = 64
    #: Most items (queries, or embedding inputs) encoded in one call. 1 turns batching off.
    batch_max_items: int = 32
    #: Longest wait, in milliseconds, for admitted requests to join a batch. A request alone in
    #: the service never waits.
    batch_max_wait_ms: float = 5.0
    #: Seconds a client is told to wait (``Retry-After``) when the queue is full.
    retry_after_s: int = 1
    #: Largest side of a served candidate thumbnail, in pixels.
    max_thumbnail_side: int = 1024
    #: Open connections; past it the oldest connections without a request in progress are closed
    #: to make room, so a flood of idle sockets cannot lock out health checks or searches.
    max_connections: int = 256
    #: Seconds a connection may take to send a complete request head (and an idle keep-alive
    #: connection may stay open); then it is closed.
    header_timeout_s: float = 10.0
    #: Seconds the service waits for each part of a request body; then it answers 408 and closes.
    body_timeout_s: float = 30.0
    #: Host header values accepted besides localhost names and ``host`` (DNS-rebinding guard);
    #: ``["*"]`` accepts any.
    allowed_hosts: list[str] = field(default_factory=list)
    #: Names the model answers to in the OpenAI-compatible routes (the first is the one reported);
    #: empty: the encoder spec. Each also answers as ``NAME-query`` and ``NAME-document``, which
    #: embed queries or documents for clients that cannot send ``input_type``.
    served_model_names: list[str] = field(default_factory=list)
    #: What ``/v1/embeddings`` embeds when neither ``input_type`` nor a ``-query``/``-document``
    #: model name says: ``"document"`` (OpenAI's meaning: text to be searched) or ``"query"``.
    default_input_type: str = "document"

    def __post_init__(self) -> None:
        for name in ("port", "max_upload_bytes", "max_request_bytes", "max_pixels", "max_text_chars", "max_k",
                     "max_embed_items", "max_depth", "workers", "retry_after_s", "max_thumbnail_side",
                     "max_connections", "batch_max_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve setting {name} must be a positive integer, got {value!r}")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ConfigError(f"serve setting queue_size must be an integer >= 0, got {self.queue_size!r}")
        for name in ("batch_max_wait_ms", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"serve setting {name} must be a number >= 0, got {value!r}")
        if not all(isinstance(h, str) and h.strip() for h in self.allowed_hosts):
            raise ConfigError(f"serve setting allowed_hosts must be a list of host names, got {self.allowed_hosts!r}")
        if not all(isinstance(n, str) and n.strip() and not n.endswith(INPUT_TYPE_SUFFIXES)
                   for n in self.served_model_names):
            raise ConfigError(f"serve setting served_model_names must be non-empty names not ending in "
                              f"{' or '.join(INPUT_TYPE_SUFFIXES)} (those variants are added for each name), "
                              f"got {self.served_model_names!r}")
        if self.default_input_type not in ("query", "document"):
            raise ConfigError(f"serve setting default_input_type must be 'query' or 'document', "
                              f"got {self.default_input_type!r}")
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


LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")


def accepted_hosts(settings: ServeSettings) -> frozenset[str] | None:
    """Host header names (lower case, no port) the service answers; ``None``: any."""
    if "*" in settings.allowed_hosts:
        return None
    names = {*LOCAL_HOST_NAMES, *(h.lower().strip("[]") for h in settings.allowed_hosts)}
    if settings.host not in ("0.0.0.0", "::", ""):
        names.add(settings.host.lower().strip("[]"))
    return frozenset(names)
