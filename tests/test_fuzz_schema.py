"""schemathesis against the app's own OpenAPI schema, in process: every documented operation, no 5xx,
every status documented, every body matching its documented schema. A bounded number of examples runs
here; docs/reliability.md says how to run longer (``schemathesis run`` against a live server)."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from app.settings import Settings

EXAMPLES_PER_OPERATION = 25


@dataclass
class Api:
    schema: schemathesis.BaseSchema
    client: TestClient


@pytest.fixture(scope="module")
def api(trained_model_dir: Path) -> Iterator[Api]:
    app = create_app(Settings(model_dir=trained_model_dir, inference_threads=1, decode_threads=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # One client holds one lifespan for the module: wait for its warm-up so /predict is exercised past
    # the 503 it answers while warming (documented, but it tests nothing).
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.1)
        yield Api(schema, client)


# schemathesis.pytest.from_fixture relies on a pytest private (Node._nodeid) that pytest 9 removed, so each
# operation's strategy is driven by hypothesis directly, one test per documented operation.
OPERATIONS = ["GET /livez", "GET /readyz", "GET /metadata", "GET /metrics", "POST /predict", "POST /predict/batch",
              "POST /explain",
              # The serving protocols (app/open_inference_routes.py, app/tfserving_routes.py)
              "GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models/{model_name}",
              "GET /v2/models/{model_name}/versions/{model_version}", "GET /v2/models/{model_name}/ready",
              "GET /v2/models/{model_name}/versions/{model_version}/ready", "POST /v2/models/{model_name}/infer",
              "POST /v2/models/{model_name}/versions/{model_version}/infer", "GET /v1/models/{model_name}",
              "GET /v1/models/{model_name}/versions/{model_version}", "GET /v1/models/{model_name}/metadata",
              "GET /v1/models/{model_name}/versions/{model_version}/metadata", "POST /v1/models/{model_name}:predict",
              "POST /v1/models/{model_name}/versions/{model_version}:predict"]
# A JSON schema can say "a binary file" but not "a decodable image": schema-valid bytes that are no image
# are rightly refused with 400/415, so the check that every schema-valid request succeeds does not apply.
EXCLUDED_CHECKS = [positive_data_acceptance]


def httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis builds requests-style ``files`` ((None, value) for plain fields); httpx wants those
    in ``data`` and every file as bytes."""
    parts = kwargs.pop("files", None) or []
    fields: dict[str, list[str | bytes]] = {}
    uploads = []
    for name, (filename, content, *rest) in parts:
        value = content if isinstance(content, str | bytes) else str(content)
        if filename is None:
            fields.setdefault(name, []).append(value)
        else:
            uploads.append((name, (filename, value.encode() if isinstance(value, str) else value, *rest)))
    if parts:
        kwargs.update(files=uploads, data={**(kwargs.get("data") or {}), **fields})
    return kwargs


@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_api_conforms_to_its_schema(api: Api, operation_id: str) -> None:
    method, path = operation_id.split(" ")
    operation = api.schema[path][method]

    @given(operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def conforms(case: schemathesis.Case) -> None:
        request = api.client.build_request(**httpx_kwargs(case.as_transport_kwargs(base_url="http://testserver")))
        request.read()  # materialise a multipart stream: schemathesis reads the request back when validating
        response = api.client.send(request)
        assert response.status_code < 500, f"{operation_id}: {response.status_code} {response.text[:300]}"
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)

    conforms()


def test_every_operation_is_fuzzed(api: Api) -> None:
    documented = {f"{result.ok().method.upper()} {result.ok().path}" for result in api.schema.get_all_operations()}
    assert documented == set(OPERATIONS)


def test_every_documented_error_is_a_json_detail(api: Api) -> None:
    """Documented error responses all use the error shape the handlers produce: ``{"detail"}``, and the
    protocols' own ``{"error"}`` on their routes."""
    document = api.schema.raw_schema
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and not (path == "/readyz" and status == "503"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    shape = "/ProtocolError" if path.startswith(("/v1/", "/v2")) else "/ErrorMessage"
                    assert ref.endswith(shape), (method, path, status, ref)
