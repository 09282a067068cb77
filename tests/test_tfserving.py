"""TensorFlow Serving's REST API against a real uvicorn process: the request bodies of its REST API guide
(tensorflow_serving/g3doc/api_rest.md), replayed as written, and the same forms carrying this model's images.
Every answer is checked against /predict's for the same image."""

import base64

import httpx
import numpy as np
import pytest

from core.preprocessing import image_bytes_to_array
from tests.synthetic import image_file

PREDICT = "/v1/models/cifar10:predict"


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def predicted(http: httpx.Client, files: list[bytes], level: str | None = None) -> np.ndarray:
    rows = []
    for data in files:
        response = http.post("/predict", params={"level": level} if level else None,
                             files={"file": ("image", data, "application/octet-stream")})
        assert response.status_code == 200, response.text
        rows.append(list(response.json()["probabilities"].values()))
    return np.array(rows)


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words.lower() in error.lower(), error


# ---------------------------------------------------------------- the guide's own examples, as written

def test_model_status_as_the_guide_shows_it(http: httpx.Client) -> None:
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert http.get("/v1/models/cifar10").json() == expected
    assert http.get("/v1/models/cifar10/versions/1").json() == expected
    assert_error(http.get("/v1/models/cifar10/versions/2"), 404, "serves model 'cifar10' version 1")


def test_metadata_lists_every_signature(http: httpx.Client) -> None:
    body = http.get("/v1/models/cifar10/metadata").json()
    assert body["model_spec"] == {"name": "cifar10", "signature_name": "", "version": "1"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "fast", "balanced", "accurate"}
    for signature in signatures.values():
        assert signature["inputs"]["images"]["dtype"] == "DT_UINT8"
        assert [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "32", "32", "3"]
        assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
        assert signature["method_name"] == "tensorflow/serving/predict"
    assert http.get("/v1/models/cifar10/versions/1/metadata").json() == body


# The guide's request bodies, character for character. None is an image, so each is refused with a 4xx
# that says what this model takes; the multi-input row example has a stray bracket in the guide
# ("[3, 4, 1, 2, 5]],") and is not JSON at all.
GUIDE_BODIES = [
    ('{"instances": [1.0,2.0,5.0]}', 400, "instance 0 is"),
    ('{\n  // List of 3 scalar tensors.\n  "instances": [ "foo", "bar", "baz" ]\n}', 400, "not valid JSON"),
    ('{\n  "instances": [ "foo", "bar", "baz" ]\n}', 400, "instance 0 is"),
    ('{\n  "instances": [ [[1, 2]], [[3, 4]] ]\n}', 400, "shape"),
    ('{\n "instances": [\n   {\n     "tag": "foo",\n     "signal": [1, 2, 3, 4, 5],\n     "sensor": [[1, 2], '
     '[3, 4]]\n   },\n   {\n     "tag": "bar",\n     "signal": [3, 4, 1, 2, 5]],\n     "sensor": [[4, 5], '
     '[6, 8]]\n   }\n ]\n}', 400, "not valid JSON"),
    ('{\n "inputs": {\n   "tag": ["foo", "bar"],\n   "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],\n   '
     '"sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]\n }\n}', 400, "names the inputs 'tag', 'signal', 'sensor'"),
    # The binary-value example's image ("aW1hZ2UgYnl0ZXM=" is the text "image bytes"): not an image file.
    ('{"instances": [{"b64": "aW1hZ2UgYnl0ZXM="}]}', 415, "not an image"),
    ('{"signature_name": "classify_objects", "instances": [{"b64": "aW1hZ2UgYnl0ZXM="}]}', 422, "'fast'"),
]


@pytest.mark.parametrize(("body", "status", "words"), GUIDE_BODIES)
def test_the_guides_bodies_get_a_clear_refusal(http: httpx.Client, body: str, status: int, words: str) -> None:
    assert_error(http.post(PREDICT, content=body), status, words)


def test_the_guides_404_example(http: httpx.Client) -> None:
    """`curl -i -d '{"instances": [1.0,5.0]}' -X POST .../v1/models/half:predict`: 404 and an error object."""
    response = http.post("/v1/models/half:predict", content='{"instances": [1.0,5.0]}')
    assert_error(response, 404, "model 'half' is not served here")


# ---------------------------------------------------------------- the same forms, with this model's images

def test_row_form_with_pixels(http: httpx.Client) -> None:
    files = [image_file(1), image_file(2)]
    instances = [image_bytes_to_array(data).tolist() for data in files]
    response = http.post(PREDICT, json={"instances": instances})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], predicted(http, files), rtol=0, atol=1e-6)


def test_row_form_with_b64_images_and_named_inputs(http: httpx.Client) -> None:
    files = [image_file(3, size=64, image_format="JPEG"), image_file(4, size=40)]
    for instances in ([b64(data) for data in files], [{"images": b64(data)} for data in files]):
        response = http.post(PREDICT, json={"signature_name": "fast", "instances": instances})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["predictions"], predicted(http, files, "fast"), rtol=0, atol=1e-6)


def test_columnar_form(http: httpx.Client) -> None:
    files = [image_file(5), image_file(6)]
    pixels = [image_bytes_to_array(data).tolist() for data in files]
    expected = predicted(http, files, "balanced")
    for inputs in (pixels, {"images": pixels}, {"images": [b64(data) for data in files]}):
        response = http.post("/v1/models/cifar10/versions/1:predict",
                             json={"signature_name": "balanced", "inputs": inputs})
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["outputs"]
        np.testing.assert_allclose(response.json()["outputs"], expected, rtol=0, atol=1e-6)


def test_signature_names_pick_levels(http: httpx.Client) -> None:
    data = image_file(7)
    answers = {}
    for signature, level in (("serving_default", None), ("fast", "fast"), ("accurate", "accurate")):
        response = http.post(PREDICT, json={"signature_name": signature, "instances": [b64(data)]})
        assert response.status_code == 200, response.text
        answers[signature] = response.json()["predictions"][0]
        np.testing.assert_allclose(answers[signature], predicted(http, [data], level)[0], rtol=0, atol=1e-6)
    assert answers["serving_default"] == answers["accurate"]  # the model's default level
    assert not np.allclose(answers["fast"], answers["accurate"], atol=1e-3)
