"""The OpenAPI page at /docs, in headless Chromium with the network off: everything it needs comes
from the app, and "Try it out" on /predict with an image gets the model's answer."""

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.access import hash_line, new_key
from tests.browser import ARTIFACTS, OffHostRequests, headless_chromium
from tests.servers import running_server
from tests.synthetic import shape_image

OPERATIONS = ["POST /predict", "POST /predict/batch", "POST /explain", "GET /livez", "GET /readyz", "GET /metrics",
              "GET /metadata"]
# The Open Inference Protocol (v2) and TensorFlow Serving's REST API, each path with and without a version.
V2_MODEL, V2_VERSION = "/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"
V1_MODEL, V1_VERSION = "/v1/models/{model_name}", "/v1/models/{model_name}/versions/{model_version}"
OPERATIONS += ["GET /v2/health/live", "GET /v2/health/ready", "GET /v2", f"GET {V2_MODEL}", f"GET {V2_VERSION}",
               f"GET {V2_MODEL}/ready", f"GET {V2_VERSION}/ready", f"POST {V2_MODEL}/infer", f"POST {V2_VERSION}/infer",
               f"GET {V1_MODEL}", f"GET {V1_VERSION}", f"GET {V1_MODEL}/metadata", f"GET {V1_VERSION}/metadata",
               f"POST {V1_MODEL}:predict", f"POST {V1_VERSION}:predict"]


@pytest.fixture(scope="module")
def server(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "uvicorn.log"
    with running_server(trained_model_dir, log_path, INFERENCE_THREADS="1", DECODE_THREADS="1") as running:
        yield running.url


def test_docs_page_and_its_assets_come_from_the_app(server: str) -> None:
    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    policy = page.headers["content-security-policy"]
    assert "https:" not in policy and "default-src 'self'" in policy
    for name, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        asset = httpx.get(f"{server}/static/swagger-ui/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert len(asset.content) > 100_000  # Swagger UI itself, not a placeholder
    assert httpx.get(f"{server}/static/swagger-ui/index.html").status_code == 404
    assert httpx.get(f"{server}/redoc").status_code == 404  # no second docs page that would need a CDN


def test_try_it_out_on_predict_shows_the_models_answer_offline(server: str) -> None:
    buffer = io.BytesIO()
    shape_image(3, np.random.default_rng(0), size=64).save(buffer, format="PNG")
    image = buffer.getvalue()
    expected = httpx.post(f"{server}/predict", files={"file": ("cat.png", image, "image/png")}).json()
    with headless_chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        off_host = OffHostRequests(context, server)
        page = context.new_page()
        page.set_default_timeout(30_000)
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{server}/docs")

        page.locator(".opblock").first.wait_for()
        summaries = page.locator(".opblock-summary")
        shown = [f"{summaries.nth(i).locator('.opblock-summary-method').inner_text()} "
                 f"{summaries.nth(i).locator('.opblock-summary-path').inner_text()}" for i in range(summaries.count())]
        assert shown == OPERATIONS

        predict = page.locator("#operations-predict-predict")
        predict.locator(".opblock-summary").click()
        predict.get_by_role("button", name="Try it out").click()
        # A file picker, not a text box: the schema says the field is a file.
        predict.locator("input[type=file]").set_input_files(
            [{"name": "cat.png", "mimeType": "image/png", "buffer": image}])
        predict.get_by_role("button", name="Execute").click()
        status = predict.locator(".live-responses-table .response .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip() == "200"
        body = predict.locator(".live-responses-table .response-col_description pre").first.inner_text()
        assert f'"label": "{expected["label"]}"' in body
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "api-docs-try-it-out.png", full_page=True)
        context.close()
    assert problems == [], problems
    assert list(off_host) == [], "the docs page asked for files from outside the host"


def test_with_api_keys_authorize_then_try_it_out_is_answered(trained_model_dir: Path, tmp_path: Path) -> None:
    """API_KEYS_FILE set: /docs must offer a way to send a key, or every "Try it out" on a classifying route
    is 401. The page's Authorize dialog takes the key; the request then carries it."""
    key = new_key()
    (tmp_path / "keys").write_text(hash_line("docs-user", key) + "\n")
    buffer = io.BytesIO()
    shape_image(5, np.random.default_rng(1), size=48).save(buffer, format="PNG")
    with running_server(trained_model_dir, tmp_path / "uvicorn.log", API_KEYS_FILE=str(tmp_path / "keys"),
                        INFERENCE_THREADS="1", DECODE_THREADS="1") as server, headless_chromium() as browser:
        files = {"file": ("cat.png", buffer.getvalue(), "image/png")}
        assert httpx.post(f"{server.url}/predict", files=files, timeout=30).status_code == 401  # keys are on
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{server.url}/docs")
        page.locator(".opblock").first.wait_for()
        page.locator("button.authorize").first.click()
        dialog = page.locator(".dialog-ux")
        dialog.locator("input[type=text], input[type=password]").first.fill(key)
        dialog.locator("button.modal-btn.auth.authorize").first.click()  # this scheme's "Authorize"
        dialog.locator("button.btn-done").first.click()  # "Close"
        predict = page.locator("#operations-predict-predict")
        predict.locator(".opblock-summary").click()
        predict.get_by_role("button", name="Try it out").click()
        predict.locator("input[type=file]").set_input_files(
            [{"name": "cat.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
        predict.get_by_role("button", name="Execute").click()
        status = predict.locator(".live-responses-table .response .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip() == "200"
