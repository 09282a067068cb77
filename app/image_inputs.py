"""What both serving protocols turn a request into: images for ClassifierService, checked before any allocation.

A request carries either raw pixels (a uint8 tensor ``[n, 32, 32, 3]``, as JSON numbers or as bytes) or
encoded image files (JPEG, PNG, ...: the bytes /predict takes, decoded by the same function). Every size is
checked against the limits before an array is made from it: the image count against MAX_BATCH_FILES, the
shape against the model's, a byte count against the shape.
"""

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from app.errors import BadRequestError, TooManyImagesError
from app.settings import Settings
from core.contract import CHANNELS, IMAGE_SIZE

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
PIXELS_PER_IMAGE = math.prod(IMAGE_SHAPE)
SHAPE_TEXT = f"[n, {IMAGE_SIZE}, {IMAGE_SIZE}, {CHANNELS}]"
# No request of either protocol nests deeper than a batch of images ([n][32][32][3]) in its envelope.
MAX_JSON_DEPTH = 10
ENVELOPE_VALUES = 4096  # names, shapes, parameters... beside the pixels


@dataclass(frozen=True)
class ImageInputs:
    """One request's images: ``pixels`` uint8 ``(n, 32, 32, 3)``, or ``files`` (encoded images, in order)."""

    pixels: np.ndarray | None = None
    files: list[bytes] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.files)


@dataclass(frozen=True)
class Limits:
    max_images: int
    max_json_values: int
    max_json_depth: int = MAX_JSON_DEPTH

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        # Enough values for the largest batch of images as JSON numbers, and the envelope around them.
        return cls(settings.max_batch_files, settings.max_batch_files * PIXELS_PER_IMAGE + ENVELOPE_VALUES)


def check_count(count: int, limits: Limits) -> None:
    if count < 1:
        raise BadRequestError("The request holds no image: send at least one.")
    if count > limits.max_images:
        raise TooManyImagesError(count, limits.max_images)


def check_pixel_shape(shape: list[int], limits: Limits) -> int:
    """The image count of a uint8 tensor's declared ``shape``, which must be ``[n, 32, 32, 3]``."""
    if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise BadRequestError(f"The tensor's shape is {shape}; this model takes {SHAPE_TEXT} (n images of "
                              f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB pixels), or encoded image files.")
    check_count(shape[0], limits)
    return shape[0]


def pixels_from_bytes(data: bytes | memoryview, shape: list[int], limits: Limits) -> np.ndarray:
    """A uint8 tensor of ``shape`` from its raw bytes (row-major), without copying them."""
    count = check_pixel_shape(shape, limits)
    expected = count * PIXELS_PER_IMAGE
    if len(data) != expected:
        raise BadRequestError(f"The tensor's shape {shape} needs {expected:,} bytes of UINT8 data; "
                              f"{len(data):,} were sent.")
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *IMAGE_SHAPE)


def pixels_from_json(data: Any, shape: list[int] | None, limits: Limits) -> np.ndarray:
    """A uint8 tensor from JSON numbers: nested ``[n][32][32][3]``, or flat in row-major order when ``shape``
    says how to fold them. The count of values is bounded before this by the JSON limits."""
    if not isinstance(data, list):
        raise BadRequestError(f"The image data must be a JSON array of numbers from 0 to 255, {SHAPE_TEXT}.")
    if shape is not None:
        check_pixel_shape(shape, limits)
    else:
        check_count(len(data), limits)
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting, or arrays beside numbers
        raise BadRequestError(f"The image data is not a regular array: send {SHAPE_TEXT} numbers from 0 to "
                              "255, nested or flat.") from None
    if values.dtype.kind not in "iu" or values.size == 0:
        what = "no numbers" if values.size == 0 else {
            "f": "fractional numbers", "b": "true/false", "U": "strings"}.get(values.dtype.kind, "mixed values")
        raise BadRequestError(f"The image data holds {what}; UINT8 pixels are whole numbers from 0 to 255.")
    if values.min() < 0 or values.max() > 255:
        raise BadRequestError(f"A pixel value is out of range ({int(values.min())} to {int(values.max())}); "
                              "UINT8 pixels are 0 to 255.")
    target = tuple(shape) if shape is not None else (len(data), *IMAGE_SHAPE)
    if values.shape != target:
        if shape is None:
            raise BadRequestError(f"The image data has shape {list(values.shape)}; want {SHAPE_TEXT}.")
        if values.size != math.prod(target):
            raise BadRequestError(f"The tensor's shape {list(target)} needs {math.prod(target):,} values; its "
                                  f"data holds {values.size:,}.")
        values = values.reshape(target)  # flat, in row-major order: the protocol's own form
    return values.astype(np.uint8)


def b64_file(value: Any, where: str) -> bytes:
    """The bytes of an encoded image sent as base64 text (``where`` names it in the error)."""
    if not isinstance(value, str):
        raise BadRequestError(f"{where} must be a base64 string of an image file.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{where} is not valid base64: send the image file's bytes base64-encoded.") from None


async def request_body(request: Request) -> bytes:
    """The whole body (the middleware caps its size and read time); compressed bodies are refused, since
    inflating one would escape that cap."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise BadRequestError(f"Content-Encoding {encoding} is not accepted: send the body uncompressed.", status=415)
    return await request.body()
