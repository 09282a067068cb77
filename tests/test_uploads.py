"""app.uploads in process: multipart bodies read by python-multipart's parser into the files of one field,
with the refusals Starlette's form gave, and the OpenAPI body FastAPI would have written for File()."""

import asyncio
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, File, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.requests import Request

from app.errors import DuplicateFileError, MalformedUploadError
from app.openapi import operation_id
from app.uploads import BATCH_FORM, EXPLAIN_FORM, MAX_FIELDS, MAX_FILES, PREDICT_FORM, UploadedFile, UploadForm
from tests import hostile_files as files


def request(body: bytes, content_type: str | None, chunk_size: int | None = None) -> Request:
    """A Starlette request whose body arrives in ``chunk_size`` pieces (all at once by default)."""
    size = chunk_size or max(len(body), 1)
    pieces = [body[start:start + size] for start in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
                for index, piece in enumerate(pieces)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "path": "/predict", "headers": headers}, receive)


def read(form: UploadForm, body: bytes, content_type: str | None, chunk_size: int | None = None
         ) -> list[UploadedFile]:
    return asyncio.run(form.read(request(body, content_type, chunk_size)))


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_the_files_of_the_field_in_order_whatever_the_chunking(chunk_size: int | None) -> None:
    body, content_type = files.multipart([
        ("note", None, b"a plain field"), ("files", "a.png", b"first\r\n--not-the-boundary"),
        ("other", "x.png", b"skipped"), ("files", "été.png", b""), ("files", "c.png", b"third")])
    assert read(BATCH_FORM, body, content_type, chunk_size) == [
        UploadedFile("a.png", b"first\r\n--not-the-boundary"), UploadedFile("été.png", b""),
        UploadedFile("c.png", b"third")]


def test_a_file_name_that_is_no_utf8_is_read_as_latin1() -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9.png"\r\n\r\nxyz\r\n--b--\r\n')
    assert read(PREDICT_FORM, body, "multipart/form-data; boundary=b") == [UploadedFile("café.png", b"xyz")]


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"file": "aGVsbG8="}', "application/json"),
    (b"file=x", "application/x-www-form-urlencoded"),
    (b"\x89PNG", "image/png"),
    (b"", None),
    (files.multipart([("image", "a.png", b"data")])[0], files.multipart([])[1]),
    (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nunterminated',
     "multipart/form-data; boundary=b"),
], ids=["json", "urlencoded", "raw_image", "no_content_type", "other_field", "unterminated_part"])
def test_a_body_without_the_field_is_a_missing_field(body: bytes, content_type: str | None) -> None:
    with pytest.raises(RequestValidationError) as raised:
        read(PREDICT_FORM, body, content_type)
    assert raised.value.errors() == [{"type": "missing", "loc": ("body", "file"), "input": None,
                                      "msg": "Field required"}]


def test_a_plain_field_in_place_of_the_file_is_invalid() -> None:
    body, content_type = files.multipart([("file", None, b"not a file part")])
    with pytest.raises(RequestValidationError) as raised:
        read(PREDICT_FORM, body, content_type)
    assert raised.value.errors()[0]["type"] == "value_error"
    assert "received a plain form field" in raised.value.errors()[0]["msg"]


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"--x\r\n\r\n", "multipart/form-data", "Missing boundary in multipart."),
    (files.multipart([("file", "a.png", b"data")])[0], "multipart/form-data; boundary=other",
     "Invalid multipart data."),
    (b'--b\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\ndata\r\n--b--\r\n',
     "multipart/form-data; boundary=b", 'The Content-Disposition header field "name" must be provided.'),
    (files.multipart([("file", "é" * 5_000 + ".png", b"data")])[0], files.multipart([])[1],
     "Invalid multipart data."),
    (files.multipart([("files", "a.png", b"x")] * (MAX_FILES + 1))[0], files.multipart([])[1],
     f"Too many files. Maximum number of files is {MAX_FILES}."),
    (files.multipart([("note", None, b"x")] * (MAX_FIELDS + 1))[0], files.multipart([])[1],
     f"Too many fields. Maximum number of fields is {MAX_FIELDS}."),
], ids=["no_boundary", "wrong_boundary", "part_without_name", "part_header_over_4kb", "too_many_files",
        "too_many_fields"])
def test_a_malformed_body_is_refused_with_starlettes_message(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(MalformedUploadError) as raised:
        read(BATCH_FORM, body, content_type)
    assert (raised.value.status_code, raised.value.detail) == (400, message)


def test_a_single_image_form_takes_exactly_one_part() -> None:
    one, content_type = files.multipart([("file", "a.png", b"one")])
    assert asyncio.run(EXPLAIN_FORM.read_one(request(one, content_type))) == UploadedFile("a.png", b"one")
    two, content_type = files.multipart([("file", "a.png", b"one"), ("file", "b.png", b"two")])
    with pytest.raises(DuplicateFileError, match="2 parts named 'file'"):
        asyncio.run(EXPLAIN_FORM.read_one(request(two, content_type)))


def test_each_form_is_documented_as_fastapi_documents_file_parameters() -> None:
    """The component a route with File() gets from FastAPI, plus ``format: binary`` (app.openapi): what
    client generators already built from this service's document keeps working."""
    reference = FastAPI(generate_unique_id_function=operation_id)
    for form in (PREDICT_FORM, EXPLAIN_FORM, BATCH_FORM):
        annotation = list[UploadFile] if form.repeated else UploadFile
        name = form.component.removeprefix("Body_")

        async def endpoint(upload: Annotated[annotation, File(alias=form.field, description=form.description)]
                           ) -> None: ...

        endpoint.__name__ = name
        reference.post(f"/{name}")(endpoint)
    written = reference.openapi()["components"]["schemas"]
    for form in (PREDICT_FORM, EXPLAIN_FORM, BATCH_FORM):
        expected = written[form.component]
        field = expected["properties"][form.field]
        (field["items"] if form.repeated else field)["format"] = "binary"
        field["title"] = form.field.title()  # FastAPI titles an aliased field by the parameter's name
        assert form.schema() == expected
