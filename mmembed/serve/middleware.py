"""The service's ASGI middleware and error bodies: request guards and security headers.

:class:`RequestGuard` stamps each request's arrival, refuses oversized bodies and foreign Host
headers before anything is read, and bounds the wait for a body; :class:`SecurityHeaders` adds
the headers every answer carries. :func:`error_response` is the one shape of an error answer
(mmembed's, or OpenAI's under ``/v1/``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmembed.serve.limits import megabytes
from mmembed.serve.models import ErrorResponse, FieldProblem

#: The page's Content-Security-Policy: its own scripts and styles only; thumbnails are blob: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                   fields: list[FieldProblem] | None = None, *, openai: bool = False) -> JSONResponse:
    """An error answer: mmembed's ``ErrorResponse``, or OpenAI's error shape for the ``/v1/`` routes."""
    if openai:
        param = fields[0].field if fields else None
        kind = "invalid_request_error" if status < 500 else "server_error"
        body: dict[str, Any] = {"error": {"message": detail, "type": kind, "param": param, "code": error}}
    else:
        body = ErrorResponse(error=error, detail=detail, fields=fields).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def is_openai_path(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith("/v1/")


class BodyTimeout(Exception):
    """The client stopped sending a request body it announced."""


class RequestGuard:
    """Stamps each request's arrival, refuses bodies over ``max_bytes`` before they are read, refuses
    Host headers not in ``hosts`` (DNS rebinding: a page on another site resolving its own name to
    this address), and bounds the wait for each part of a body."""

    def __init__(self, app: ASGIApp, max_bytes: int, hosts: frozenset[str] | None, body_timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.hosts = hosts
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["mmembed.arrival"] = time.perf_counter()
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        body_done = False

        async def bounded_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards only a disconnect can come, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s or None)
            except asyncio.TimeoutError:
                scope["mmembed.body_timeout"] = True  # read by the error handler: 408, not a parse error
                raise BodyTimeout from None
            body_done = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = dict(scope.get("headers") or [])
        openai = is_openai_path(scope)
        host = _host_name(headers.get(b"host"))
        if self.hosts is not None and host is not None and host not in self.hosts:
            return error_response(421, "host_not_allowed", f"this service does not answer for the host {host!r}; "
                                  f"start it with --allowed-host {host} to allow it", openai=openai)
        length = headers.get(b"content-length")
        if length is None:
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return error_response(411, "length_required", "send the request body with a Content-Length header",
                              openai=openai)
            return None
        if not length.isdigit():
            return error_response(400, "invalid_request", "malformed Content-Length header", openai=openai)
        if int(length) > self.max_bytes:
            return error_response(413, "request_too_large", f"the request body is {megabytes(int(length))} "
                                  f"({int(length)} bytes); the limit is {megabytes(self.max_bytes)} "
                                  f"({self.max_bytes} bytes)", {"Connection": "close"}, openai=openai)
        return None


def _host_name(value: bytes | None) -> str | None:
    """The host of a Host header, lower case, without the port or IPv6 brackets."""
    if not value:
        return None
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SecurityHeaders:
    """Headers on every answer: no MIME sniffing, no referrer, no framing, and a strict CSP."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY"), (b"content-security-policy", PAGE_CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
