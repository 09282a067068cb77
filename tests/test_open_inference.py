"""The Open Inference Protocol (KServe v2) spoken to a real uvicorn process by a client nobody here wrote:
tritonclient's InferenceServerClient. Every answer is checked against /predict's for the same image."""

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from core.contract import CLASS_NAMES
from core.preprocessing import image_bytes_to_array
from tests.servers import Server
from tests.synthetic import image_file

MODEL = "cifar10"


@pytest.fixture(scope="module")
def client(protocol_server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(protocol_server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def predict(http: httpx.Client, data: bytes, level: str | None = None) -> dict:
    """/predict's answer for the same file: what every protocol answer must equal."""
    response = http.post("/predict", params={"level": level} if level else None,
                         files={"file": ("image", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    return response.json()


def expected(http: httpx.Client, files: list[bytes], level: str | None = None) -> tuple[np.ndarray, list[str]]:
    answers = [predict(http, data, level) for data in files]
    return np.array([list(a["probabilities"].values()) for a in answers]), [a["label"] for a in answers]


def texts(values: np.ndarray) -> list[str]:
    """BYTES elements as text: tritonclient gives bytes from binary data and str from JSON."""
    return [value.decode() if isinstance(value, bytes) else value for value in values]


def outputs(binary: bool, *names: str) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def test_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("mnist")
    metadata = client.get_server_metadata()
    assert set(metadata["extensions"]) >= {"binary_tensor_data", "classification"}


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in metadata["outputs"]
    assert {"name": "labels", "datatype": "BYTES", "shape": [-1]} in metadata["outputs"]
    assert client.get_model_metadata(MODEL, "1") == metadata
    with pytest.raises(InferenceServerException, match="version 1") as refused:
        client.get_model_metadata(MODEL, "7")
    assert refused.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_tensor_answers_as_predict_does(client: triton.InferenceServerClient, http: httpx.Client,
                                              binary: bool) -> None:
    files = [image_file(seed) for seed in (1, 2, 3)]
    pixels = np.stack([image_bytes_to_array(data) for data in files])  # what /predict feeds the model
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=outputs(binary, "probabilities", "labels"))
    probabilities, labels = expected(http, files)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-6)
    assert texts(result.as_numpy("labels")) == labels
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1"
    assert response["parameters"] == {"level": "accurate"}  # the model's default


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_images_are_decoded_as_predict_decodes_them(client: triton.InferenceServerClient, http: httpx.Client,
                                                          binary: bool) -> None:
    files = [image_file(4, size=32), image_file(5, size=96, image_format="JPEG"), image_file(6, size=48)]
    # JSON cannot carry raw bytes: BYTES elements in JSON are the files in base64.
    elements = files if binary else [base64.b64encode(data) for data in files]
    tensor = triton.InferInput("images", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=outputs(binary, "probabilities", "labels"),
                          parameters={"level": "fast"})
    probabilities, labels = expected(http, files, "fast")
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=0, atol=1e-6)
    assert texts(result.as_numpy("labels")) == labels
    assert result.get_response()["parameters"] == {"level": "fast"}


def test_without_outputs_every_output_comes_back_binary(client: triton.InferenceServerClient,
                                                        http: httpx.Client) -> None:
    data = image_file(7)
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    result = client.infer(MODEL, [tensor], model_version="1")  # no outputs: binary_data_output, every output
    names = [output["name"] for output in result.get_response()["outputs"]]
    assert names == ["probabilities", "labels"]
    assert all("binary_data_size" in output["parameters"] for output in result.get_response()["outputs"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(http, [data])[0], rtol=0, atol=1e-6)


def test_levels_are_chosen_by_parameter(client: triton.InferenceServerClient, http: httpx.Client) -> None:
    data = image_file(8)
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(image_bytes_to_array(data)[np.newaxis])
    answers = {}
    for level in ("fast", "balanced", "accurate"):
        result = client.infer(MODEL, [tensor], outputs=outputs(True, "probabilities"), parameters={"level": level})
        assert result.get_response()["parameters"] == {"level": level}
        answers[level] = result.as_numpy("probabilities")[0]
        np.testing.assert_allclose(answers[level], expected(http, [data], level)[0][0], rtol=0, atol=1e-6)
    assert not np.allclose(answers["fast"], answers["accurate"], atol=1e-3)
    with pytest.raises(InferenceServerException, match="fast") as refused:
        client.infer(MODEL, [tensor], parameters={"level": "fastest"})
    assert refused.value.status() == "422"


def test_classification_extension_names_the_best_classes(client: triton.InferenceServerClient) -> None:
    pixels = image_bytes_to_array(image_file(9))[np.newaxis]
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=3),
                                                    triton.InferRequestedOutput("labels")])
    best = [entry.decode().split(":") for entry in result.as_numpy("probabilities")[0]]
    assert len(best) == 3
    scores = [float(score) for score, _, _ in best]
    assert scores == sorted(scores, reverse=True)
    assert all(CLASS_NAMES[int(index)] == label for _, index, label in best)
    assert best[0][2] == result.as_numpy("labels")[0].decode()


@pytest.mark.parametrize(
    ("model", "version", "status", "words"),
    [("mnist", "", "404", "serves model 'cifar10' version 1"), (MODEL, "3", "404", "version 3 is not served")],
)
def test_an_unserved_model_or_version_is_404_with_what_is_served(client: triton.InferenceServerClient, model: str,
                                                                 version: str, status: str, words: str) -> None:
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceServerException, match=words) as refused:
        client.infer(model, [tensor], model_version=version)
    assert refused.value.status() == status


def test_requests_are_counted_as_predict_requests_are(http: httpx.Client, client: triton.InferenceServerClient) -> None:
    def count(series: str) -> float:
        lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(series)]
        return sum(float(line.split()[-1]) for line in lines)

    answered, rejected = count('cifar10_answers_by_level_total{level="fast"}'), count("cifar10_rejected_images_total")
    tensor = triton.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([image_file(10), b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="Image 2 of 2") as refused:
        client.infer(MODEL, [tensor], parameters={"level": "fast"})
    assert refused.value.status() == "415"
    tensor.set_data_from_numpy(np.array([image_file(10), image_file(11)], dtype=np.object_))
    client.infer(MODEL, [tensor], parameters={"level": "fast"})
    assert count('cifar10_answers_by_level_total{level="fast"}') == answered + 2
    assert count("cifar10_rejected_images_total") == rejected + 1
    assert count('cifar10_requests_total{endpoint="/v2/models/{model_name}/infer"') >= 2
