"""Pure ASGI middleware: body size and read deadline, request metrics, security headers."""

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

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
# Swagger UI loads its script and styles from a CDN; the rest of the pages are self-contained.
DOCS_CSP = (b"default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com")
PAGE_CSP = b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'"


# Total request header bytes (names and values), as nginx's and Node's defaults: real clients send a few KB.
MAX_HEADER_BYTES = 16 * 1024


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes`` (at once from Content-Length, else as soon as it grows past),
    408 when the whole body has not arrived within ``timeout_s``: a slow client cannot hold a worker.
    431 for headers over ``MAX_HEADER_BYTES``, before any route sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > MAX_HEADER_BYTES:
            await _send_json(send, 431, f"The request headers are {header_bytes:,} bytes, over the limit of "
                             f"{MAX_HEADER_BYTES:,}. Send fewer or shorter headers (cookies included).")
            return
        too_large = (f"The request body is over the limit of {self.max_bytes:,} bytes. "
                     "Send a smaller image.")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, too_large)
            return
        deadline = time.monotonic() + self.timeout_s
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                raise HTTPException(408, f"The request body did not arrive within {self.timeout_s:g} s. "
                                    "Send it faster or send a smaller file.") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large)
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Counts requests by route template (not raw path: bounded label values) and status."""

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
                headers = message.setdefault("headers", [])
                headers.extend(SECURITY_HEADERS)
                csp = DOCS_CSP if scope["path"] in ("/docs", "/redoc") else PAGE_CSP
                headers.append((b"content-security-policy", csp))
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            endpoint = _route_template(scope)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
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


async def _send_json(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
