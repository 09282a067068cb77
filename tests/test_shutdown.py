"""SIGTERM during load: requests in flight finish, new connections are refused, the process exits 0."""

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hostile_files as files
from tests.servers import spawn_server

IN_FLIGHT = 12
PIECES, PIECE_DELAY_S = 20, 0.15  # each upload takes ~3 s to send, so SIGTERM lands mid-body
EXIT_BOUND_S = 15.0


def slow_upload(url: str, results: list[object], index: int) -> None:
    body, content_type = files.multipart([("file", f"{index}.png", files.good_png())])
    step = len(body) // PIECES + 1

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), step):
            yield body[start:start + step]
            time.sleep(PIECE_DELAY_S)

    try:
        response = httpx.post(f"{url}/predict", content=pieces(), headers={"content-type": content_type}, timeout=60)
        results[index] = response.status_code
    except httpx.HTTPError as error:
        results[index] = repr(error)


def test_sigterm_drains_in_flight_requests_and_exits_zero(trained_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_server(trained_model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        results: list[object] = [None] * IN_FLIGHT
        threads = [threading.Thread(target=slow_upload, args=(server.url, results, i)) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert all(result is None for result in results), "the uploads finished before SIGTERM: nothing was tested"
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # the listener is closed at once
            httpx.get(f"{server.url}/livez", timeout=5)
        returncode = server.process.wait(timeout=EXIT_BOUND_S + 30)
        exited_after = time.monotonic() - signalled
        for thread in threads:
            thread.join(30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    print(f"{IN_FLIGHT} in flight at SIGTERM: {results}; exit {returncode} after {exited_after:.1f} s")
    assert results == [200] * IN_FLIGHT, f"{results}\n{log[-2000:]}"
    assert returncode == 0, log[-2000:]
    assert exited_after < EXIT_BOUND_S
    assert "ERROR" not in log and "Traceback" not in log


def test_sigterm_while_idle_exits_zero_at_once(trained_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_server(trained_model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
    assert returncode == 0, server.log()[-2000:]
    assert time.monotonic() - started < 5
