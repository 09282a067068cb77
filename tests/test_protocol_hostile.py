"""Hostile bodies on the serving protocols' routes, against a real uvicorn process: each is refused with the
exact 4xx, an ``{"error": ...}`` that says what is wrong, nothing internal, and never a 500; the server's
peak RSS over the whole set stays within 200 MB of idle, and a good request succeeds after them."""

import base64
import gzip
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from tests import hostile_files as files
from tests.servers import RssSampler, Server, rss_bytes

INFER = "/v2/models/cifar10/infer"
PREDICT = "/v1/models/cifar10:predict"
MAX_IMAGES = 32  # MAX_BATCH_FILES, the server's default
LEAKS = re.compile(r"Traceback|File \"|/work/|/usr/|site-packages|\.py\b|0x[0-9a-f]{6,}", re.I)
RSS_HEADROOM_BYTES = 200 * 1024 * 1024


@dataclass
class Case:
    name: str
    status: int
    words: str
    body: bytes | dict[str, Any] | list[Any]
    path: str = INFER
    headers: dict[str, str | bytes] = field(default_factory=dict)
    method: str = "POST"

    def send(self, client: httpx.Client) -> httpx.Response:
        content = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return client.request(self.method, self.path, content=content, headers=self.headers)


def tensor(datatype: str = "UINT8", shape: list[Any] | None = None, data: Any = None, name: str = "images",
           **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [1, 32, 32, 3] if shape is None else shape}
    if data is not None:
        entry["data"] = data
    if parameters:
        entry["parameters"] = parameters
    return entry


def infer(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **extra}


def binary(header: dict[str, Any], data: bytes, header_length: int | str | None = None) -> dict[str, Any]:
    """A binary tensor data extension body: JSON header, then ``data``; the header length as given or true."""
    text = json.dumps(header).encode()
    return {"body": text + data, "headers": {"Inference-Header-Content-Length": str(
        len(text) if header_length is None else header_length)}}


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


PIXELS = [0] * 3072
ONE_IMAGE = bytes(3072)
B64_PNG = base64.b64encode(files.good_png()).decode()
CASES = [
    Case("wrong datatype", 400, "datatype FP32", infer(tensor("FP32", data=[0.5] * 3072))),
    Case("datatype INT64", 400, "datatype INT64", infer(tensor("INT64", data=PIXELS))),
    Case("shape of another model", 400, "shape is [1, 28, 28, 1]", infer(tensor(shape=[1, 28, 28, 1], data=[0] * 784))),
    Case("shape and data disagree", 400, "needs 3,072 values; its data holds 100", infer(tensor(data=[0] * 100))),
    Case("five dimensions", 400, "this model takes [n, 32, 32, 3]",
         infer(tensor(shape=[1, 1, 32, 32, 3], data=PIXELS))),
    Case("negative batch", 400, "no image", infer(tensor(shape=[-1, 32, 32, 3], data=PIXELS))),
    Case("huge shape", 413, f"at most {MAX_IMAGES}", infer(tensor(shape=[10**12, 32, 32, 3], data=PIXELS))),
    Case("huge shape, binary", 413, f"at most {MAX_IMAGES}",
         **binary(infer(tensor(shape=[2**62, 32, 32, 3], binary_data_size=3072)), ONE_IMAGE)),
    Case("huge BYTES shape", 413, f"at most {MAX_IMAGES}", infer(tensor("BYTES", shape=[10**9], data=[B64_PNG]))),
    Case("shape as text", 400, "shape", infer(tensor(shape="1,32,32,3", data=PIXELS))),
    Case("binary byte count off the shape", 400, "needs 6,144 bytes",
         **binary(infer(tensor(shape=[2, 32, 32, 3], binary_data_size=3072)), ONE_IMAGE)),
    Case("binary_data_size past the data", 400, "declares binary_data_size 6,144",
         **binary(infer(tensor(binary_data_size=6144)), ONE_IMAGE)),
    Case("header length past the body", 400, "past the end of the body",
         **binary(infer(tensor(binary_data_size=3072)), ONE_IMAGE, header_length=10**9)),
    Case("header length not a number", 400, "Inference-Header-Content-Length is '-5'",
         **binary(infer(tensor(binary_data_size=3072)), ONE_IMAGE, header_length=-5)),
    # '²' passes str.isdigit() and fails int(): the header arrives as latin-1, so any such byte can be sent.
    Case("header length in superscript digits", 400, "Inference-Header-Content-Length is '²'",
         binary(infer(tensor(binary_data_size=3072)), ONE_IMAGE)["body"],
         headers={"Inference-Header-Content-Length": b"\xb2"}),
    Case("header length inside the JSON", 400, "not valid JSON",
         **binary(infer(tensor(binary_data_size=3072)), ONE_IMAGE, header_length=20)),
    Case("binary bytes nobody declared", 400, "no input declares binary_data_size",
         **binary(infer(tensor(data=PIXELS)), ONE_IMAGE)),
    Case("data and binary both", 400, "both 'data' and binary_data_size",
         **binary(infer(tensor(data=PIXELS, binary_data_size=3072)), ONE_IMAGE)),
    Case("binary_data_size as text", 400, "binary_data_size must be",
         **binary(infer(tensor(binary_data_size="3072")), ONE_IMAGE)),
    Case("BYTES element length past the end", 400, "only 8 remain",
         **binary(infer(tensor("BYTES", shape=[1], binary_data_size=12)), struct.pack("<I", 10**6) + b"\x89PNG....")),
    Case("BYTES count off the shape", 400, "holds 1",
         **binary(infer(tensor("BYTES", shape=[2], binary_data_size=4 + len(files.good_png()))),
                  length_prefixed(files.good_png()))),
    Case("BYTES not base64", 400, "not valid base64", infer(tensor("BYTES", shape=[1], data=["%%% not base64"]))),
    Case("BYTES broken PNG", 400, "could not be read",
         infer(tensor("BYTES", shape=[1], data=[base64.b64encode(files.corrupted_png()).decode()]))),
    Case("BYTES text file", 415, "not an image", infer(tensor("BYTES", shape=[1], data=["aGVsbG8="]))),
    Case("BYTES pixel bomb", 413, "over the limit",
         infer(tensor("BYTES", shape=[1], data=[base64.b64encode(files.png_header_only(100_000, 100_000)).decode()]))),
    Case("pixel out of range", 400, "out of range", infer(tensor(data=[300] * 3072))),
    Case("fractional pixels", 400, "fractional", infer(tensor(data=[0.5] * 3072))),
    Case("ragged pixels", 400, "not a regular array", infer(tensor(data=[[0] * 32, [0] * 31]))),
    Case("deeply nested JSON", 400, "nests", b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    Case("nested under the recursion guard", 400, "nests arrays or objects 203 deep",
         infer(tensor(data=json.loads("[" * 200 + "0" + "]" * 200)))),
    Case("four million values", 413, "values",
         b'{"inputs": [{"name": "images", "data": [' + b"0," * 4_000_000 + b"0]}]}"),
    Case("not JSON", 400, "not valid JSON", b"\x89PNG\r\n\x1a\n binary junk"),
    Case("empty body", 400, "empty", b""),
    Case("JSON array", 400, "not valid", [1, 2, 3]),
    Case("no inputs", 400, "inputs", {"inputs": []}),
    Case("two inputs", 400, "one input, 'images'", infer(tensor(data=PIXELS), tensor(data=PIXELS, name="extra"))),
    Case("input of another name", 400, "'input_1'", infer(tensor(data=PIXELS, name="input_1"))),
    Case("unknown output", 400, "Unknown output 'logits'", infer(tensor(data=PIXELS), outputs=[{"name": "logits"}])),
    Case("classification empty", 400, "classification applies to 'probabilities' and takes 1 to 10",
         infer(tensor(data=PIXELS), outputs=[{"name": "probabilities", "parameters": {"classification": ""}}])),
    Case("unknown level", 422, "'fast'", infer(tensor(data=PIXELS), parameters={"level": "fastest"})),
    Case("level as a number", 400, "'level' must be a string", infer(tensor(data=PIXELS), parameters={"level": 3})),
    Case("gzip body", 415, "Content-Encoding gzip", gzip.compress(json.dumps(infer(tensor(data=PIXELS))).encode()),
         headers={"Content-Encoding": "gzip"}),
    Case("body over the byte limit", 413, "over the limit", b"[" + b"0," * 6_000_000 + b"0]"),
    Case("GET on infer", 405, "POST", b"", method="GET"),
    Case("unknown model", 404, "serves model 'cifar10'", infer(tensor(data=PIXELS)), path="/v2/models/resnet/infer"),
    # TensorFlow Serving's predict
    Case("tfs both forms", 400, "not both", {"instances": [B64_PNG], "inputs": [B64_PNG]}, path=PREDICT),
    Case("tfs neither form", 400, "'instances' (row form) or in 'inputs'", {"signature_name": "fast"}, path=PREDICT),
    Case("tfs too many images", 413, f"at most {MAX_IMAGES}", {"instances": [{"b64": B64_PNG}] * 33}, path=PREDICT),
    Case("tfs mixed forms", 400, "same way", {"instances": [{"b64": B64_PNG}, [[[0] * 3] * 32] * 32]}, path=PREDICT),
    Case("tfs b64 not base64", 400, "not valid base64", {"instances": [{"b64": "***"}]}, path=PREDICT),
    Case("tfs b64 not text", 400, "base64 string", {"instances": [{"b64": 7}]}, path=PREDICT),
    Case("tfs signature as a number", 400, "signature_name", {"signature_name": 1, "instances": []}, path=PREDICT),
    Case("tfs deeply nested", 400, "nests", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", path=PREDICT),
    Case("tfs flat pixels", 400, "shape", {"instances": [PIXELS]}, path=PREDICT),
    Case("tfs no images", 400, "no image", {"instances": []}, path=PREDICT),
]


@pytest.fixture(scope="module")
def client(protocol_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=protocol_server.url, timeout=60) as session:
        yield session


def good_request(client: httpx.Client) -> None:
    response = client.post(INFER, json=infer(tensor("BYTES", shape=[1], data=[B64_PNG])))
    assert response.status_code == 200, response.text
    probabilities = response.json()["outputs"][0]["data"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_body(client: httpx.Client, case: Case) -> None:
    response = case.send(client)
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert case.words.lower() in error.lower(), error
    assert not LEAKS.search(error), f"the error leaks internals: {error}"


def test_no_500_and_rss_within_200_mb_of_idle(protocol_server: Server, client: httpx.Client) -> None:
    good_request(client)
    idle = rss_bytes(protocol_server.pid)
    with RssSampler(protocol_server.pid) as sampler:
        statuses = [case.send(client).status_code for case in CASES]
    growth = sampler.peak - idle
    print(f"idle RSS {idle / 2**20:.0f} MiB, peak {sampler.peak / 2**20:.0f} MiB, growth {growth / 2**20:.0f} MiB")
    assert all(400 <= status < 500 for status in statuses), statuses
    assert growth < RSS_HEADROOM_BYTES, f"peak RSS grew by {growth / 2**20:.0f} MiB over idle"
    good_request(client)
    assert "Traceback" not in protocol_server.log() and "unhandled error" not in protocol_server.log()


def test_a_uint8_batch_at_the_limit_is_answered(client: httpx.Client) -> None:
    """The limits refuse what is over them, not what is at them: MAX_BATCH_FILES images, binary and JSON."""
    pixels = np.random.default_rng(0).integers(0, 256, (MAX_IMAGES, 32, 32, 3), dtype=np.uint8)
    request = binary(infer(tensor(shape=list(pixels.shape), binary_data_size=pixels.size)), pixels.tobytes())
    response = client.post(INFER, content=request["body"], headers=request["headers"])
    assert response.status_code == 200, response.text
    as_json = client.post(INFER, json=infer(tensor(shape=list(pixels.shape), data=pixels.tolist())))
    assert as_json.status_code == 200, as_json.text
    assert response.json()["outputs"][0]["shape"] == as_json.json()["outputs"][0]["shape"] == [MAX_IMAGES, 10]
