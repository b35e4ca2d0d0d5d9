"""Running the app with uvicorn, with the connection limits uvicorn lacks.

uvicorn's own bound (``limit_concurrency``) answers *every* request 503 once that many sockets are
open, and it never closes a socket that has not sent a complete request head: 260 idle sockets
locked out health checks for good. :class:`GuardedH11Protocol` instead

- closes a connection that has not sent a complete request head within ``header_timeout_s``
  (a new connection, or a keep-alive one that started a request and stalled);
- when more than ``max_connections`` are open, closes the oldest connections that have no request
  in progress to make room for the new one (only when none is idle is the new one refused);
- lets uvicorn close idle keep-alive connections after ``keep_alive_s``.

A body that stops arriving is bounded by the app (``body_timeout_s``: 408 and the connection closed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mmembed.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

#: Seconds an idle keep-alive connection stays open after an answer.
KEEP_ALIVE_S = 5


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a request-head timeout and eviction of idle connections."""

    header_timeout_s: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.opened_at = time.monotonic()
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.busy:
            self._cancel_head_timer()  # the head arrived; the body is bounded by the app
        elif self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()  # the next request of a keep-alive connection started

    @property
    def busy(self) -> bool:
        """A request head was received and its answer is not complete."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        if self.header_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.busy and not self.transport.is_closing():
            logger.debug("closing a connection that sent no complete request in %.0f s", self.header_timeout_s)
            self.transport.close()

    def _make_room(self) -> None:
        excess = len(self.connections) - self.max_connections
        if excess <= 0:
            return
        idle = sorted((c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol)
                       and not c.busy and not c.transport.is_closing()), key=lambda c: c.opened_at)
        for connection in idle[:excess]:
            connection.transport.close()
        if len(idle) < excess:
            logger.warning("%d connections open, all with requests in progress: refusing a new one",
                           len(self.connections))
            self.transport.close()


def protocol_for(settings: ServeSettings) -> type[GuardedH11Protocol]:
    """The protocol class with this service's limits."""
    return type("ServiceH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections})


def make_server(app: Any, settings: ServeSettings, log_level: str = "info") -> uvicorn.Server:
    config = uvicorn.Config(app, host=settings.host, port=settings.port, http=protocol_for(settings),
                            timeout_keep_alive=KEEP_ALIVE_S, server_header=False, log_level=log_level,
                            lifespan="on")
    return uvicorn.Server(config)


def bind(settings: ServeSettings, port: int | None = None) -> socket.socket:
    """A listening socket on ``settings.host`` and ``port`` (default ``settings.port``; 0: any free
    port), bound before anything slow, so that clients see 'loading' instead of 'connection refused'."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port if port is None else port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
