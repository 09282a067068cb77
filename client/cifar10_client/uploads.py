"""What can be uploaded: a path, bytes, or a file opened in binary mode. Each is read once, whole
(the service takes at most a few MiB), so a retry sends exactly the same bytes again."""

import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cifar10_client.errors import UnreadableFile

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
UNNAMED = "image"


@dataclass(frozen=True)
class Upload:
    filename: str
    content: bytes
    media_type: str


def sendable_name(name: str) -> str:
    """A file name as a multipart header can carry it: a name whose bytes are not UTF-8 (os.fsdecode gives
    surrogates for them) has those bytes replaced, where httpx would raise UnicodeEncodeError."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _media_type(filename: str) -> str:
    # The service sniffs the format from the bytes; the declared type is only a courtesy.
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def read_upload(source: Source) -> Upload:
    if isinstance(source, bytes | bytearray | memoryview):
        return Upload(UNNAMED, bytes(source), "application/octet-stream")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            content = path.read_bytes()
        except OSError as error:
            raise UnreadableFile(str(source), error.strerror or str(error)) from error
        return Upload(sendable_name(path.name), content, _media_type(path.name))
    content = source.read()
    if not isinstance(content, bytes):
        raise TypeError("open the file in binary mode ('rb'): a text-mode file cannot carry an image")
    name = getattr(source, "name", None)
    filename = Path(name).name if isinstance(name, str) and name else UNNAMED
    return Upload(filename, content, _media_type(filename))


def describe(source: Source) -> str:
    """How a source is named in results and messages: the path as given, else the file's name."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and name else "<file>"
