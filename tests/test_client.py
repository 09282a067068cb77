"""The Python client (client/cifar10_client) against the real app: blocking calls through Starlette's
TestClient, awaitable ones through httpx's ASGI transport, and a socket that never answers."""

import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import schemas
from app.main import create_app
from app.settings import Settings
from cifar10_client import (
    APIError,
    AsyncClient,
    Client,
    Prediction,
    RequestTimeout,
    ServiceUnavailable,
    ServiceUnreachable,
    UnreadableFile,
)
from cifar10_client import models as client_models
from cifar10_client.models import as_json
from core.contract import CLASS_NAMES
from tests.servers import free_port, ready_test_client
from tests.synthetic import write_jpegs

RETRY_AFTER_S = 1.0  # what app.errors asks for while warming up


def assert_same_answer(answer: Prediction, expected: Prediction) -> None:
    """Equal but for float round-off: an image computed in a batch with others differs in the last bits."""
    assert answer.label == expected.label
    assert answer.model == expected.model
    assert answer.probabilities == pytest.approx(expected.probabilities, abs=1e-5)


def settings(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, inference_threads=1, decode_threads=1)


@pytest.fixture(scope="module")
def app_client(trained_model_dir: Path) -> Iterator[TestClient]:
    with ready_test_client(settings(trained_model_dir)) as test_client:
        yield test_client


@pytest.fixture
def client(app_client: TestClient) -> Iterator[Client]:
    yield Client(str(app_client.base_url), http_client=app_client)
    app_client.event_hooks = {"request": [], "response": []}
    app_client.portal.call(app_client.app.state.service.ready.set)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_jpegs(tmp_path_factory.mktemp("images"), 6, seed=5)


def test_result_types_mirror_the_response_models() -> None:
    """Every field of the API's response models has its typed twin in the client (app/ is not imported there)."""
    pairs = [(schemas.Prediction, client_models.Prediction), (schemas.ModelInfo, client_models.ModelInfo),
             (schemas.ClassProbability, client_models.ClassProbability), (schemas.Health, client_models.Health),
             (schemas.Metadata, client_models.Metadata), (schemas.ServingLimits, client_models.ServingLimits),
             (schemas.Explanation, client_models.Explanation),
             (schemas.ExplainedPrediction, client_models.ExplainedPrediction)]
    for server, mirror in pairs:
        mirrored = {field.name for field in dataclasses.fields(mirror)} - {"extra"}
        assert set(server.model_fields) == mirrored, (
            f"app/schemas.py's {server.__name__} and client/cifar10_client/models.py's {mirror.__name__} differ: "
            "add the field to the client's result type")


def test_predict_from_a_path_bytes_or_file_answers_as_the_api(client: Client, app_client: TestClient,
                                                               images: list[Path]) -> None:
    path = images[0]
    by_hand = app_client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")}).json()
    with path.open("rb") as file:
        answers = [client.predict(path), client.predict(str(path)), client.predict(path.read_bytes()),
                   client.predict(file)]
    for answer in answers:
        assert isinstance(answer, Prediction)
        assert as_json(answer) == by_hand  # every field, typed, and nothing lost
    assert answers[0].label in CLASS_NAMES
    assert answers[0].top[0].label == answers[0].label
    assert answers[0].model.name == "shapes" and answers[0].model.version == 1


def test_explain_answers_as_the_api_and_gives_the_overlay_png(client: Client, app_client: TestClient,
                                                              images: list[Path]) -> None:
    path = images[1]
    by_hand = app_client.post("/explain", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                              params={"label": "truck"}).json()
    answer = client.explain(path, label="truck")
    assert isinstance(answer, client_models.ExplainedPrediction)
    assert as_json(answer) == by_hand
    assert answer.explanation.label == "truck" and len(answer.explanation.map) == 32
    assert answer.explanation.overlay_png().startswith(b"\x89PNG\r\n\x1a\n")
    assert isinstance(answer.ood_score, float) and answer.in_distribution in (True, False)


def test_preview_is_passed_through(client: Client, images: list[Path]) -> None:
    assert client.predict(images[0], preview=True).preview.startswith("data:image/png;base64,")
    assert client.predict(images[0]).preview is None


def test_a_refused_upload_raises_with_the_service_detail(client: Client) -> None:
    with pytest.raises(APIError) as empty:
        client.predict(b"")
    assert empty.value.status == 400
    assert empty.value.detail.startswith("The file is empty")
    with pytest.raises(APIError) as pdf:
        client.predict(b"%PDF-1.7\n" + b"0" * 200)
    assert pdf.value.status == 415
    assert "PDF" in pdf.value.detail and "JPEG" in pdf.value.detail
    assert "/predict" in str(pdf.value)


def test_a_missing_file_is_an_error_naming_it(client: Client, tmp_path: Path) -> None:
    with pytest.raises(UnreadableFile, match=r"nothing\.jpg: No such file"):
        client.predict(tmp_path / "nothing.jpg")


def test_predict_many_keeps_order_and_reports_each_failure(client: Client, app_client: TestClient,
                                                           images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    sources = [*images[:3], broken, tmp_path / "missing.jpg", *images[3:]]
    finished: list[int] = []

    results = client.predict_many(sources, concurrency=3, on_result=lambda index, result: finished.append(index))

    assert [result.source for result in results] == [str(source) for source in sources]
    assert sorted(finished) == list(range(len(sources)))
    assert [result.ok for result in results] == [True, True, True, False, False, True, True, True]
    refused = app_client.post("/predict", files={"file": ("broken.jpg", broken.read_bytes())})
    assert isinstance(results[3].error, APIError)
    assert (results[3].error.status, results[3].error.detail) == (refused.status_code, refused.json()["detail"])
    assert 400 <= refused.status_code < 500
    assert isinstance(results[4].error, UnreadableFile)
    for source, result in zip(sources, results, strict=True):
        if result.ok:
            assert_same_answer(result.prediction, client.predict(source))  # each answer is its own file's


def test_503_is_retried_after_retry_after_until_200(client: Client, app_client: TestClient,
                                                    images: list[Path]) -> None:
    """The real app while warming up: 503 with Retry-After, then ready once that first answer is out."""
    ready = app_client.app.state.service.ready
    statuses: list[int] = []

    def warm_after_first_503(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            app_client.portal.call(ready.set)

    app_client.portal.call(ready.clear)
    app_client.event_hooks = {"request": [], "response": [warm_after_first_503]}
    started = time.monotonic()
    answer = client.predict(images[0])
    assert statuses == [503, 200]
    assert time.monotonic() - started >= RETRY_AFTER_S
    assert answer.label in CLASS_NAMES


def test_503_retries_are_capped(app_client: TestClient, images: list[Path]) -> None:
    statuses: list[int] = []
    app_client.portal.call(app_client.app.state.service.ready.clear)
    app_client.event_hooks = {"request": [], "response": [lambda response: statuses.append(response.status_code)]}
    client = Client(str(app_client.base_url), http_client=app_client, retries=2, max_retry_wait_s=0.1)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as error:
            client.predict(images[0])
        assert statuses == [503, 503, 503]
        assert time.monotonic() - started >= 0.2  # two waits, each capped at max_retry_wait_s
        assert error.value.attempts == 3
        assert "warming up" in error.value.detail
        # /readyz answers 503 while warming: that is its answer, not a failure to retry
        assert client.health().ready is False
        assert statuses == [503, 503, 503, 503]
    finally:
        app_client.event_hooks = {"request": [], "response": []}
        app_client.portal.call(app_client.app.state.service.ready.set)


def test_health_and_metadata(client: Client) -> None:
    health = client.health()
    assert health.ready and health.status == "ok"
    metadata = client.metadata()
    assert metadata.model["name"] == "shapes" and metadata.model["version"] == 1
    assert metadata.model["class_names"] == list(CLASS_NAMES)
    assert "JPEG" in metadata.serving.accepted_formats
    assert metadata.serving.max_batch_files == 32


def test_fields_a_newer_service_adds_are_kept(client: Client, images: list[Path]) -> None:
    answer = as_json(client.predict(images[0]))
    answer["model"]["device"] = "cpu"
    answer["explanation"] = {"saliency": None}
    newer = Prediction.from_json(answer)
    assert newer.model.extra == {"device": "cpu"}
    assert newer.extra == {"explanation": {"saliency": None}}
    assert as_json(newer) == answer


def test_a_service_that_is_down_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client, pytest.raises(ServiceUnreachable, match=f"cannot reach the service at {url}"):
        client.predict(b"\xff\xd8\xff")
    with Client(url) as client, pytest.raises(ServiceUnreachable):
        client.predict_many([b"\xff\xd8\xff"] * 5, concurrency=2)


def test_an_answer_that_never_comes_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(url, timeout_s=0.3) as client:
            with pytest.raises(RequestTimeout, match=r"within 0\.3 s"):
                client.predict(b"\xff\xd8\xff")
            results = client.predict_many([b"\xff\xd8\xff"] * 2, concurrency=2)
        assert [type(result.error) for result in results] == [RequestTimeout, RequestTimeout]


# The awaitable client, through httpx's ASGI transport on an app whose lifespan runs in the test's loop.

@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def asgi_app(trained_model_dir: Path, anyio_backend: str) -> AsyncIterator[FastAPI]:
    app = create_app(settings(trained_model_dir))
    async with app.router.lifespan_context(app):
        await app.state.service.ready.wait()
        yield app


def async_client(app: FastAPI, **options: object) -> AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return AsyncClient("http://asgi", http_client=httpx.AsyncClient(transport=transport), **options)


@pytest.mark.anyio
async def test_async_predict_and_predict_many(asgi_app: FastAPI, images: list[Path], tmp_path: Path) -> None:
    client = async_client(asgi_app)
    single = await client.predict(images[0])
    assert single.label in CLASS_NAMES
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    sources = [*images, broken]

    results = await client.predict_many(sources, concurrency=4)

    assert [result.source for result in results] == [str(source) for source in sources]
    assert_same_answer(results[0].prediction, single)
    assert all(result.ok for result in results[:-1])
    assert isinstance(results[-1].error, APIError) and results[-1].error.status == 400
    assert (await client.health()).ready
    assert (await client.metadata()).model["name"] == "shapes"


@pytest.mark.anyio
async def test_async_explain_and_predict_many_with_explanations(asgi_app: FastAPI, images: list[Path]) -> None:
    client = async_client(asgi_app)
    answer = await client.explain(images[0])
    assert answer.explanation.label == answer.label and answer.model.level == "fast"
    results = await client.predict_many(images[:3], explain=True, concurrency=1)
    assert all(isinstance(r.prediction, client_models.ExplainedPrediction) for r in results)
    assert [r.prediction.label for r in results] == [(await client.predict(p)).label for p in images[:3]]


@pytest.mark.anyio
async def test_async_503_is_retried_until_200(asgi_app: FastAPI, images: list[Path]) -> None:
    ready = asgi_app.state.service.ready
    statuses: list[int] = []

    async def warm_after_first_503(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        ready.set()

    transport = httpx.ASGITransport(app=asgi_app)
    http = httpx.AsyncClient(transport=transport, event_hooks={"response": [warm_after_first_503]})
    client = AsyncClient("http://asgi", http_client=http)
    ready.clear()
    try:
        started = time.monotonic()
        answer = await client.predict(images[1])
    finally:
        ready.set()
    assert statuses == [503, 200]
    assert time.monotonic() - started >= RETRY_AFTER_S
    assert answer.label in CLASS_NAMES


@pytest.mark.anyio
async def test_async_a_service_that_is_down_is_unreachable() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ServiceUnreachable):
            await client.predict_many([b"\xff\xd8\xff"] * 5, concurrency=2)
