"""Every error the service returns, mapped to HTTP in this one place: JSON ``{"detail": "..."}``."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import QueueFullError
from app.preprocessing import ImageError

logger = logging.getLogger("app.errors")
RETRY_AFTER_SECONDS = "1"
MULTIPART_HINT = ("Send multipart/form-data with the image in a part named 'file' (/predict) or in repeated parts "
                  "named 'files' (/predict/batch); each part's headers, file name included, must stay under 4 KB.")

IMAGE_ERROR_STATUS = {
    "empty": 400,
    "undecodable": 400,
    "unsupported": 415,
    "too_large": 413,
}


class NotReadyError(RuntimeError):
    """The model is still warming up."""


class TooManyFilesError(ValueError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} files were sent; /predict/batch takes at most {limit}. Split them "
                         "into several requests.")


class DuplicateFileError(ValueError):
    def __init__(self, field: str, count: int) -> None:
        super().__init__(f"{count} parts named '{field}' were sent; /predict classifies exactly one image. "
                         "Send one part, or send several images to /predict/batch as repeated 'files' parts.")


def image_error_status(error: ImageError) -> int:
    return IMAGE_ERROR_STATUS.get(error.kind, 400)


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


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
    @app.exception_handler(ImageError)
    async def image_error(request: Request, error: ImageError) -> JSONResponse:
        return _json(image_error_status(error), error.message)

    @app.exception_handler(TooManyFilesError)
    async def too_many_files(request: Request, error: TooManyFilesError) -> JSONResponse:
        return _json(413, str(error))

    @app.exception_handler(DuplicateFileError)
    async def duplicate_file(request: Request, error: DuplicateFileError) -> JSONResponse:
        return _json(422, str(error))

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        return _json(503, f"The server is at capacity ({error}); retry in a second.",
                     {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, error: NotReadyError) -> JSONResponse:
        return _json(503, "The model is still warming up; retry in a second.", {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _json(422, _describe_validation(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else "The request could not be processed."
        if error.status_code == 400 and request.headers.get("content-type", "").startswith("multipart/"):
            # Starlette's multipart parser says what broke but not what a valid upload looks like.
            detail = f"{detail.rstrip('.')}. {MULTIPART_HINT}"
        return _json(error.status_code, detail, dict(error.headers) if error.headers else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # A fault of ours, never of the client's input: log it whole, tell the client nothing internal.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "Internal server error.")
