"""A client generated from the app's own /openapi.json by openapi-python-client, as a client developer
would make one, uploads images to a real app: the document describes every upload as a file."""

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from core.contract import CLASS_NAMES
from tests.servers import ready_test_client
from tests.synthetic import write_jpegs

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "cifar10_generated_client"


@pytest.fixture(scope="module")
def client(trained_model_dir: Path) -> Iterator[TestClient]:
    with ready_test_client(Settings(model_dir=trained_model_dir, inference_threads=1, decode_threads=1)) as app:
        yield app


@pytest.fixture(scope="module")
def generated(client: TestClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The package openapi-python-client writes from the document the app serves, imported."""
    root = tmp_path_factory.mktemp("generated")
    (root / "openapi.json").write_text(json.dumps(client.get("/openapi.json").json()))
    # No post-hooks: the generator would run `ruff format` on its output, which this test does not judge.
    (root / "config.json").write_text(json.dumps({"post_hooks": []}))
    result = subprocess.run([str(GENERATOR), "generate", "--path", "openapi.json", "--config", "config.json",
                             "--meta", "none", "--output-path", PACKAGE], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # nothing of the document was skipped
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_every_upload_field_is_a_binary_file(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["Body_predict"]["properties"]["file"]["format"] == "binary"
    assert schemas["Body_predict_batch"]["properties"]["files"]["items"]["format"] == "binary"
    # What FastAPI writes stays beside it: OpenAPI 3.1 readers use contentMediaType.
    assert schemas["Body_predict"]["properties"]["file"]["contentMediaType"] == "application/octet-stream"


def test_generated_client_uploads_to_predict(generated: ModuleType, client: TestClient, tmp_path: Path) -> None:
    predict = importlib.import_module(f"{PACKAGE}.api.predict.predict")
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    api = generated.Client(base_url=str(client.base_url))
    api.set_httpx_client(client)  # the real app, in process
    jpeg = write_jpegs(tmp_path, 1)[0].read_bytes()

    response = predict.sync_detailed(client=api, body=models.BodyPredict(
        file=types.File(payload=io.BytesIO(jpeg), file_name="shape.jpg", mime_type="image/jpeg")))

    assert response.status_code == 200, response.content
    answer = response.parsed
    assert isinstance(answer, models.Prediction)
    assert answer.label in CLASS_NAMES
    probabilities = answer.probabilities.additional_properties
    assert list(probabilities) == list(CLASS_NAMES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert answer.confidence == pytest.approx(probabilities[answer.label])
    assert answer.top[0].label == answer.label
    assert (answer.model.name, answer.model.version) == ("shapes", 1)
    # The same bytes sent by hand give the same answer: the generated client sent the file, not a text part.
    by_hand = client.post("/predict", files={"file": ("shape.jpg", jpeg, "image/jpeg")}).json()
    assert probabilities == by_hand["probabilities"]


def test_generated_client_uploads_to_predict_batch(generated: ModuleType, client: TestClient, tmp_path: Path) -> None:
    predict_batch = importlib.import_module(f"{PACKAGE}.api.predict.predict_batch")
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    api = generated.Client(base_url=str(client.base_url))
    api.set_httpx_client(client)
    paths = write_jpegs(tmp_path, 2, seed=3)
    files = [types.File(payload=io.BytesIO(path.read_bytes()), file_name=path.name, mime_type="image/jpeg")
             for path in paths]

    response = predict_batch.sync_detailed(client=api, body=models.BodyPredictBatch(files=files))

    assert response.status_code == 200, response.content
    results = response.parsed.results
    assert [type(result) for result in results] == [models.FilePrediction, models.FilePrediction]
    assert [result.filename for result in results] == [path.name for path in paths]
    for result in results:
        assert result.label in CLASS_NAMES
        assert sum(result.probabilities.additional_properties.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.model.name == "shapes"
