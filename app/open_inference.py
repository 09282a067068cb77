"""The Open Inference Protocol (KServe v2) over HTTP: request bodies in, images out; answers in, bodies out.

The model has one input, ``images``: ``UINT8 [n, 32, 32, 3]`` pixels, or ``BYTES [n]`` encoded image files
(JPEG, PNG, ...: decoded as /predict decodes an upload). Its outputs are ``probabilities`` ``FP32 [n, 10]``
(CIFAR-10 order) and ``labels`` ``BYTES [n]`` (each image's most probable class); the classification
extension (``"classification": k`` on ``probabilities``) answers the k best as ``"score:index:label"``.
Tensor data travels as JSON or, with the binary tensor data extension, as raw bytes after the JSON header
(``Inference-Header-Content-Length``); BYTES elements are base64 text in JSON and 4-byte little-endian
length-prefixed in binary. The request's ``parameters`` may carry ``level`` (an accuracy level), and
``binary_data_output`` as the extension defines it. The pydantic models below both document the bodies in
/openapi.json and check them (strictly: a number is not a string).
"""

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from app.batching import Answer
from app.errors import BadRequestError
from app.image_inputs import (
    IMAGE_SHAPE,
    ImageInputs,
    Limits,
    b64_file,
    check_count,
    pixels_from_bytes,
    pixels_from_json,
)
from app.json_body import parse_json
from core.contract import CLASS_NAMES, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME

HEADER_LENGTH = "inference-header-content-length"
LABELS_NAME = "labels"
OUTPUT_NAMES = (OUTPUT_NAME, LABELS_NAME)
UINT8, BYTES, FP32 = "UINT8", "BYTES", "FP32"
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "tensorflow_savedmodel"
BINARY_MEDIA_TYPE = "application/octet-stream"
ParameterValue = StrictStr | StrictBool | StrictInt | StrictFloat


class RequestInput(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str = Field(examples=[INPUT_NAME])
    shape: list[int] = Field(examples=[[1, *IMAGE_SHAPE]])
    datatype: str = Field(description=f"`{UINT8}` (pixels, shape [n, 32, 32, 3]) or `{BYTES}` (encoded image "
                          "files, shape [n]).", examples=[UINT8])
    parameters: dict[str, ParameterValue] | None = Field(
        None, description="`binary_data_size`: the byte count of this tensor's data after the JSON header.")
    data: list[Any] | None = Field(None, description="Row-major, flat or nested; BYTES elements are base64. "
                                   "Absent when the data follows the JSON header (binary_data_size).")


class RequestOutput(BaseModel):
    model_config = ConfigDict(strict=True)
    name: str = Field(examples=[OUTPUT_NAME])
    parameters: dict[str, ParameterValue] | None = Field(
        None, description="`binary_data` (bool), `classification` (k: the k best classes as BYTES).")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(strict=True)
    id: str | None = None
    parameters: dict[str, ParameterValue] | None = Field(
        None, description="`level`: fast, balanced or accurate (default: the server's); `binary_data_output`.")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="Omitted: every output.")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, ParameterValue] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str = Field(examples=["cifar10"])
    model_version: str | None = Field(None, description="The version that computed the answer.")
    id: str | None = None
    parameters: dict[str, ParameterValue] | None = Field(None, description="`level`: the level that answered.")
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str = Field(examples=["cifar10"])
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, ParameterValue] | None = None


@dataclass(frozen=True)
class WantedOutput:
    name: str
    binary: bool
    classification: int = 0  # k > 0: the k best classes as "score:index:label" strings


@dataclass(frozen=True)
class InferCall:
    """A checked infer request: its images, the level it asks for and the outputs it wants."""

    id: str | None
    inputs: ImageInputs
    level: str | None
    outputs: tuple[WantedOutput, ...]


def model_metadata(name: str, version: int, levels: tuple[str, ...], default_level: str) -> ModelMetadata:
    return ModelMetadata(
        name=name, versions=[str(version)], platform=PLATFORM,
        inputs=[TensorMetadata(name=INPUT_NAME, datatype=UINT8, shape=[-1, *IMAGE_SHAPE])],
        outputs=[TensorMetadata(name=OUTPUT_NAME, datatype=FP32, shape=[-1, NUM_CLASSES]),
                 TensorMetadata(name=LABELS_NAME, datatype=BYTES, shape=[-1])],
        # Not in the protocol, which lets a server add parameters: what a request's parameters.level may name.
        parameters={"levels": ",".join(levels), "default_level": default_level,
                    "also_accepts": f"{INPUT_NAME} as {BYTES} [-1]: encoded image files"},
    )


def read_infer_request(body: bytes, header_length: str | None, limits: Limits) -> InferCall:
    """Parse and check an infer request body; every fault is a BadRequestError (or TooManyImagesError)."""
    header, binary = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate(parse_json(header, limits.max_json_values, limits.max_json_depth))
    except ValidationError as error:
        raise BadRequestError(f"The inference request is not valid: {describe(error)}.") from None
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = ", ".join(repr(tensor.name) for tensor in request.inputs)
        raise BadRequestError(f"The request's inputs are {names}; this model takes one input, '{INPUT_NAME}'.")
    tensor = request.inputs[0]
    data = binary_data(tensor, binary)
    if tensor.datatype == UINT8:
        pixels = (pixels_from_bytes(data, tensor.shape, limits) if data is not None
                  else pixels_from_json(tensor.data, tensor.shape, limits))
        inputs = ImageInputs(pixels=pixels)
    elif tensor.datatype == BYTES:
        inputs = ImageInputs(files=encoded_files(tensor, data, limits))
    else:
        raise BadRequestError(f"Input '{INPUT_NAME}' has datatype {tensor.datatype}; this model takes {UINT8} "
                              f"pixels, shape [n, {', '.join(map(str, IMAGE_SHAPE))}], or {BYTES} (encoded image "
                              "files), shape [n].")
    parameters = request.parameters or {}
    level = parameters.get("level")
    if level is not None and not isinstance(level, str):
        raise BadRequestError("Parameter 'level' must be a string: fast, balanced or accurate.")
    return InferCall(request.id, inputs, level, wanted_outputs(request, parameters))


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (binary tensor data extension)."""
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses (the header arrives as latin-1).
    if not (header_length.strip().isascii() and header_length.strip().isdigit()):
        raise BadRequestError(f"Inference-Header-Content-Length is {header_length!r}; it must be the JSON "
                              "header's length in bytes.")
    length = int(header_length)
    if length > len(body):
        raise BadRequestError(f"Inference-Header-Content-Length is {length:,}, past the end of the body "
                              f"({len(body):,} bytes).")
    return body[:length], memoryview(body)[length:]


def binary_data(tensor: RequestInput, binary: memoryview) -> memoryview | None:
    """The tensor's bytes after the JSON header, when its parameters say it has some; None when in JSON."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if len(binary):
            raise BadRequestError(f"{len(binary):,} bytes follow the JSON header, but no input declares "
                                  "binary_data_size.")
        if tensor.data is None:
            raise BadRequestError(f"Input '{tensor.name}' has no data: send 'data', or binary data with "
                                  "parameters.binary_data_size.")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError("binary_data_size must be a whole number of bytes.")
    if tensor.data is not None:
        raise BadRequestError(f"Input '{tensor.name}' has both 'data' and binary_data_size: send one.")
    if size != len(binary):
        raise BadRequestError(f"Input '{tensor.name}' declares binary_data_size {size:,}, but {len(binary):,} "
                              "bytes follow the JSON header (Inference-Header-Content-Length).")
    return binary


def encoded_files(tensor: RequestInput, data: memoryview | None, limits: Limits) -> list[bytes]:
    """A BYTES tensor ``[n]``: the n encoded image files, from binary data or base64 JSON strings."""
    if len(tensor.shape) != 1:
        raise BadRequestError(f"A {BYTES} input holds encoded image files, shape [n]; its shape is {tensor.shape}.")
    count = tensor.shape[0]
    check_count(count, limits)
    if data is None:
        values = tensor.data or []
        if len(values) != count:
            raise BadRequestError(f"Shape [{count}] says {count} images, but 'data' holds {len(values)} values.")
        return [b64_file(value, f"Element {index} of '{tensor.name}'") for index, value in enumerate(values)]
    files, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise BadRequestError(f"The {BYTES} data ends inside an element's 4-byte length prefix.")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if size > len(data) - offset:
            raise BadRequestError(f"A {BYTES} element says it is {size:,} bytes long, but only "
                                  f"{len(data) - offset:,} remain.")
        files.append(bytes(data[offset:offset + size]))
        offset += size
        if len(files) > count:
            break
    if len(files) != count:
        raise BadRequestError(f"Shape [{count}] says {count} images, but the binary data holds "
                              f"{'more' if len(files) > count else len(files)}.")
    return files


def wanted_outputs(request: InferenceRequest, parameters: dict[str, Any]) -> tuple[WantedOutput, ...]:
    binary_default = parameters.get("binary_data_output", False) is True
    if request.outputs is None:
        return tuple(WantedOutput(name, binary_default) for name in OUTPUT_NAMES)
    wanted = []
    for output in request.outputs:
        if output.name not in OUTPUT_NAMES:
            raise BadRequestError(f"Unknown output {output.name!r}: this model has "
                                  f"{', '.join(repr(name) for name in OUTPUT_NAMES)}.")
        options = output.parameters or {}
        classification = options.get("classification", 0)  # 0: the probabilities themselves
        # The type first: "" is falsy too, and must be refused rather than read as 0.
        if (not isinstance(classification, int) or isinstance(classification, bool)
                or not 0 <= classification <= NUM_CLASSES or (classification and output.name != OUTPUT_NAME)):
            raise BadRequestError(f"classification applies to '{OUTPUT_NAME}' and takes 1 to {NUM_CLASSES}.")
        wanted.append(WantedOutput(output.name, options.get("binary_data", binary_default) is True, classification))
    return tuple(wanted)


def infer_response(call: InferCall, answer: Answer) -> tuple[bytes, dict[str, str], str]:
    """Body, headers and media type of the answer: JSON, or JSON then binary tensors (with the header)."""
    probabilities = np.ascontiguousarray(answer.probabilities[:, :NUM_CLASSES], dtype="<f4")
    count = len(probabilities)
    outputs, chunks = [], []
    for wanted in call.outputs:
        if wanted.classification:
            best = np.argsort(-probabilities, axis=1, kind="stable")[:, :wanted.classification]
            values: list[Any] = [f"{probabilities[row, i]:f}:{i}:{CLASS_NAMES[i]}" for row in range(count)
                                 for i in best[row]]
            datatype, shape = BYTES, [count, wanted.classification]
        elif wanted.name == OUTPUT_NAME:
            values, datatype, shape = probabilities, FP32, [count, NUM_CLASSES]
        else:
            values = [CLASS_NAMES[i] for i in np.argmax(probabilities, axis=1)]
            datatype, shape = BYTES, [count]
        output: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": shape}
        if wanted.binary:
            chunk = values.tobytes() if datatype == FP32 else b"".join(
                struct.pack("<I", len(text)) + text for text in (value.encode() for value in values))
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output["data"] = values.ravel().tolist() if datatype == FP32 else values
        outputs.append(output)
    response: dict[str, Any] = {"model_name": answer.model.name, "model_version": str(answer.model.version)}
    if call.id is not None:
        response["id"] = call.id
    response["parameters"] = {"level": answer.level}
    response["outputs"] = outputs
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, {}, "application/json"
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}, BINARY_MEDIA_TYPE


def describe(error: ValidationError) -> str:
    """pydantic's first few complaints as one line: where, and what was wrong."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg'].lower()}")
    return "; ".join(parts)
