"""Every error the service returns, mapped to HTTP in this one place: JSON ``{"detail": "..."}``, or
``{"error": "..."}`` on the serving protocols' routes (``/v2``: the Open Inference Protocol, ``/v1/``:
TensorFlow Serving's REST API), which is the form their clients read.

Route errors reach the exception handlers below; the middleware that refuses a request before any
route runs (headers or declared body too large) answers with :func:`send_refusal`, the same body.
"""

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.batching import AnswerTimeoutError, BatcherFailedError, QueueFullError
from core.level_table import UnknownLevelError
from core.preprocessing import ImageError

logger = logging.getLogger("app.errors")
RETRY_AFTER_SECONDS = "1"
MULTIPART_HINT = ("Send multipart/form-data with the image in a part named 'file' (/predict, /explain) or in "
                  "repeated parts named 'files' (/predict/batch); each part's headers, file name included, must stay "
                  "under 4 KB.")

IMAGE_ERROR_STATUS = {
    "empty": 400,
    "undecodable": 400,
    "unsupported": 415,
    "too_large": 413,
}


class NotReadyError(RuntimeError):
    """The model is still warming up."""


class ExplainBusyError(RuntimeError):
    """MAX_CONCURRENT_EXPLANATIONS explanations are already being computed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} explanations are being computed, the most this server runs at once "
                         "(MAX_CONCURRENT_EXPLANATIONS); retry in a second. /predict is not limited by this.")

class TooManyImagesError(ValueError):
    """More images in one protocol request than MAX_BATCH_FILES allows."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} images were sent in one request; this server takes at most {limit} "
                         "(MAX_BATCH_FILES). Split them into several requests.")


class BadRequestError(ValueError):
    """A protocol request body the server cannot use (malformed JSON, a tensor off the model's contract...):
    400, or ``status`` when another 4xx says it better (413 for a body that holds too much)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelNotServedError(LookupError):
    """A protocol request named a model or version this server does not serve (404, naming what it serves)."""

class TooManyFilesError(ValueError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} files were sent; /predict/batch takes at most {limit}. Split them "
                         "into several requests.")


class DuplicateFileError(ValueError):
    def __init__(self, field: str, count: int) -> None:
        super().__init__(f"{count} parts named '{field}' were sent; /predict and /explain take exactly one image. "
                         "Send one part, or send several images to /predict/batch as repeated 'files' parts.")


class MalformedUploadError(StarletteHTTPException):
    """A multipart body the parser cannot read (app.uploads): 400, and the handler adds what a valid upload
    looks like."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


# The request-level limits are HTTPExceptions because they are raised from inside the body stream, whoever
# reads it: the middleware that refuses a request before any route runs answers them with send_refusal.
class BodyTooLargeError(StarletteHTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is over the limit of {size_in_words(max_bytes)}. Send a smaller "
                         "image: scale it down or save it as JPEG (the model sees 32x32 pixels).")


class BodyTimeoutError(StarletteHTTPException):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"The request body did not arrive within {timeout_s:g} s. "
                         "Send it faster or send a smaller file.")


class HeadersTooLargeError(StarletteHTTPException):
    def __init__(self, header_bytes: int, max_bytes: int) -> None:
        super().__init__(431, f"The request headers are {size_in_words(header_bytes)}, over the limit of "
                         f"{size_in_words(max_bytes)}. Send fewer or shorter headers (cookies included).")


# API keys (app/access.py): HTTPExceptions too, so the middleware that checks them before a route runs
# answers with send_refusal, and the route's own check with the handler below, the same JSON either way.
AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="cifar10"'}


class MissingApiKeyError(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(401, "This route needs an API key. Send it as 'Authorization: Bearer <key>' or "
                         "'X-API-Key: <key>'; the service's operator hands out keys.", headers=AUTHENTICATE)


class WrongApiKeyError(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(403, "The API key was not accepted: it is not one of this service's keys, or it was "
                         "revoked. Check it for typos or ask the service's operator for a new one.")


def size_in_words(size: int) -> str:
    """``10 MB (10,485,760 bytes)``: the round figure a person reads, and the exact one (MB = 1024 x 1024)."""
    if size >= 1024 * 1024:
        rounded = f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"
    elif size >= 1024:
        rounded = f"{size / 1024:.1f}".removesuffix(".0") + " KB"
    else:
        return f"{size:,} bytes"
    return f"{rounded} ({size:,} bytes)"


def method_hint(request: Request) -> str | None:
    """For a 405: which method the route takes and, on an upload route, its multipart fields (from the
    route's request body in the OpenAPI document)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    allowed = " or ".join(sorted(route.methods))
    refused = f"{request.method} is not allowed on {route.path}"
    fields = upload_fields(request.app.openapi(), route)
    if not fields:
        return f"{refused}; it answers {allowed}."
    described = [f"'{name}'" + (" (one part per image)" if repeated else "") for name, repeated in fields]
    return (f"{refused}. Send {allowed} with multipart/form-data, the image in the form field "
            f"{' and '.join(described)}, as in: curl -F {fields[0][0]}=@cat.jpg <this server>{route.path}")


def upload_fields(document: dict[str, Any], route: APIRoute) -> list[tuple[str, bool]]:
    """The multipart fields ``route`` takes, as ``document`` describes them: (name, one part per item)."""
    for method in sorted(route.methods):
        operation = document.get("paths", {}).get(route.path, {}).get(method.lower(), {})
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form is None:
            continue
        schema = form["schema"]
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return [(name, prop.get("type") == "array") for name, prop in schema.get("properties", {}).items()]
    return []


def image_error_status(error: ImageError) -> int:
    return IMAGE_ERROR_STATUS.get(error.kind, 400)


# The serving protocols' routes: their clients read errors as {"error": "..."} (both protocols say so).
PROTOCOL_PATHS = ("/v2", "/v1/")


def is_protocol_path(path: str) -> bool:
    return path == PROTOCOL_PATHS[0] or path.startswith((PROTOCOL_PATHS[0] + "/", PROTOCOL_PATHS[1]))


def _json(status: int, detail: str, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    key = "error" if is_protocol_path(path) else "detail"
    return JSONResponse({key: detail}, status_code=status, headers=headers)


async def send_refusal(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]], error: StarletteHTTPException) -> None:
    """Answer ``error`` from ASGI middleware, before any route has run: the handlers' JSON body, and
    ``Connection: close`` because the request body was never read."""
    response = _json(error.status_code, str(error.detail), {**(error.headers or {}), "Connection": "close"},
                     scope.get("path", ""))
    await response(scope, receive, send)


def _describe_validation(error: RequestValidationError) -> str:
    messages = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part not in ("body", "query")]
        field = ".".join(location) or "request"
        if item.get("type") == "missing":
            messages.append(f"Missing form field '{field}': send the image as multipart/form-data in a part "
                            f"named '{field}'.")
        else:
            messages.append(f"Invalid '{field}': {item.get('msg', 'invalid value')}.")
    return " ".join(messages) or "The request is not valid."


def install_error_handlers(app: FastAPI) -> None:
    def answer(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return _json(status, detail, headers, request.url.path)

    @app.exception_handler(ImageError)
    async def image_error(request: Request, error: ImageError) -> JSONResponse:
        return answer(request, image_error_status(error), error.message)

    @app.exception_handler(TooManyFilesError)
    async def too_many_files(request: Request, error: TooManyFilesError) -> JSONResponse:
        return answer(request, 413, str(error))

    @app.exception_handler(TooManyImagesError)
    async def too_many_images(request: Request, error: TooManyImagesError) -> JSONResponse:
        return answer(request, 413, str(error))

    @app.exception_handler(BadRequestError)
    async def bad_request(request: Request, error: BadRequestError) -> JSONResponse:
        return answer(request, error.status, str(error))

    @app.exception_handler(ModelNotServedError)
    async def model_not_served(request: Request, error: ModelNotServedError) -> JSONResponse:
        return answer(request, 404, str(error))

    @app.exception_handler(UnknownLevelError)
    async def unknown_level(request: Request, error: UnknownLevelError) -> JSONResponse:
        return answer(request, 422, str(error))

    @app.exception_handler(DuplicateFileError)
    async def duplicate_file(request: Request, error: DuplicateFileError) -> JSONResponse:
        return answer(request, 422, str(error))

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        return answer(request, 503, f"The server is at capacity ({error}); retry in a second.",
                      {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(ExplainBusyError)
    async def explain_busy(request: Request, error: ExplainBusyError) -> JSONResponse:
        return answer(request, 503, str(error), {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(BatcherFailedError)
    async def batcher_failed(request: Request, error: BatcherFailedError) -> JSONResponse:
        return answer(request, 503, f"The server could not compute this answer: {error}; retry in a second.",
                      {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(AnswerTimeoutError)
    async def answer_timeout(request: Request, error: AnswerTimeoutError) -> JSONResponse:
        return answer(request, 504, f"The server is too slow right now: {error}. Retry later, or ask for a "
                      "cheaper level (?level=fast).")

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, error: NotReadyError) -> JSONResponse:
        return answer(request, 503, "The model is still warming up; retry in a second.",
                      {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return answer(request, 422, _describe_validation(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else "The request could not be processed."
        if error.status_code == 405:
            detail = method_hint(request) or detail
        if error.status_code == 400 and request.headers.get("content-type", "").startswith("multipart/"):
            # Starlette's multipart parser says what broke but not what a valid upload looks like.
            detail = f"{detail.rstrip('.')}. {MULTIPART_HINT}"
        return answer(request, error.status_code, detail, dict(error.headers) if error.headers else None)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> JSONResponse:
        # The client's doing (a dropped connection), not a fault of ours: one line, no traceback, and a 499, as
        # nginx logs it, so the 5xx rate that pages someone does not count it. Nobody is left to read the body.
        logger.info("%s %s: the client hung up before sending the whole body", request.method, request.url.path)
        return answer(request, 499, "The client closed the connection before sending the whole body.")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # A fault of ours, never of the client's input: log it whole, tell the client nothing internal.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(request, 500, "Internal server error.")
