"""The image files of a multipart upload, read straight from python-multipart's parser.

/predict, /predict/batch and /explain read their images here instead of through FastAPI's ``File()``.
For a small JPEG, Starlette's form wrapper (a spooled temporary file and an ``UploadFile`` for every part)
and FastAPI's validation of the parameter cost about 90 µs of CPU per request, on the event loop: without
them one worker answers a tenth more per second at ``fast`` (docs/runtime.md, "The upload path"). The
parser is the one Starlette uses, with its limits (8 headers of at most 4 KB per part, 1,000 files and
1,000 fields), and a malformed body is refused with the messages Starlette's form gave.

Each route's body is still described in the OpenAPI document, as the component FastAPI would have written
(``Body_predict``...): :class:`UploadForm` is both what a route reads and what the document says it takes.
"""

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import DuplicateFileError, MalformedUploadError
from app.openapi import request_body
from core.preprocessing import ACCEPTED_FORMATS_TEXT

# Starlette's defaults for request.form(): a body of many tiny parts costs the parser, not the model.
MAX_FILES = 1000
MAX_FIELDS = 1000
FORM_MEDIA_TYPE = "multipart/form-data"
UPLOAD_MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class UploadedFile:
    """One file part: its bytes and the file name the client gave (only ever echoed, never used as a path)."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class UploadForm:
    """A multipart body with image files in one field: ``repeated`` for one part per image."""

    component: str  # its schema's name in the OpenAPI document, as FastAPI names a route's form body
    field: str
    description: str
    repeated: bool = False

    @property
    def openapi_extra(self) -> dict[str, Any]:
        """The route's request body, for ``openapi_extra``."""
        return request_body(FORM_MEDIA_TYPE, self.component)

    def schema(self) -> dict[str, Any]:
        """The body's schema: ``format: binary`` for OpenAPI 3.0 readers and client generators,
        ``contentMediaType`` for 3.1 ones (app.openapi)."""
        file = {"type": "string", "format": "binary", "contentMediaType": UPLOAD_MEDIA_TYPE}
        value = {"type": "array", "items": file} if self.repeated else file
        return {"type": "object", "title": self.component, "required": [self.field],
                "properties": {self.field: {**value, "title": self.field.title(), "description": self.description}}}

    async def read(self, request: Request) -> list[UploadedFile]:
        """The files sent in :attr:`field`, in order. A body that is no multipart form counts as one without
        the field (422); a malformed one raises MalformedUploadError (400)."""
        media_type, params = parse_options_header(request.headers.get("content-type", ""))
        if media_type != FORM_MEDIA_TYPE.encode():
            raise self.missing()
        if b"boundary" not in params:
            raise MalformedUploadError("Missing boundary in multipart.")
        reader = _FormReader(self.field.encode())
        parser = MultipartParser(params[b"boundary"], reader.callbacks())
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError:
            raise MalformedUploadError("Invalid multipart data.") from None
        if reader.plain_fields_named:
            raise RequestValidationError([{
                "type": "value_error", "loc": ("body", self.field), "input": None,
                "msg": "expected a file part (one with a file name), received a plain form field"}])
        if not reader.files:
            raise self.missing()
        return reader.files

    async def read_one(self, request: Request) -> UploadedFile:
        """The one file of a single-image form; several parts of that name are refused (422), never guessed."""
        files = await self.read(request)
        if len(files) > 1:
            raise DuplicateFileError(self.field, len(files))
        return files[0]

    def missing(self) -> RequestValidationError:
        return RequestValidationError([{"type": "missing", "loc": ("body", self.field), "input": None,
                                        "msg": "Field required"}])


IMAGE_FILE = f"One image: {ACCEPTED_FORMATS_TEXT}."
PREDICT_FORM = UploadForm("Body_predict", "file", IMAGE_FILE)
EXPLAIN_FORM = UploadForm("Body_explain", "file", IMAGE_FILE)
BATCH_FORM = UploadForm("Body_predict_batch", "files", "Images, in the repeated field `files`.", repeated=True)
UPLOAD_FORMS = (PREDICT_FORM, EXPLAIN_FORM, BATCH_FORM)


def _decoded(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _FormReader:
    """python-multipart's callbacks for one body: keeps the file parts named ``field``, counts the rest."""

    def __init__(self, field: bytes) -> None:
        self.field = field
        self.files: list[UploadedFile] = []
        self.plain_fields_named = 0
        self.file_count = self.field_count = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._keep: bool = False
        self._filename: str | None = None
        self._chunks: list[bytes] = []

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self._disposition, self._keep, self._filename, self._chunks = b"", False, None, []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MalformedUploadError('The Content-Disposition header field "name" must be provided.')
        is_file = b"filename" in options
        if is_file:
            self.file_count += 1
            if self.file_count > MAX_FILES:
                raise MalformedUploadError(f"Too many files. Maximum number of files is {MAX_FILES}.")
        else:
            self.field_count += 1
            if self.field_count > MAX_FIELDS:
                raise MalformedUploadError(f"Too many fields. Maximum number of fields is {MAX_FIELDS}.")
        if options[b"name"] != self.field:
            return  # another field: its bytes are skipped, not kept
        if is_file:
            self._keep, self._filename = True, _decoded(options[b"filename"])
        else:
            self.plain_fields_named += 1

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep:
            self._chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self._keep:
            self.files.append(UploadedFile(self._filename, b"".join(self._chunks)))
            self._keep, self._chunks = False, []


def upload_schemas() -> dict[str, dict[str, Any]]:
    """Every upload form's schema by component name, for the OpenAPI document (app.openapi)."""
    return {form.component: form.schema() for form in UPLOAD_FORMS}

