"""SIGTERM on a real ``python -m app`` process: /readyz turns 503 at once while requests are still
served through the grace period (SHUTDOWN_GRACE_S); then the listener closes, the requests in flight
finish, and the process exits 0."""

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests import hostile_files as files
from tests.servers import Server, spawn_server

IN_FLIGHT = 12
GRACE_S = 4.0
PIECES, PIECE_DELAY_S = 60, 0.15  # each upload takes ~9 s to send: SIGTERM and the grace's end land mid-body
# Bounds on a busy shared machine (2 cores, load 8 seen): how late the listener may close after it should.
CLOSE_SLACK_S = 3.0
EXIT_BOUND_S = 15.0  # after the grace


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


def predict_status(url: str) -> int:
    body, content_type = files.multipart([("file", "new.png", files.good_png())])
    return httpx.post(f"{url}/predict", content=body, headers={"content-type": content_type}, timeout=10).status_code


def seconds_until_refused(url: str, since: float, limit_s: float) -> float:
    """Poll /livez until the connection is refused; seconds from `since` (the SIGTERM) to the refusal."""
    while time.monotonic() - since < limit_s:
        try:
            httpx.get(f"{url}/livez", timeout=2)
        except httpx.ConnectError:
            return time.monotonic() - since
        except (httpx.RemoteProtocolError, httpx.ReadError):
            # Accepted into the backlog just as the listener closed, then dropped unanswered: closed without a
            # reply or reset (each seen once in CI). Not yet a refusal, so poll again; the refusal must still
            # come within the limit.
            pass
        time.sleep(0.05)
    raise AssertionError(f"still accepting connections {limit_s} s after SIGTERM")


def test_sigterm_turns_readyz_503_serves_through_the_grace_then_drains_and_exits_zero(
        trained_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_server(trained_model_dir, tmp_path / "server.log", SHUTDOWN_GRACE_S=str(GRACE_S))
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
        time.sleep(0.2)
        # The routing layer hears first: not ready any more...
        readyz = httpx.get(f"{server.url}/readyz", timeout=5)
        assert (readyz.status_code, readyz.json()) == (503, {"status": "stopping"})
        # ...while new requests are still answered, and the process is alive.
        assert predict_status(server.url) == 200
        assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
        answered_within = time.monotonic() - signalled
        assert answered_within < GRACE_S, "the checks above took longer than the grace: they proved nothing"
        # Then the listener closes, at the end of the grace and not before.
        refused_after = seconds_until_refused(server.url, signalled, GRACE_S + CLOSE_SLACK_S + 10)
        unfinished_at_close = sum(result is None for result in results)
        returncode = server.process.wait(timeout=EXIT_BOUND_S + 30)
        exited_after = time.monotonic() - signalled
        for thread in threads:
            thread.join(30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    print(f"{IN_FLIGHT} in flight at SIGTERM: {results}; refused after {refused_after:.2f} s, "
          f"exit {returncode} after {exited_after:.1f} s")
    assert GRACE_S <= refused_after < GRACE_S + CLOSE_SLACK_S
    assert unfinished_at_close == IN_FLIGHT, "the uploads finished before the drain: it was not tested"
    assert results == [200] * IN_FLIGHT, f"{results}\n{log[-2000:]}"
    assert returncode == 0, log[-2000:]
    assert exited_after < GRACE_S + EXIT_BOUND_S
    assert "ERROR" not in log and "Traceback" not in log


def exits_zero_soon(server: Server, since: float, bound_s: float) -> None:
    try:
        returncode = server.process.wait(timeout=bound_s + 30)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert returncode == 0, server.log()[-2000:]
    assert time.monotonic() - since < bound_s


def test_a_second_sigterm_during_the_grace_stops_at_once(trained_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_server(trained_model_dir, tmp_path / "server.log", SHUTDOWN_GRACE_S="60")
    try:
        server.wait_ready()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503
        assert server.process.poll() is None, "exited before the grace was over"
    finally:
        server.process.send_signal(signal.SIGTERM)
    exits_zero_soon(server, time.monotonic(), bound_s=10.0)


def test_without_a_grace_sigterm_closes_the_listener_and_exits_zero_at_once(
        trained_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_server(trained_model_dir, tmp_path / "server.log", SHUTDOWN_GRACE_S="0")
    try:
        server.wait_ready()
    finally:
        server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert seconds_until_refused(server.url, signalled, 10) < CLOSE_SLACK_S
    exits_zero_soon(server, signalled, bound_s=10.0)
