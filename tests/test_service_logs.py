"""What an operator reads from ``python -m app``: its own three lines, uvicorn's and the access log, and
none of TensorFlow's C++ notices unless LOG_LEVEL=debug; a port in use is one line naming PORT."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings
from core.contract import METADATA_FILE, version_dirs
from core.tensorflow_runtime import import_tensorflow
from tests.servers import REPO, running_server, server_env

# What TensorFlow's C++ side prints at start-up when nobody quiets it (absl's notice, oneDNN, CPU flags).
TENSORFLOW_NOTICES = ("oneDNN", "absl::InitializeLog", "cpu_feature_guard", "I0000")
# An empty value is "not set": the service then decides, as for an operator who never heard of the variable.
UNSET = ""


def served_log(trained_model_dir: Path, tmp_path: Path, log_level: str) -> tuple[str, str]:
    with running_server(trained_model_dir, tmp_path / "server.log", LOG_LEVEL=log_level,
                        TF_CPP_MIN_LOG_LEVEL=UNSET) as server:
        assert httpx.get(f"{server.url}/livez").status_code == 200
        url = server.url
    return server.log(), url


def test_info_log_says_model_addresses_and_ready_and_nothing_of_tensorflow(trained_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    log, url = served_log(trained_model_dir, tmp_path, "info")
    lines = log.splitlines()
    # Every line is a logging line: no stray C++ output between them.
    assert all(re.match(r"(INFO|WARNING):  ", line) for line in lines), log
    assert not [notice for notice in TENSORFLOW_NOTICES if notice in log], log

    version_dir = version_dirs(trained_model_dir)[-1][1]
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    model_lines = [line for line in lines if "serving model" in line]
    assert model_lines == [f"INFO:     serving model shapes version 1 (validation accuracy "
                           f"{metadata['val_accuracy']:.2%} on {metadata['val_images']} images) from {version_dir}"]
    assert [line for line in lines if "web page:" in line] == [f"INFO:     web page: {url}/  API docs: {url}/docs"]
    ready = [re.fullmatch(r"INFO:     ready: model warmed up, (\d+\.\d) s after start", line) for line in lines]
    ready = [match for match in ready if match]
    assert len(ready) == 1, log
    assert 0.5 < float(ready[0][1]) < 180
    # uvicorn's access log is still there.
    assert '"GET /livez HTTP/1.1" 200' in log
    # In order: the model, where to find it, then ready.
    order = [next(i for i, line in enumerate(lines) if marker in line)
             for marker in ("serving model", "web page:", "ready:")]
    assert order == sorted(order)


def test_debug_log_names_the_runtime_of_every_level_and_nothing_of_tensorflow(trained_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    """Serving runs on OpenVINO and never imports TensorFlow, so even at debug none of its notices can appear;
    what debug adds is where each level came from (the export's IR), its precision and the thread count."""
    log, _ = served_log(trained_model_dir, tmp_path, "debug")
    assert "serving model shapes version 1" in log
    [runtime] = [line for line in log.splitlines() if "runtime: OpenVINO" in line]
    # Each level's IR and precision as the export chose them (float32, or int8 where it measured faster).
    chosen = json.loads((version_dirs(trained_model_dir)[-1][1] / METADATA_FILE).read_text())["openvino"]
    for level in ("fast", "balanced", "accurate"):
        assert f"{level} {chosen['ir'][level]}, {chosen['precision'][level]}" in runtime, runtime
    assert not [notice for notice in TENSORFLOW_NOTICES if notice in log], log


def test_a_port_in_use_is_one_line_naming_port_and_exit_1(trained_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=server_env(trained_model_dir, port),
                                capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: PORT {port} is already in use on 127.0.0.1 (another server, or an earlier one still running). "
        f"Stop it, or set PORT to a free port, e.g. PORT={port + 1} make serve."]
    # Said before the model is loaded: no TensorFlow import, no waiting.
    assert elapsed < 5, f"took {elapsed:.1f} s"


@pytest.mark.parametrize(("variables", "line"), [
    ({"PORT": "abc"}, "error: PORT 'abc': Input should be a valid integer"),
    ({"WORKERS": "0"}, "error: WORKERS '0': Input should be greater than or equal to 1"),
    ({"CORS_ORIGINS": "https://example.com"}, "error: CORS_ORIGINS must be a JSON list, e.g. CORS_ORIGINS='[\"https://"),
    ({"METRICS_PORT": "8000", "PORT": "8000"}, "error: METRICS_PORT must differ from PORT (8000)"),
    # Else /explain (26 images a request) would be 503 "retry in a second" forever, with the queue empty.
    ({"MAX_QUEUE_IMAGES": "16", "MAX_BATCH_FILES": "8"}, "error: MAX_QUEUE_IMAGES (16) must be at least 26"),
], ids=["port", "workers", "cors-origins", "metrics-port", "queue-under-a-request"])
def test_a_bad_setting_is_one_line_naming_the_variable_and_exit_1(trained_model_dir: Path, variables: dict[str, str],
                                                                  line: str) -> None:
    # Not pydantic's report: it names fields, and for WORKERS=0 adds two errors about defaults computed from it.
    env = server_env(trained_model_dir, 8000) | variables
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1 and result.stdout == ""
    [said] = result.stderr.splitlines()
    assert said.startswith(line), said


def test_help_lists_every_setting_and_an_argument_is_a_usage_error(tmp_path: Path) -> None:
    """Settings are environment variables: --help names each, and an argument (--port 9) is refused rather than
    ignored by a server that then starts on its defaults."""
    env = server_env(tmp_path / "no-model", 8000)  # neither call may get as far as loading a model
    helped = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m app"), helped.stderr
    for name, field in Settings.model_fields.items():
        assert f"  {name.upper()} (default " in helped.stdout and field.description in helped.stdout, name
    refused = subprocess.run([sys.executable, "-m", "app", "--port", "9"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "unrecognized arguments: --port 9. Settings are environment variables, e.g. PORT=8080" in refused.stderr


def test_log_level_takes_any_case() -> None:
    assert Settings(log_level="INFO").log_level == "info"
    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="verbose")


@pytest.mark.parametrize("host", ["192.0.2.1"])  # TEST-NET-1: never an address of this machine
def test_an_address_not_of_this_machine_is_one_line_naming_host(trained_model_dir: Path, host: str) -> None:
    env = server_env(trained_model_dir, 8000) | {"HOST": host}
    result = subprocess.run([sys.executable, "-m", "app"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot listen on HOST {host}, PORT 8000") and "Set HOST to" in line


def test_asking_for_tensorflow_from_many_threads_leaves_stderr_where_it_was() -> None:
    """predict() asks for TensorFlow on every batch, from every inference thread at once (BATCH_CONCURRENCY), while
    the loader thread loads a new version. Once it is imported that must not touch file descriptor 2: hiding its
    start-up notices there again per call left, now and then, one thread restoring another's /dev/null, and every
    log line after it (a swap's "now serving", errors, the shutdown) was lost for good."""
    original = os.fstat(2)
    import_tensorflow()
    elsewhere: list[os.stat_result] = []

    def ask_repeatedly() -> None:
        for _ in range(2000):
            import_tensorflow()
            now = os.fstat(2)
            if not os.path.samestat(now, original):
                elsewhere.append(now)

    threads = [threading.Thread(target=ask_repeatedly) for _ in range(4)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: any window shows
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert os.path.samestat(os.fstat(2), original), "stderr no longer goes where it went"
    assert not elsewhere, f"stderr pointed elsewhere {len(elsewhere)} times while threads asked for TensorFlow"
