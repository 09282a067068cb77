"""Optional API keys: who may call the routes that classify or explain.

Off unless API_KEYS_FILE is set. The file holds one line per key, ``NAME SHA256HEX`` (blank lines and
``#`` comments allowed): only hashes are stored. Keys are long random tokens (``python -m app keys new
NAME``), so one fast hash is enough; the presented key is hashed and compared with every stored hash
by ``hmac.compare_digest``, so timing reveals neither which hash nor how much of it matched.

Which routes need a key: those that carry :data:`API_KEY` among their dependencies, on the route or
on its router, e.g. ``APIRouter(dependencies=[API_KEY])`` or ``@router.post(..., dependencies=[API_KEY])``.
:class:`ApiKeyMiddleware` refuses a request to such a route before its body is read (an unknown
client cannot make the service parse a 10 MB upload); the dependency itself checks again, so a route
keeps its protection even in an app built without the middleware.

The file is re-read when it changes (its size, mtime or inode; one ``stat`` per checked request), so
keys are added and revoked without a restart. A file that cannot be read or parsed at start stops the
service; later, the keys already loaded stay in force and one warning says why. Neither a key nor a
hash is ever logged: only names, counts and line numbers.
"""

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.routing import iter_route_contexts
from starlette.routing import Match

from app.errors import MissingApiKeyError, WrongApiKeyError, send_refusal

logger = logging.getLogger("app.access")
HASH_LINE = re.compile(r"(?P<name>\S+)\s+(?P<hash>[0-9a-fA-F]{64})")
BEARER = re.compile(r"bearer\s+(?P<key>\S+)\s*", re.IGNORECASE)


class KeyFileError(ValueError):
    """API_KEYS_FILE cannot be read, or a line is not ``NAME SHA256HEX``."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A key of 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_line(name: str, key: str) -> str:
    if not name or any(character.isspace() for character in name):
        raise ValueError(f"a key's name is one word without spaces, not {name!r}")
    return f"{name} {key_hash(key)}"


def parse_key_file(text: str, path: Path) -> dict[str, str]:
    """``{sha256 hex: name}``; a malformed line is an error naming its number, never its content."""
    hashes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = HASH_LINE.fullmatch(line)
        if match is None:
            raise KeyFileError(f"API_KEYS_FILE {path} line {number} is not 'NAME SHA256HEX' (a name, a space and "
                               "the 64 hex digits of the key's SHA-256); `python -m app keys new NAME` prints one.")
        hashes[match["hash"].lower()] = match["name"]
    return hashes


def presented_key(headers: Any) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` first, else ``X-API-Key: KEY``."""
    authorization = headers.get("authorization")
    if authorization:
        match = BEARER.fullmatch(authorization.strip())
        if match:
            return match["key"]
    key = (headers.get("x-api-key") or "").strip()
    return key or None


@dataclass
class _Loaded:
    signature: tuple[int, int, int]
    hashes: dict[str, str]


class ApiKeys:
    """The keys of API_KEYS_FILE, or none at all (``path`` None: every request is let through)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._loaded: _Loaded | None = None
        self._bad_signature: tuple[int, int, int] | None = None  # a change already warned about

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> None:
        """Read the file at start: any problem is a KeyFileError (the service does not start)."""
        if self.path is None:
            return
        self._loaded = self._read()
        names = sorted(set(self._loaded.hashes.values()))
        logger.info("API keys required on the prediction routes: %d key(s) from %s (%s)", len(self._loaded.hashes),
                    self.path, ", ".join(names) or "none: every request will be refused")

    def _signature(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self) -> _Loaded:
        try:
            signature = self._signature()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
            raise KeyFileError(f"cannot read API_KEYS_FILE {self.path}: {reason}") from None
        return _Loaded(signature, parse_key_file(text, self.path))

    def _refresh(self) -> dict[str, str]:
        """The hashes in force, re-read first if the file changed since."""
        assert self._loaded is not None, "ApiKeys.load() runs at startup"
        try:
            signature = self._signature()
        except OSError as error:
            signature = (-1, -1, error.errno or -1)
        if signature in (self._loaded.signature, self._bad_signature):
            return self._loaded.hashes
        try:
            self._loaded = self._read()
        except KeyFileError as error:
            self._bad_signature = signature
            logger.warning("%s; the %d key(s) loaded before stay in force", error, len(self._loaded.hashes))
        else:
            self._bad_signature = None
            logger.info("API_KEYS_FILE changed: %d key(s) now", len(self._loaded.hashes))
        return self._loaded.hashes

    def name_of(self, key: str) -> str | None:
        """The name of ``key`` if it is one of the file's, else None. Every stored hash is compared."""
        presented = key_hash(key)
        found = None
        for stored, name in self._refresh().items():
            if hmac.compare_digest(presented, stored):
                found = name
        return found

    def check(self, headers: Any) -> None:
        """Raise MissingApiKeyError (401) or WrongApiKeyError (403) unless keys are off or one is valid."""
        if self.path is None:
            return
        key = presented_key(headers)
        if key is None:
            raise MissingApiKeyError()
        if self.name_of(key) is None:
            raise WrongApiKeyError()


async def require_api_key(request: Request) -> None:
    # async: a plain function dependency would cost a thread-pool hop on every request
    request.app.state.api_keys.check(request.headers)


API_KEY = Depends(require_api_key)
"""The marker: a route (or router) with this among its dependencies answers only with a valid key."""


def needs_key(route: Any) -> bool:
    """Whether ``route`` (a route, or one of :func:`app_routes`) carries :data:`API_KEY`, on itself, its
    router or the router's inclusion."""
    pending = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while pending:
        dependant = pending.pop()
        if dependant.call is require_api_key:
            return True
        pending.extend(dependant.dependencies)
    return False


# The two ways presented_key reads a key, as OpenAPI names them: /docs then offers "Authorize" for either.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key as 'Authorization: Bearer <key>'."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key in X-API-Key."},
}


def document_keys(document: dict[str, Any], app: Any) -> None:
    """When ``app`` runs with API keys, declare in ``document`` (its OpenAPI) the key schemes and, on each
    operation whose route needs a key, that either is accepted: without this /docs cannot send a key and every
    "Try it out" there is 401. Without keys nothing needs one, and the document says so by saying nothing."""
    if app.state.api_keys.path is None:
        return
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for route in app_routes(app):
        if not needs_key(route):
            continue
        for method in getattr(route, "methods", None) or ():
            operation = document.get("paths", {}).get(route.path, {}).get(method.lower())
            if operation is not None:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]


def app_routes(app: Any) -> list[Any]:
    """Every route of ``app`` as the router matches it: FastAPI keeps an included router whole (its routes
    combined with the inclusion's prefix and dependencies on demand), so ``app.routes`` alone would miss them."""
    return list(iter_route_contexts(app.routes))


class ApiKeyMiddleware:
    """Refuses a request to a route that needs a key before the route reads its body: 401 or 403 with the
    service's JSON error, the route recorded in the scope so that the request metrics name it."""

    def __init__(self, app: Any, keys: ApiKeys) -> None:
        self.app, self.keys = app, keys
        self._protected: list[Any] | None = None  # the app's routes that need a key, found on the first request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        if self._protected is None:
            self._protected = [route for route in app_routes(scope["app"]) if needs_key(route)]
        route = next((route for route in self._protected if route.matches(scope)[0] is Match.FULL), None)
        if route is not None:
            try:
                self.keys.check(_Headers(scope["headers"]))
            except (MissingApiKeyError, WrongApiKeyError) as error:
                scope["route"] = route.original_route
                await send_refusal(scope, receive, send, error)
                return
        await self.app(scope, receive, send)


class _Headers:
    """Case-insensitive look-up in raw ASGI headers, without building Starlette's Headers per request."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str) -> str | None:
        wanted = name.encode()
        for key, value in self.raw:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None
