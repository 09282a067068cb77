"""Real uvicorn servers for the tests that are about the server itself (slow clients, chunked bodies,
SIGTERM, startup faults, RSS): one ``python -m app`` subprocess each, bound to loopback only. And the
app in process behind Starlette's TestClient, for the tests that need no socket."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Everything startup prints goes to a file: a pipe nobody reads could fill and stall the server.
STARTUP_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(model_dir: Path, port: int, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "CORS_ORIGINS"}
    # SHUTDOWN_GRACE_S 0: each server's stop would otherwise wait out the 5 s grace; tests/test_shutdown.py
    # sets its own grace to test it.
    env.update(MODEL_DIR=str(model_dir), HOST="127.0.0.1", PORT=str(port), INFERENCE_THREADS="1",
               DECODE_THREADS="2", LOG_LEVEL="warning", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               SHUTDOWN_GRACE_S="0")
    env.update(overrides)
    return env


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready within {timeout_s} s:\n{self.log()[-3000:]}")

    def stop(self, timeout_s: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn_server(model_dir: Path, log_path: Path, **env: str) -> Server:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=server_env(model_dir, port, **env),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Server(process, f"http://127.0.0.1:{port}", log_path)


@contextmanager
def running_server(model_dir: Path, log_path: Path, **env: str) -> Iterator[Server]:
    server = spawn_server(model_dir, log_path, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextmanager
def ready_test_client(settings: Settings) -> Iterator[TestClient]:
    """The app in process (TestClient runs its lifespan), once its model has warmed up."""
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        yield client


@contextmanager
def serving_in_thread(settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    """The app under a real uvicorn on loopback, in a thread of this process: real HTTP requests, and the
    test can still reach the app's objects (to break one on purpose). Yields the base URL and the app."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert thread.is_alive() and time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(60)


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc (Linux): no dependency, and cheap enough to sample every few ms."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak RSS of a process, sampled every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_bytes(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
