"""The prediction service end to end: endpoints, answers equal to the SavedModel's, concurrency."""

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from core.contract import CLASS_NAMES, INPUT_NAME, LEVELS, OUTPUT_NAME, SIGNATURE_NAME, version_dirs
from core.preprocessing import image_bytes_to_array
from tests.servers import running_server
from tests.synthetic import shape_image

MAX_BATCH_FILES = 4


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shapes(count: int, seed: int = 7, size: int = 32) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [png(shape_image(i % 10, rng, size=size)) for i in range(count)]


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(trained_model_dir: Path) -> Iterator[TestClient]:
    # float32 at every level (BFLOAT16=false, INT8=false): answers are compared with the SavedModel's own
    # signatures, and the export may have chosen either for a level by timing it.
    settings = Settings(model_dir=trained_model_dir, inference_threads=2, decode_threads=2,
                        max_batch_files=MAX_BATCH_FILES, bfloat16=False, int8=False)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def signature(trained_model_dir: Path):
    loaded = tf.saved_model.load(str(version_dirs(trained_model_dir)[-1][1]))
    yield loaded.signatures[SIGNATURE_NAME]


def direct(signature, images: list[bytes]) -> np.ndarray:
    """What the SavedModel says for the same uploads, preprocessed by the one shared function."""
    arrays = np.stack([image_bytes_to_array(data) for data in images])
    return signature(**{INPUT_NAME: tf.constant(arrays)})[OUTPUT_NAME].numpy()


def test_predict_answers_with_the_savedmodel_probabilities(client: TestClient, signature) -> None:
    upload = shapes(1, seed=11, size=96)[0]
    response = client.post("/predict", files={"file": ("shape.png", upload, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert list(body["probabilities"]) == list(CLASS_NAMES)
    values = np.array(list(body["probabilities"].values()))
    assert values.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(values, direct(signature, [upload])[0], atol=1e-6)
    assert body["label"] == CLASS_NAMES[int(values.argmax())]
    assert body["confidence"] == pytest.approx(values.max())
    assert [t["label"] for t in body["top"]] == [CLASS_NAMES[i] for i in np.argsort(-values, kind="stable")]
    assert body["model"] == {"name": "shapes", "version": 1, "level": "fast"}  # tutorial-rgb's default: no TTA
    assert body["preview"] is None


def test_preview_is_the_32x32_image_the_model_saw(client: TestClient) -> None:
    upload = shapes(1, seed=12, size=64)[0]
    body = client.post("/predict?preview=true", files={"file": ("s.png", upload, "image/png")}).json()
    prefix = "data:image/png;base64,"
    assert body["preview"].startswith(prefix)
    import base64

    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["preview"][len(prefix):]))))
    np.testing.assert_array_equal(seen, image_bytes_to_array(upload))


def test_batch_keeps_order_and_isolates_bad_files(client: TestClient, signature) -> None:
    good = shapes(3, seed=13)
    files = [("files", ("a.png", good[0], "image/png")), ("files", ("notes.txt", b"hello", "text/plain")),
             ("files", ("b.png", good[1], "image/png")), ("files", ("c.png", good[2], "image/png"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "notes.txt", "b.png", "c.png"]
    assert results[1]["status"] == 415 and "not an image in a format the service takes" in results[1]["detail"]
    expected = direct(signature, good)
    for result, row in zip([results[0], results[2], results[3]], expected, strict=True):
        np.testing.assert_allclose(list(result["probabilities"].values()), row, atol=1e-6)


def test_batch_refuses_more_files_than_allowed(client: TestClient) -> None:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(shapes(MAX_BATCH_FILES + 1))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert f"at most {MAX_BATCH_FILES}" in response.json()["detail"]


@pytest.mark.parametrize(
    ("upload", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"just some text\n", 415, "not an image in a format the service takes"),
        (shapes(1, size=64)[0][:200], 400, "could not be read"),
    ],
    ids=["empty", "text", "truncated-png"],
)
def test_bad_uploads_get_a_4xx_json_message(client: TestClient, upload: bytes, status: int, words: str) -> None:
    response = client.post("/predict", files={"file": ("upload.png", upload, "image/png")})
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_missing_field_is_422_with_a_sentence(client: TestClient) -> None:
    response = client.post("/predict", files={"image": ("a.png", shapes(1)[0], "image/png")})
    assert response.status_code == 422
    assert response.json() == {"detail": "Missing form field 'file': send the image as multipart/form-data in a "
                               "part named 'file'."}


def test_health_metadata_and_metrics(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    metadata = client.get("/metadata").json()
    assert metadata["model"]["class_names"] == list(CLASS_NAMES)
    assert metadata["serving"]["max_batch_files"] == MAX_BATCH_FILES
    assert "JPEG" in metadata["serving"]["accepted_formats"]
    client.post("/predict", files={"file": ("a.png", shapes(1)[0], "image/png")})
    metrics = client.get("/metrics").text
    assert 'cifar10_requests_total{endpoint="/predict",method="POST",status="200"}' in metrics
    assert "cifar10_request_duration_seconds_bucket" in metrics
    assert "cifar10_inference_batch_size_bucket" in metrics
    assert "cifar10_images_processed_total" in metrics
    assert "cifar10_predicted_class_total{label=" in metrics


def test_invented_methods_share_one_metrics_label(client: TestClient) -> None:
    for method in ("FOO", "BAR", "GET"):
        assert client.request(method, "/livez").status_code == (200 if method == "GET" else 405)
    metrics = client.get("/metrics").text
    assert 'cifar10_requests_total{endpoint="/livez",method="other",status="405"} 2.0' in metrics
    assert 'method="FOO"' not in metrics and 'method="BAR"' not in metrics
    assert 'cifar10_requests_total{endpoint="/livez",method="GET",status="200"}' in metrics


@pytest.mark.parametrize("level", ["fast", "balanced", "accurate"])
def test_a_request_picks_its_level_and_the_answer_names_it(client: TestClient, trained_model_dir: Path,
                                                           level: str) -> None:
    loaded = tf.saved_model.load(str(version_dirs(trained_model_dir)[-1][1]))
    uploads = shapes(3, seed=31)
    response = client.post(f"/predict?level={level}", files={"file": ("s.png", uploads[0], "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["level"] == level
    values = np.array(list(body["probabilities"].values()))
    np.testing.assert_allclose(values, direct(loaded.signatures[level], uploads[:1])[0], atol=1e-6)
    batch = client.post(f"/predict/batch?level={level}", files=[("files", (f"{i}.png", data, "image/png"))
                                                                 for i, data in enumerate(uploads)])
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["model"]["level"] for r in results] == [level] * 3
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in results],
                               direct(loaded.signatures[level], uploads), atol=1e-6)


def test_levels_differ_where_views_do(client: TestClient) -> None:
    """A lopsided image: its mirror image is another picture, so one view and two views must disagree."""
    upload = shapes(1, seed=41)[0]
    fast, balanced = (client.post(f"/predict?level={level}", files={"file": ("s.png", upload, "image/png")}).json()
                      for level in ("fast", "balanced"))
    assert fast["probabilities"] != balanced["probabilities"]


def test_an_unknown_level_is_422_listing_the_valid_ones(client: TestClient) -> None:
    for path in ("/predict?level=turbo", "/predict/batch?level=turbo"):
        field = "file" if path == "/predict?level=turbo" else "files"
        response = client.post(path, files={field: ("s.png", shapes(1)[0], "image/png")})
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert "level" in detail and all(f"'{name}'" in detail for name in ("fast", "balanced", "accurate"))


def test_metadata_lists_the_levels_and_metrics_count_answers_per_level(client: TestClient) -> None:
    metadata = client.get("/metadata").json()
    levels = {level["name"]: level for level in metadata["levels"]}
    assert list(levels) == ["fast", "balanced", "accurate"]
    assert [name for name, level in levels.items() if level["default"]] == ["fast"]
    assert [levels[name]["views"] for name in levels] == [1, 2, 6]
    for level in levels.values():
        assert 0 <= level["val_accuracy"] <= 1 and 0 <= level["val_ece"] <= 1
        assert set(level["images_per_second"]) == {"batch_1", "batch_64"}
    # Each level's figures are the export's OpenVINO measurement in the precision the level is served in.
    measured = metadata["model"]["openvino"]["levels"]
    for name, level in levels.items():
        in_precision = measured[name][level["precision"]]
        assert [level[key] for key in in_precision] == list(in_precision.values())
    assert metadata["serving"]["adapt_level"] == "fast"

    before = counter(client, 'cifar10_answers_by_level_total{level="balanced"}')
    client.post("/predict?level=balanced", files={"file": ("s.png", shapes(1)[0], "image/png")})
    assert counter(client, 'cifar10_answers_by_level_total{level="balanced"}') == before + 1


def counter(client: TestClient, series: str) -> float:
    """The value of one Prometheus series at /metrics (0 before it is first counted)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_openapi_documents_the_upload_and_its_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(predict["responses"])
    level = next(p for p in predict["parameters"] if p["name"] == "level")
    for entry in LEVELS:  # every level with its views, from the contract's table
        assert f"`{entry.name}`: {entry.views} view" in level["description"], level["description"]
    # The figures are each model's own: /metadata has them, the API text none that a promote would outdate.
    assert "GET /metadata" in level["description"] and "%" not in level["description"]
    assert client.get("/docs").status_code == 200


def test_concurrent_uploads_each_get_their_own_answer(client: TestClient, trained_model_dir: Path,
                                                      signature, tmp_path: Path) -> None:
    """64 different images at once through a real uvicorn server: every answer matches its own image."""
    uploads = shapes(64, seed=21)
    expected = direct(signature, uploads)

    async def send_all(url: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            responses = await asyncio.gather(*(
                http.post("/predict", files={"file": (f"{i}.png", data, "image/png")})
                for i, data in enumerate(uploads)))
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    with running_server(trained_model_dir, tmp_path / "server.log", INFERENCE_THREADS="2",
                        BFLOAT16="false", INT8="false") as server:
        answers = asyncio.run(send_all(server.url))
    for answer, row in zip(answers, expected, strict=True):
        np.testing.assert_allclose(list(answer["probabilities"].values()), row, atol=1e-5)


@pytest.mark.parametrize(("method", "path", "field"), [
    ("GET", "/predict", "'file'"),
    ("PUT", "/predict", "'file'"),
    ("GET", "/predict/batch", "'files' (one part per image)"),
])
def test_a_wrong_method_on_an_upload_route_says_how_to_call_it(client: TestClient, method: str, path: str,
                                                              field: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    example = field.split("'")[1]
    assert response.json()["detail"] == (
        f"{method} is not allowed on {path}. Send POST with multipart/form-data, the image in the form field "
        f"{field}, as in: curl -F {example}=@cat.jpg <this server>{path}")


def test_a_wrong_method_elsewhere_names_the_method_to_use(client: TestClient) -> None:
    response = client.post("/livez")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["detail"] == "POST is not allowed on /livez; it answers GET."


def test_openapi_examples_follow_the_400_415_rule(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    sent = {}
    for upload in (b"just some text\n", b"%PDF-1.7\n", b"", b"\x89PNG\r\n\x1a\n" + bytes(range(64))):
        answer = client.post("/predict", files={"file": ("upload.png", upload, "image/png")})
        sent[answer.json()["detail"]] = answer.status_code
    for status in ("400", "415"):
        examples = responses[status]["content"]["application/json"]["examples"]
        documented = {example["value"]["detail"] for example in examples.values()}
        # Each documented message is one the service really sends, with that status.
        assert documented <= set(sent) and {sent[detail] for detail in documented} == {int(status)}, (status, sent)


def test_refused_uploads_are_counted_on_both_routes(client: TestClient) -> None:
    series = 'cifar10_rejected_images_total{reason="empty"}'
    before = counter(client, series)
    assert client.post("/predict", files={"file": ("e.png", b"", "image/png")}).status_code == 400
    assert client.post("/predict/batch", files=[("files", ("e.png", b"", "image/png")),
                                                ("files", ("f.png", b"", "image/png"))]).status_code == 200
    assert counter(client, series) == before + 3
