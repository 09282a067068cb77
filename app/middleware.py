"""Pure ASGI middleware: request limits, security headers, request metrics, one-line startup errors."""

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.errors import BodyTimeoutError, BodyTooLargeError, HeadersTooLargeError, send_refusal
from app.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Swagger UI (app.api_docs) is served from this host too; FastAPI starts it with an inline script.
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:")
PAGE_CSP = b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'"
DOCS_PATHS = ("/docs",)


# Total request header bytes (names and values), as nginx's and Node's defaults: real clients send a few KB.
MAX_HEADER_BYTES = 16 * 1024


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes`` (at once from Content-Length, else as soon as it grows past),
    408 when the whole body has not arrived within ``timeout_s``: a slow client cannot hold a worker.
    431 for headers over ``MAX_HEADER_BYTES``, before any route sees them. The errors and their
    messages are app.errors'."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            await send_refusal(scope, receive, send, HeadersTooLargeError(header_bytes, MAX_HEADER_BYTES))
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_refusal(scope, receive, send, BodyTooLargeError(self.max_bytes))
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            try:
                # Not asyncio.wait_for: on Python 3.11 it wraps every receive in a new Task.
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    """Adds the security headers and the Content-Security-Policy (Swagger UI's own for /docs) to every
    response, error responses included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.extend(SECURITY_HEADERS)
                headers.append((b"content-security-policy", csp))
            await send(message)

        await self.app(scope, receive, send_with_headers)


# A client may send any token as its method: each would be a new time series, so the rest share one label.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


class MetricsMiddleware:
    """Counts requests by route template (not raw path) and by method and status, each of bounded values."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            endpoint = _route_template(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class OneLineStartupErrors:
    """Uvicorn prints whatever message a failed startup sends; Starlette sends a traceback.
    Keep only the exception's own message, which names the path and the fix."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and message.get("message"):
                last = message["message"].strip().splitlines()[-1]
                message = {**message, "message": last.split(": ", 1)[-1] if ": " in last else last}
            await send(message)

        await self.app(scope, receive, send_short)


def _route_template(scope: Scope) -> str:
    # The router records the matched route in the scope; unmatched paths share one label.
    route = scope.get("route")
    return getattr(route, "path", None) or "other"
