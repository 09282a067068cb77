"""The service follows its model folder: a real uvicorn process, small models made here, versions dropped in.

A new version is swapped in under concurrent load with no failed request and no old answer after the
first new one; broken versions are skipped (logged once, counted) while the old one keeps answering;
MODEL_VERSION pins; ten swaps leave the process's memory where the first left it.
"""

import json
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core.contract import METADATA_FILE
from tests import hostile_files as files
from tests.model_versions import (
    NotProbabilities,
    WrongSignature,
    corrupt_saved_model,
    drop_metadata,
    publish_copy,
    write_model,
)
from tests.servers import Server, rss_bytes, running_server, spawn_server

POLL_S = "0.2"
CLIENTS = 8
SWAP_DEADLINE_S = 120.0  # generous: the shared CI machine may be busy; the benchmark measures the real time


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    made = {"a": write_model(root / "a", seed=1), "b": write_model(root / "b", seed=2),
            "wrong-signature": write_model(root / "wrong-signature", WrongSignature()),
            "nan": write_model(root / "nan", NotProbabilities())}
    made["corrupt"] = write_model(root / "corrupt", seed=3)
    corrupt_saved_model(made["corrupt"])
    made["no-metadata"] = write_model(root / "no-metadata", seed=4)
    drop_metadata(made["no-metadata"])
    return made


def model_root_with(tmp_path: Path, *exports: Path) -> Path:
    """``models/cifar10/1..n`` holding copies of ``exports``."""
    root = tmp_path / "models" / "cifar10"
    root.mkdir(parents=True)
    for version, export in enumerate(exports, start=1):
        publish_copy(export, root, version)
    return root


def predict_version(url: str) -> int:
    response = httpx.post(f"{url}/predict", files={"file": ("a.png", files.good_png(), "image/png")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["model"]["version"]


def metric(server: Server, name: str) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def wait_for_version(server: Server, version: int, timeout_s: float = SWAP_DEADLINE_S) -> float:
    """Seconds until /metadata reports ``version``."""
    started = time.monotonic()
    while httpx.get(f"{server.url}/metadata", timeout=30).json()["model"]["version"] != version:
        assert time.monotonic() - started < timeout_s, f"version {version} never served:\n{server.log()[-3000:]}"
        assert server.process.poll() is None, server.log()[-3000:]
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Reply:
    sent: float
    received: float
    status: int | str
    version: int | None


@dataclass
class Load:
    """CLIENTS threads posting an image in a loop, each reply recorded with when it was sent and received."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self) -> None:
        upload = files.good_png()
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/predict", files={"file": ("a.png", upload, "image/png")})
                    status: int | str = response.status_code
                    version = response.json()["model"]["version"] if status == 200 else None
                except httpx.HTTPError as error:
                    status, version = repr(error), None
                self.replies.append(Reply(sent, time.monotonic(), status, version))

    def run_while(self, action: Callable[[], None]) -> None:
        threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            action()
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(90)


def test_a_new_version_is_swapped_in_under_load_with_no_failure_and_no_old_answer_after(
        exports: dict[str, Path], tmp_path: Path) -> None:
    root = model_root_with(tmp_path, exports["a"])
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S, LOG_LEVEL="info") as server:
        load = Load(server.url)
        landed: list[float] = []

        def swap_during_load() -> None:
            time.sleep(2.0)  # old-version answers first
            landed.append(time.monotonic())
            publish_copy(exports["b"], root, 2)
            wait_for_version(server, 2)
            time.sleep(2.0)  # and new-version answers after

        load.run_while(swap_during_load)
        log = server.log()
        swaps, version = metric(server, "cifar10_model_swaps_total"), metric(server, "cifar10_model_version")
    statuses = {reply.status for reply in load.replies}
    assert statuses == {200}, f"{statuses}\n{log[-3000:]}"
    first_new = min(reply.received for reply in load.replies if reply.version == 2)
    # Every request sent once a client had seen the new version was answered by it: the swap is one moment.
    late = [reply for reply in load.replies if reply.sent > first_new and reply.version != 2]
    assert not late, f"{len(late)} requests sent after the first version-2 answer got version 1"
    before = [reply for reply in load.replies if reply.version == 1]
    assert before and len(before) < len(load.replies), "the load did not span the swap"
    slowest = max(reply.received - reply.sent for reply in load.replies)
    print(f"{len(load.replies)} requests, all 200; version 2 answered {first_new - landed[0]:.2f} s after it "
          f"landed; slowest request {slowest:.2f} s")
    assert slowest < 30, "a request stalled during the swap"
    assert swaps == 1 and version == 2
    assert len(re.findall(r"now serving model cifar10 version 2 .*\(was version 1\)", log)) == 1, log[-3000:]


def test_broken_versions_are_skipped_once_each_while_the_old_one_answers(exports: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    root = model_root_with(tmp_path, exports["a"])
    broken = {2: ("corrupt", "unloadable"), 3: ("wrong-signature", "contract"), 4: ("no-metadata", "incomplete"),
              5: ("nan", "bad_output")}
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S) as server:
        for version, (export, _reason) in broken.items():
            publish_copy(exports[export], root, version)
        deadline = time.monotonic() + SWAP_DEADLINE_S
        while server.log().count("skipped model version") < len(broken):
            assert time.monotonic() < deadline, server.log()[-3000:]
            assert predict_version(server.url) == 1
            time.sleep(0.1)
        time.sleep(10 * float(POLL_S))  # ten more looks at the folder: none may log or count them again
        assert predict_version(server.url) == 1
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
        log = server.log()
        rejected = {reason: metric(server, f'cifar10_model_versions_rejected_total{{reason="{reason}"}}')
                    for _, reason in broken.values()}
        # A good version above the broken ones is still picked up.
        publish_copy(exports["b"], root, 6)
        wait_for_version(server, 6)
        assert predict_version(server.url) == 6
        assert metric(server, "cifar10_model_swaps_total") == 1
    for version, (_export, reason) in broken.items():
        lines = [line for line in log.splitlines() if f"skipped model version {version} " in line]
        assert len(lines) == 1 and f"({reason})" in lines[0] and "still serving version 1" in lines[0], log[-3000:]
    assert rejected == dict.fromkeys(rejected, 1.0)
    assert "Traceback" not in log


def test_model_version_pins_one_version(exports: dict[str, Path], tmp_path: Path) -> None:
    root = model_root_with(tmp_path, exports["a"], exports["b"])
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S, MODEL_VERSION="1") as server:
        assert predict_version(server.url) == 1
        publish_copy(exports["b"], root, 3)
        time.sleep(10 * float(POLL_S))
        assert predict_version(server.url) == 1
        assert httpx.get(f"{server.url}/metadata", timeout=30).json()["model"]["version"] == 1
        assert metric(server, "cifar10_model_swaps_total") == 0


def test_a_pinned_version_that_is_absent_stops_the_start_with_one_line(exports: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    root = model_root_with(tmp_path, exports["a"])
    server = spawn_server(root, tmp_path / "server.log", MODEL_VERSION="7")
    assert server.process.wait(timeout=60) == 3
    errors = [line for line in server.log().splitlines() if line.startswith("ERROR:") and "MODEL_VERSION" in line]
    assert len(errors) == 1 and f"{root / '7'} does not exist (versions there: 1)" in errors[0]


@pytest.mark.parametrize(("export", "reason"), [("corrupt", "unloadable"), ("nan", "bad_output")])
def test_a_broken_highest_version_at_start_falls_back_to_the_next(exports: dict[str, Path], tmp_path: Path,
                                                                  export: str, reason: str) -> None:
    """A version that loads but answers NaN was served, and the service never became ready."""
    root = model_root_with(tmp_path, exports["a"], exports[export])
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S) as server:
        assert predict_version(server.url) == 1
        time.sleep(10 * float(POLL_S))
        log = server.log()
        assert metric(server, f'cifar10_model_versions_rejected_total{{reason="{reason}"}}') == 1
    assert log.count(f"skipped model version 2 ({reason})") == 1, log[-3000:]


def test_a_renamed_model_is_refused_and_a_dangling_link_does_not_hide_a_version(exports: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    """A version whose metadata.json names another model turned /v1/models/cifar10 and /v2/.../ready into 404s
    (readiness probes included) once swapped in: it is refused, and the old one keeps serving. A version holding
    a symbolic link to nothing could not be fingerprinted, so it was never loaded and never reported."""
    root = model_root_with(tmp_path, exports["a"])
    renamed = tmp_path / "renamed"
    shutil.copytree(exports["b"], renamed)
    metadata = json.loads((renamed / METADATA_FILE).read_text())
    (renamed / METADATA_FILE).write_text(json.dumps({**metadata, "name": "cifar10-wide"}))
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S) as server:
        publish_copy(renamed, root, 2)
        deadline = time.monotonic() + SWAP_DEADLINE_S
        while "skipped model version 2 " not in server.log():
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.1)
        assert predict_version(server.url) == 1
        assert httpx.get(f"{server.url}/v2/models/cifar10/ready", timeout=30).status_code == 200
        staging = root / ".copying-3"
        shutil.copytree(exports["b"], staging)
        (staging / "notes.txt").symlink_to(tmp_path / "nowhere")
        staging.rename(root / "3")
        wait_for_version(server, 3)
        assert predict_version(server.url) == 3
        log = server.log()
    [skipped] = [line for line in log.splitlines() if "skipped model version 2 " in line]
    assert "(contract)" in skipped and "names the model 'cifar10-wide', but this server serves 'cifar10'" in skipped
    assert "Traceback" not in log


def test_ten_swaps_leave_memory_where_the_first_left_it(tmp_path: Path) -> None:
    """Two ~25 MB models alternating as versions 2..11: a model leaked per swap would add ~25 MB each time."""
    exports = {name: write_model(tmp_path / "exports" / name, seed=seed, hidden=2048)
               for name, seed in (("a", 1), ("b", 2))}
    root = model_root_with(tmp_path, exports["a"])
    rss: dict[int, int] = {}
    with running_server(root, tmp_path / "server.log", MODEL_POLL_SECONDS=POLL_S) as server:
        for version in range(2, 12):
            publish_copy(exports["b" if version % 2 else "a"], root, version)
            wait_for_version(server, version)
            for _ in range(5):
                assert predict_version(server.url) == version
            time.sleep(1.0)  # the old model's last batch is done and it has been collected
            rss[version] = rss_bytes(server.pid)
    # Medians of the first and last five swaps: a leak grows every swap, while the allocator holds a freed
    # model's ~25 MB for a swap or two now and then (seen at one swap in ten, either half).
    growth = statistics.median(list(rss.values())[5:]) / statistics.median(list(rss.values())[:5]) - 1
    print("RSS MiB after each swap: " + ", ".join(f"v{v} {b / 2**20:.0f}" for v, b in rss.items())
          + f"; last five swaps {growth:+.1%} of the first five (medians)")
    assert growth <= 0.10
