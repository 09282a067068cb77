"""The batcher's faults reach a client over real HTTP as JSON, never as a request left waiting:
a batching worker that died answers 503 naming the cause (and serves again), a deadline answers 504."""

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from app.settings import Settings
from tests import hostile_files as files
from tests.model_versions import write_model
from tests.servers import running_server, serving_in_thread


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


class FailsOnce:
    """The served model, except that the batcher's first read of its default level raises: a fault inside
    the batching worker's own loop, where no batch is running to take the error."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property
    def default_level(self) -> str:
        if not self.failed:
            self.failed = True
            raise RuntimeError("level table unreadable")
        return self._model.default_level


def test_a_dead_batching_worker_answers_503_naming_the_cause_then_serves_again(tmp_path: Path) -> None:
    write_model(tmp_path / "models" / "1")
    settings = Settings(model_dir=tmp_path / "models", inference_threads=1, decode_threads=1, model_poll_seconds=0)
    with serving_in_thread(settings) as (url, app):
        served = app.state.service.served
        served.swap(FailsOnce(served.current))
        files = {"file": ("cat.jpg", jpeg(), "image/jpeg")}
        failed = httpx.post(f"{url}/predict", files=files, timeout=30)
        assert failed.status_code == 503
        assert failed.headers["retry-after"] == "1"
        assert "RuntimeError: level table unreadable) and was restarted" in failed.json()["detail"]
        answered = httpx.post(f"{url}/predict", files=files, timeout=30)
        assert answered.status_code == 200 and answered.json()["label"]
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert "cifar10_batcher_restarts_total 1.0" in metrics


def test_a_request_past_inference_timeout_gets_504_with_a_json_message(tmp_path: Path) -> None:
    write_model(tmp_path / "models" / "1")
    # A deadline no model call can meet: every answer comes too late, and each request must still end.
    with running_server(tmp_path / "models", tmp_path / "server.log", INFERENCE_TIMEOUT_S="0.000001") as server:
        response = httpx.post(f"{server.url}/predict", files={"file": ("cat.jpg", jpeg(), "image/jpeg")}, timeout=30)
        assert response.status_code == 504
        assert response.json()["detail"].startswith("The server is too slow right now: no answer from the model "
                                                    "within 1e-06 s")
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200


def test_uploads_queued_for_decoding_get_504_at_the_deadline_not_after_the_queue(tmp_path: Path) -> None:
    """INFERENCE_TIMEOUT_S counts from the request, not from the batcher: with one decode thread, eight uploads
    of 0.4 s of decoding each would otherwise answer the last after 3 s, past a 0.5 s deadline."""
    write_model(tmp_path / "models" / "1")
    settings = Settings(model_dir=tmp_path / "models", inference_threads=1, decode_threads=1, model_poll_seconds=0,
                        inference_timeout_s=0.5)
    large = files.flat_png(6000, 6000, color_type=2)  # 36 MP, under the pixel limit: decoded in the pool

    def post(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = httpx.post(f"{url}/predict", files={"file": ("large.png", large, "image/png")}, timeout=30)
        return response, time.monotonic() - started

    with serving_in_thread(settings) as (url, _), ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(post, range(8)))
        statuses = [response.status_code for response, _ in answers]
        assert set(statuses) <= {200, 504} and 504 in statuses, statuses
        for response, _ in answers:
            if response.status_code == 504:
                assert response.json()["detail"].startswith("The server is too slow right now: no answer")
        assert max(elapsed for _, elapsed in answers) < 0.5 + 1.5, [round(elapsed, 2) for _, elapsed in answers]
        assert httpx.post(f"{url}/predict", files={"file": ("cat.jpg", jpeg(), "image/jpeg")}, timeout=30).is_success
