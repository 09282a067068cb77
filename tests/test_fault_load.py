"""scripts/fault_load.py, the smoke test's load generator, against a real local HTTP server: it must
record every request's own latency and count every failure, or the fault checks would pass blind."""

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from tests.servers import free_port

LOAD = Path(__file__).resolve().parent.parent / "scripts" / "fault_load.py"
SLOW_S = 2.5


class Replica(BaseHTTPRequestHandler):
    """Answers by path: /ok at once, /slow every 4th request after SLOW_S, /busy 503, /limited 429 with
    Retry-After 1 (as nginx's rate limit), /drop hangs up."""

    protocol_version = "HTTP/1.1"  # keep-alive, as nginx answers
    requests = 0
    paths: ClassVar[set[str]] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with Replica.lock:
            Replica.requests += 1
            Replica.paths.add(self.path)
            number = Replica.requests
        if self.path == "/drop":
            self.close_connection = True
            return
        if self.path == "/slow" and number % 4 == 0:
            time.sleep(SLOW_S)
        body = b'{"label": "ship"}'
        self.send_response({"/busy": 503, "/limited": 429}.get(self.path, 200))
        if self.path == "/limited":
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[str]:
    Replica.requests = 0
    Replica.paths = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_load(url: str, tmp_path: Path, duration_s: float = 1.5, connections: int = 4, *options: str) -> dict:
    image = tmp_path / "image.jpg"
    image.write_bytes(b"\xff\xd8\xff" + bytes(2000))
    summary = tmp_path / "summary.json"
    subprocess.run([sys.executable, str(LOAD), "--url", url, "--image", str(image), "--connections", str(connections),
                    "--duration", str(duration_s), "--timeout", "10", "--summary", str(summary), *options],
                   check=True, timeout=60)
    return json.loads(summary.read_text())


def test_a_healthy_server_gives_only_successes_and_fast_latencies(replica: str, tmp_path: Path) -> None:
    summary = run_load(f"{replica}/ok", tmp_path)
    assert summary["requests"] > 20 and summary["ok"] == summary["requests"] == Replica.requests
    assert summary["failed"] == 0 and summary["failures"] == {}
    assert summary["slowest_s"] < 1.0 and summary["over_2s"] == 0


def test_one_slow_request_shows_in_the_slowest_even_when_every_status_is_200(replica: str, tmp_path: Path) -> None:
    summary = run_load(f"{replica}/slow", tmp_path)
    assert summary["failed"] == 0
    # Requests still in flight when the load stops are waited for, so the slow ones count in full.
    assert summary["requests"] == Replica.requests
    assert SLOW_S <= summary["slowest_s"] < SLOW_S + 1.0
    assert summary["over_2s"] >= 1 and summary["slowest_status"] == 200
    assert summary["p50_s"] < 0.5


def test_error_answers_hang_ups_and_refused_connections_are_failures(replica: str, tmp_path: Path) -> None:
    busy = run_load(f"{replica}/busy", tmp_path)
    assert busy["failed"] == busy["requests"] > 0 and busy["failures"] == {"HTTP 503": busy["requests"]}
    dropped = run_load(f"{replica}/drop", tmp_path)
    assert dropped["failed"] == dropped["requests"] > 0 and set(dropped["failures"]) == {"ConnectionError"}
    refused = run_load(f"http://127.0.0.1:{free_port()}/predict", tmp_path, duration_s=0.5)
    assert refused["failed"] == refused["requests"] > 0 and set(refused["failures"]) == {"ConnectionRefusedError"}
    # Each connection pauses after a request that got no answer, instead of spinning on the refusal (which
    # made thousands a second, on the CPU a restarting replica needs): 4 connections, 0.5 s, 50 ms pauses.
    assert refused["requests"] <= 4 * (0.5 / 0.05 + 2), refused["requests"]


def test_the_query_string_is_sent_and_bad_options_are_usage_errors(replica: str, tmp_path: Path) -> None:
    summary = run_load(f"{replica}/ok?level=fast", tmp_path, 0.3, 1)
    assert summary["ok"] > 0 and Replica.paths == {"/ok?level=fast"}
    for options, says in [(["--url", "https://example.org/predict"], "is not an http:// URL"),
                          (["--url", "http://127.0.0.1:80a/predict"], "has a port that is not a number from 0"),
                          (["--image", str(tmp_path / "missing.jpg")], "No such file or directory"),
                          (["--connections", "0"], "0 is below 1"),
                          (["--timeout", "nan"], "nan is below")]:
        arguments = {"--url": f"{replica}/ok", "--image": str(LOAD)} | dict([options])
        result = subprocess.run([sys.executable, str(LOAD), *(item for pair in arguments.items() for item in pair)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, options


def test_sigusr1_marks_the_fault_and_sigterm_stops_the_load(replica: str, tmp_path: Path) -> None:
    image = tmp_path / "image.jpg"
    image.write_bytes(bytes(100))
    summary_path = tmp_path / "summary.json"
    process = subprocess.Popen([sys.executable, str(LOAD), "--url", f"{replica}/slow", "--image", str(image),
                                "--connections", "2", "--summary", str(summary_path)])
    time.sleep(1.0)
    process.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=SLOW_S + 10) == 0
    summary = json.loads(summary_path.read_text())
    assert 0.5 < summary["fault_after_s"] < summary["seconds"]
    assert 0 < summary["slowest_before_fault_s"] <= summary["slowest_s"]
    assert summary["requests"] == Replica.requests > 0 and summary["failed"] == 0


def test_rate_caps_the_requests_a_second_across_connections(replica: str, tmp_path: Path) -> None:
    summary = run_load(f"{replica}/ok", tmp_path, 2.0, 2, "--rate", "10")
    assert 16 <= summary["requests"] <= 22 and summary["ok"] == summary["requests"]  # 10/s for 2 s, not hundreds


def test_429s_are_counted_and_waited_out_when_told(replica: str, tmp_path: Path) -> None:
    greedy = run_load(f"{replica}/limited", tmp_path, 1.5, 4)
    assert greedy["too_many"] == greedy["failed"] == greedy["requests"] > 40 and greedy["server_errors"] == 0
    polite = run_load(f"{replica}/limited", tmp_path, 1.5, 4, "--honour-retry-after")
    assert polite["too_many"] == polite["requests"] <= 8  # each connection: a 429, a second's wait, one more
