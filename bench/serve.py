"""Serving benchmark: the real service against the model's in-process ceiling, in one run.

    python bench/serve.py [--model-dir models/cifar10] [--seconds 20] [--json docs/bench-serve.json]

Steps, each in its own process so none inherits another's threads or memory:
1. In-process ceiling of every accuracy level: ``LoadedModel.predict`` (the service's own call path:
   OpenVINO, bfloat16 where the model chose it), images/s at each batch size, single-image latency, and
   float32 forced at batch 1 and 64; the same for today's service (``--today``, version 4, through
   TensorFlow: bench/tensorflow_runtime.py, the path the service took before OpenVINO).
2. Today's service (``bench/tensorflow_app.py``: the same app with TensorFlow computing the batches,
   ``--today`` model, its default level): the baseline the targets compare with.
3. The new service (``python -m app``, OpenVINO), each level asked with ``?level=``, adaptation off: time
   from process start to ``/readyz`` 200, then closed-loop load at each concurrency (1, 64, 256) with ``wrk`` posting
   real CIFAR-10 JPEGs as multipart uploads (bench/load.lua), then RSS/PSS of every process.
4. The highest concurrency without a level, load adaptation on (``--adapt-queue``): the unnamed
   requests that meet a deep queue are answered at the cheaper level.
5. Optional: 2 workers (``--alt-workers 2``: every level, in the turns of 3), a small queue bound
   (``--overload-queue 32``), the naive app (``--skip ''``: bench/naive_app.py, ``model.predict`` per request).
6. The serving protocols' cheapest request: one server, ``/predict`` with the 32x32 JPEGs beside
   ``/v2/models/<name>/infer`` with the same images as binary UINT8 tensors (no decode), both at
   ``--protocol-level`` and ``--protocol-connections`` (fast, 64), in ``--protocol-rounds`` alternating turns
   so that a drift in the machine's speed weighs on both alike; ``--skip protocol`` leaves it out. Each
   route's server CPU per answer is split into the event loop's thread (HTTP, parsing, decoding) and the
   rest (the inference threads).

CPU time of the server, of wrk and of everything else is read from /proc around each level, so a
busy machine shows in the figures instead of silently distorting them. Prints one table and
writes the same figures as JSON to bench/results/ (and to ``--json`` if given).
"""

import argparse
import http.client
import io
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import ADAPT_QUEUE_IMAGES_DEFAULT  # noqa: E402
from bench.arguments import at_least_one  # noqa: E402
from bench.paths import json_output, recorded_path  # noqa: E402
from core.contract import CLASS_NAMES  # noqa: E402

BOUNDARY = "cifar10-bench-boundary-7d1f"
ARCHIVE = "shared/data/cifar10-train-jpeg.tar.gz"
DEFAULT_DATA = [ROOT.parent / ARCHIVE, ROOT / ARCHIVE]
CEILING_BATCHES = (1, 8, 32, 64, 256)
TICKS = os.sysconf("SC_CLK_TCK")
CPUS = len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- inputs

class ArchiveError(ValueError):
    """An archive named on the command line that holds no CIFAR-10 JPEGs to load."""


def load_jpegs(archive: Path | None, count: int) -> tuple[list[bytes], str]:
    """``count`` real CIFAR-10 JPEGs, one per class in turn, read from the start of ``archive`` or, without one,
    the shared archive; random pictures only when no archive was named and the shared one is not here. A named
    archive that is missing or holds none raises ArchiveError: measuring noise instead would pass unnoticed."""
    if archive is not None and not archive.is_file():
        raise ArchiveError(f"{archive}: no such file. Pass the CIFAR-10 JPEG archive "
                           "(cifar10-train-jpeg.tar.gz), or leave the option out.")
    for path in [archive] if archive else DEFAULT_DATA:
        if path and path.is_file():
            per_class = -(-count // len(CLASS_NAMES))
            found: dict[str, list[bytes]] = {name: [] for name in CLASS_NAMES}
            try:
                with tarfile.open(path, "r:*") as tar:
                    for member in tar:
                        parts = Path(member.name).parts
                        if (member.isfile() and len(parts) >= 2 and parts[-2] in found
                                and len(found[parts[-2]]) < per_class):
                            found[parts[-2]].append(tar.extractfile(member).read())  # type: ignore[union-attr]
                            if all(len(v) >= per_class for v in found.values()):
                                break
            except (tarfile.TarError, EOFError, OSError, zlib.error):  # not a tar, cut short, or unreadable
                raise ArchiveError(f"{path}: not a tar archive (.tar, .tar.gz) that can be read whole.") from None
            images = [img for group in zip(*found.values(), strict=False) for img in group][:count]
            if images:
                return images, recorded_path(path)
            if archive is not None:
                raise ArchiveError(f"{archive}: no JPEGs in CIFAR-10 class folders (train/<class>/NNNN.jpg).")
    # No archive here: random 32x32 pictures saved the way the archive is (JPEG q75, 4:2:0).
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
        images.append(buffer.getvalue())
    return images, "synthetic (no archive found)"


def multipart_body(jpeg: bytes, index: int) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{index:04d}.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


def write_bodies(folder: Path, jpegs: list[bytes]) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    bodies = [multipart_body(jpeg, i) for i, jpeg in enumerate(jpegs)]
    for i, body in enumerate(bodies):
        (folder / f"body-{i:04d}.bin").write_bytes(body)
    return bodies


def v2_binary_body(pixels: bytes, level: str) -> tuple[bytes, int]:
    """An Open Inference Protocol infer request for one image as a binary UINT8 tensor (the binary tensor data
    extension: JSON header, then the 3,072 pixel bytes), probabilities asked in binary too; and the header's
    length, which Inference-Header-Content-Length carries."""
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                     "parameters": {"binary_data_size": len(pixels)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
                         "parameters": {"level": level}}, separators=(",", ":")).encode()
    return header + pixels, len(header)


def write_v2_bodies(folder: Path, jpegs: list[bytes], level: str) -> tuple[list[bytes], int]:
    """The same images as the uploads, as the pixels /predict's decoder makes of them: the request a client
    that already holds decoded pixels sends, with no decode left to the server."""
    from core.preprocessing import image_bytes_to_array

    folder.mkdir(parents=True, exist_ok=True)
    bodies, header_length = [], 0
    for i, jpeg in enumerate(jpegs):
        body, header_length = v2_binary_body(image_bytes_to_array(jpeg).tobytes(), level)
        (folder / f"body-{i:04d}.bin").write_bytes(body)
        bodies.append(body)
    return bodies, header_length  # every body has the same header (same shape, same size)


# ---------------------------------------------------------------- in-process ceiling (child process)

def measure_ceiling(model_dir: Path, threads: int, seconds: float, batches: list[int],
                    runtime: str = "openvino") -> dict[str, Any]:
    """Per level: images/s at each batch size and single-image latency, through ``LoadedModel.predict`` (the
    service's call path: bfloat16 at the batch sizes the model chose it for, on a CPU that has it), plus the
    same at batch 1 and 64 with float32 forced, for the precision comparison."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import core.versions
    from core.level_table import FLOAT32_LEVELS
    from core.runtime import RuntimeOptions
    from core.versions import load_model

    if runtime == "tensorflow":
        from bench.tensorflow_runtime import load_tensorflow

        core.versions.runtime_loader = load_tensorflow
    options = RuntimeOptions(threads=threads)
    model = load_model(model_dir, options=options)
    float32_only = load_model(model_dir, options=options, level_settings=FLOAT32_LEVELS)
    busy_before, total_before = machine_cpu_seconds()
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (max(batches), 32, 32, 3), dtype=np.uint8)

    def images_per_s(predict: Any, images: np.ndarray) -> float:
        for _ in range(3):  # first calls trace and allocate
            predict(images)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            predict(images)
            calls += 1
        return round(len(images) * calls / (time.perf_counter() - started), 1)

    levels = {}
    for level in model.level_names:
        def served(images: np.ndarray, level: str = level) -> np.ndarray:
            return model.predict(images, level)

        by_batch = {size: images_per_s(served, pool[:size]) for size in batches}
        single = []
        deadline = time.perf_counter() + max(seconds, 1.0)
        while len(single) < 50 or (time.perf_counter() < deadline and len(single) < 2000):
            started = time.perf_counter()
            served(pool[:1])
            single.append((time.perf_counter() - started) * 1000)
        best = max(by_batch, key=lambda k: by_batch[k])
        levels[level] = {
            "images_per_s_by_batch": by_batch,
            "best_batch": best,
            "images_per_s": by_batch[best],
            "precision": model.level_table.precision(level),
            "float32_images_per_s": {size: images_per_s(lambda x, level=level: float32_only.predict(x, level),
                                                        pool[:size]) for size in (1, 64) if size <= len(pool)},
            "single_image_ms": {"p50": round(statistics.median(single), 3), "p90": round(_pct(single, 90), 3),
                                "mean": round(statistics.fmean(single), 3), "calls": len(single)},
            # As served: the export's figure for the precision the level runs in (int8 differs from float32).
            "val_accuracy": model.level_table.figures[level].get("val_accuracy"),
        }
    busy_after, total_after = machine_cpu_seconds()
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    total = (total_after - total_before) or 1e-9
    return {
        # Shares of all CPUs while measuring: "other" above a few per cent means a distorted ceiling.
        "cpu_share": {"self": round(own / total, 3), "other": round(max(busy_after - busy_before - own, 0) / total, 3)},
        "threads": threads,
        "runtime": runtime,
        "model": {"name": model.name, "version": model.version, "path": recorded_path(model.path)},
        "default_level": model.default_level,
        "levels": levels,
    }


def run_ceiling(args: argparse.Namespace, model_dir: Path, runtime: str = "openvino") -> dict[str, Any]:
    command = [sys.executable, __file__, "ceiling", "--runtime", runtime, "--model-dir", str(model_dir),
               "--threads", str(CPUS),
               "--ceiling-seconds", str(args.ceiling_seconds),
               "--ceiling-batches", ",".join(map(str, args.ceiling_batches))]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise SystemExit(f"in-process ceiling failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- processes and /proc

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    result = {}
    for pid in pids:
        if fields := _stat(pid):
            result[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return result


def event_loop_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the main thread's, every other thread's) CPU seconds of process ``pid``: uvicorn runs the event loop on
    the main thread, the model on its inference threads."""
    main = rest = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        if task.name == str(pid):
            main += seconds
        else:
            rest += seconds
    return main, rest


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS, sum(values[:8]) / TICKS


def memory_mib(pid: int) -> dict[str, float]:
    figures = {}
    for name, key in (("status", "VmRSS:"), ("smaps_rollup", "Pss:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    figures[key.rstrip(":").lower()] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return figures


class Server:
    """A uvicorn process (the service or the naive app) with its log, its start time and readiness."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, ready_path: str,
                 log_dir: Path) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        # /metrics answers from whichever worker takes the connection: counts are one worker's, not the service's.
        self.one_metrics_view = int(env.get("WORKERS", "1")) == 1
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from process start to the first 200 from the readiness path."""
        deadline = self.started + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.process.returncode}; see {self.log_path}:\n"
                                 + self.log_path.read_text()[-2000:])
            try:
                status, _, _ = http_request(self.port, "GET", self.ready_path, timeout=1.0)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise SystemExit(f"{self.name} not ready within {timeout_s:.0f} s; see {self.log_path}")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def memory(self) -> dict[str, Any]:
        per_process = {pid: memory_mib(pid) for pid in self.pids()}
        per_process = {pid: m for pid, m in per_process.items() if m}
        return {
            "rss_mib_total": round(sum(m.get("vmrss", 0) for m in per_process.values()), 1),
            "pss_mib_total": round(sum(m.get("pss", 0) for m in per_process.values()), 1),
            "rss_mib_by_process": [m.get("vmrss", 0) for m in per_process.values()],
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0,
                 connection: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        if connection is None:
            conn.close()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


WARMING_UP_GRACE_S = 60.0


def check_answers(port: int, bodies: list[bytes]) -> None:
    """A few uploads one by one: 200 and a well-formed answer, before any load is sent.

    With several workers the first 200 from /readyz says one of them is warm; a 503 "warming up"
    from another is its documented answer, so it is retried until every worker has answered.
    """
    grace_ends = time.perf_counter() + WARMING_UP_GRACE_S
    for body in bodies[:10]:
        status, _, content = http_request(port, "POST", "/predict", body, MULTIPART, timeout=60)
        while status == 503 and b"warming up" in content and time.perf_counter() < grace_ends:
            time.sleep(0.1)
            status, _, content = http_request(port, "POST", "/predict", body, MULTIPART, timeout=60)
        answer = json.loads(content)
        if status != 200 or answer.get("label") not in CLASS_NAMES:
            raise SystemExit(f"/predict answered {status}: {content[:300]!r}")
        total = sum(answer["probabilities"].values())
        if abs(total - 1.0) > 1e-3:
            raise SystemExit(f"probabilities sum to {total}, not 1")


# ---------------------------------------------------------------- load

class Probe(threading.Thread):
    """One request every ``interval_s`` on its own connection, timing 200s and 503s apart, checking Retry-After."""

    def __init__(self, port: int, body: bytes, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.interval_s = port, body, interval_s
        self.samples: list[tuple[int, float, bool]] = []
        self.failures = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_event.wait(self.interval_s):
            started = time.perf_counter()
            try:
                status, headers, _ = http_request(self.port, "POST", "/predict", self.body, MULTIPART,
                                                  connection=conn)
            except (OSError, http.client.HTTPException):
                self.failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            retry_after = "retry-after" in {k.lower() for k in headers}
            self.samples.append((status, (time.perf_counter() - started) * 1000, retry_after))
        conn.close()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.samples), "failures": self.failures}
        for status in sorted({s for s, _, _ in self.samples}):
            times = [ms for s, ms, _ in self.samples if s == status]
            out[str(status)] = {"count": len(times), "p50_ms": round(_pct(times, 50), 1),
                                "p99_ms": round(_pct(times, 99), 1), "max_ms": round(max(times), 1)}
            if status == 503:
                out[str(status)]["all_have_retry_after"] = all(r for s, _, r in self.samples if s == 503)
        return out


def run_wrk(server: Server, connections: int, seconds: float, body_dir: Path, body_count: int,
            report: Path, timeout_s: float, probe_body: bytes | None = None, path: str = "/predict",
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``headers``: the requests' headers (default: the multipart Content-Type of the upload bodies)."""
    env = {**os.environ, "WRK_BODIES_DIR": str(body_dir), "WRK_BODIES": str(body_count),
           "WRK_BOUNDARY": BOUNDARY, "WRK_REPORT": str(report),
           "WRK_HEADERS": "|".join(f"{name}: {value}" for name, value in (headers or {}).items())}
    # One wrk thread is enough for 256 connections on loopback and costs the least CPU.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s:g}s",
               "-s", str(ROOT / "bench/load.lua"), f"http://127.0.0.1:{server.port}{path}"]
    pids = server.pids()
    server_before = cpu_seconds(pids)
    busy_before, total_before = machine_cpu_seconds()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    probe = Probe(server.port, probe_body, 0.05) if probe_body else None
    started = time.perf_counter()
    if probe:
        probe.start()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if probe:
        probe.stop_event.set()
        probe.join()
    wall = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after, total_after = machine_cpu_seconds()
    server_after = cpu_seconds(pids)
    if out.returncode != 0 or not report.is_file():
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr}{out.stdout}")
    figures = json.loads(report.read_text())
    wrk_cpu = ((children_after.ru_utime + children_after.ru_stime)
               - (children_before.ru_utime + children_before.ru_stime))
    server_cpu = sum(server_after.get(p, 0) - server_before.get(p, 0) for p in pids)
    machine_total = (total_after - total_before) or 1e-9
    machine_busy = busy_after - busy_before
    statuses = {int(k): v for k, v in figures["statuses"].items()}
    socket_errors = sum(v for k, v in figures["errors"].items() if k != "status")
    duration_s = figures["duration_us"] / 1e6
    lat = figures["latency_us"]
    result = {
        "concurrency": connections,
        "seconds": round(duration_s, 2),
        "requests": figures["requests"],
        "ok": statuses.get(200, 0),
        "rejected_503": statuses.get(503, 0),
        "other_status": {str(k): v for k, v in statuses.items() if k not in (200, 503)},
        "socket_errors": {k: v for k, v in figures["errors"].items() if k != "status" and v},
        "errors": socket_errors + sum(v for k, v in statuses.items() if k not in (200, 503)),
        "requests_per_s": round(figures["requests"] / duration_s, 1),
        "ok_per_s": round(statuses.get(200, 0) / duration_s, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in lat.items()},
        # Shares of the whole machine (all CPUs) over the level's wall time.
        "cpu_share": {
            "server": round(server_cpu / (wall * CPUS), 3),
            "server_cores_by_process": [round((server_after.get(p, 0) - server_before.get(p, 0)) / wall, 3)
                                        for p in pids],
            "load_generator": round(wrk_cpu / (wall * CPUS), 3),
            "other": round(max(machine_busy - server_cpu - wrk_cpu, 0) / machine_total, 3),
            "idle": round(1 - machine_busy / machine_total, 3),
        },
    }
    if probe:
        result["probe"] = probe.summary()
    return result


def warm(server: Server, connections: int, seconds: float, body_dir: Path, body_count: int, report: Path,
         path: str = "/predict", headers: dict[str, str] | None = None) -> None:
    """A short unrecorded run: connections, pools and TensorFlow's kernels for these batch sizes warm up."""
    if seconds > 0:
        run_wrk(server, connections, seconds, body_dir, body_count, report, timeout_s=60, path=path, headers=headers)


def drain(port: int, metrics: bool, timeout_s: float = 30) -> None:
    """Wait until requests left over from the previous run are done, so they do not count in the next.

    The service: until its images counter stops moving. The naive app: one request to it returns only
    once its blocked event loop has worked through what was queued before."""
    deadline = time.perf_counter() + timeout_s
    if not metrics:
        http_request(port, "GET", "/healthz", timeout=timeout_s)
        return
    last = scrape_batches(port)
    while time.perf_counter() < deadline:
        time.sleep(0.25)
        now = scrape_batches(port)
        if now == last:
            return
        last = now


def scrape_batches(port: int) -> tuple[float, float]:
    """(images, model calls) so far, from /metrics (one worker's view when there are several)."""
    _, _, content = http_request(port, "GET", "/metrics", timeout=60)
    images = calls = 0.0
    for line in content.decode().splitlines():
        if line.startswith("cifar10_inference_batch_size_sum"):
            images = float(line.split()[-1])
        elif line.startswith("cifar10_inference_batch_size_count"):
            calls = float(line.split()[-1])
    return images, calls


# ---------------------------------------------------------------- the runs

def shown_env(env: dict[str, str]) -> dict[str, str]:
    """The settings a run records: what the server was given but its address, MODEL_DIR as a repository path."""
    shown = {k: v for k, v in env.items() if k not in ("HOST", "PORT", "TF_CPP_MIN_LOG_LEVEL")}
    if "MODEL_DIR" in shown:
        shown["MODEL_DIR"] = recorded_path(shown["MODEL_DIR"])
    return shown


def resolved_settings(env: dict[str, str]) -> dict[str, Any]:
    """The settings the service will run with: its defaults, with ``env`` applied as the service applies it."""
    from app.settings import Settings

    fields = Settings.model_fields
    overrides = {key.lower(): value for key, value in env.items() if key.lower() in fields}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return {name: getattr(settings, name) for name in
            ("workers", "inference_threads", "decode_threads", "max_batch_size", "max_batch_delay_ms",
             "max_queue_images", "log_level", "default_level", "adapt_queue_images", "adapt_level", "bfloat16", "int8",
             "batch_concurrency")}


def bench_service(args: argparse.Namespace, name: str, levels: list[int], extra_env: dict[str, str],
                  body_dir: Path, bodies: list[bytes], work: Path, probe_at: int | None = None) -> dict[str, Any]:
    """The service alone at each concurrency in ``levels``, no accuracy level asked; at ``probe_at`` a lone
    client times its own requests beside the load."""
    port = args.port
    env = {"MODEL_DIR": str(args.model_dir), "PORT": str(port), "HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.update(args.env)
    env.update(extra_env)
    server = Server(name, [sys.executable, "-m", "app"], env, port, "/readyz", work)
    result: dict[str, Any] = {"name": name, "settings": resolved_settings(env), "env": shown_env(env)}
    try:
        result["ready_s"] = round(server.wait_ready(args.ready_timeout), 2)
        check_answers(port, bodies)
        result["levels"] = [measure_level(args, server, connections, None, body_dir, bodies, work,
                                          probe_body=bodies[0] if connections == probe_at else None)
                            for connections in levels]
        result["memory_after"] = server.memory()
    finally:
        server.stop()
    # uvicorn's supervisor restarts a worker that misses its health check (5 s); say so if it happened.
    result["worker_restarts"] = server.log_path.read_text(errors="replace").count("] died")
    return result


def bench_side_by_side(args: argparse.Namespace, services: list[dict[str, Any]], body_dir: Path,
                       bodies: list[bytes], work: Path) -> dict[str, dict[str, Any]]:
    """Several services up at once (started one after another, each on its own port), measured in turns:
    at each concurrency every service and level once before the next concurrency, so a machine whose load
    changes during the run weighs on the runs being compared alike. An idle service costs no CPU.

    Each entry of ``services``: key, label, env (settings), model_dir (None: --model-dir) and runs, a list
    of (concurrency, accuracy level or None)."""
    started: list[tuple[dict[str, Any], Server, dict[str, Any]]] = []
    try:
        for index, spec in enumerate(services):
            port = args.port + 2 + index
            env = {"MODEL_DIR": str(spec.get("model_dir") or args.model_dir), "PORT": str(port), "HOST": "127.0.0.1",
                   "TF_CPP_MIN_LOG_LEVEL": "2", "MODEL_POLL_SECONDS": "0"}
            env.update(args.env)
            env.update(spec["env"])
            server = Server(spec["key"], spec.get("command") or [sys.executable, "-m", "app"], env, port, "/readyz",
                            work)
            result: dict[str, Any] = {"name": spec["key"], "label": spec["label"], "settings": resolved_settings(env),
                                      "env": shown_env(env),
                                      "levels": []}
            started.append((spec, server, result))
            result["ready_s"] = round(server.wait_ready(args.ready_timeout), 2)
            check_answers(port, bodies)
        for connections in sorted({c for spec in services for c, _ in spec["runs"]}):
            for spec, server, result in started:
                for accuracy_level in [level for c, level in spec["runs"] if c == connections]:
                    result["levels"].append(measure_level(args, server, connections, accuracy_level, body_dir,
                                                          bodies, work))
        for _, server, result in started:
            result["memory_after"] = server.memory()
    finally:
        for _, server, result in started:
            server.stop()
            result["worker_restarts"] = server.log_path.read_text(errors="replace").count("] died")
    return {spec["key"]: result for spec, _, result in started}


def measure_level(args: argparse.Namespace, server: Server, connections: int, accuracy_level: str | None,
                  body_dir: Path, bodies: list[bytes], work: Path, probe_body: bytes | None = None) -> dict[str, Any]:
    """One wrk run (after an unrecorded warm-up) at ``connections``, asking ``accuracy_level`` (None: no level);
    with ``probe_body``, a lone client posting it times its own requests beside the load."""
    port = server.port
    path = "/predict" + (f"?level={accuracy_level}" if accuracy_level else "")
    report = work / f"{server.name}-{accuracy_level or 'default'}-c{connections}.json"
    warm(server, connections, args.warmup, body_dir, len(bodies), report, path)
    drain(port, metrics=True)
    before, answered_before = scrape_batches(port), scrape_answers_by_level(port)
    level = run_wrk(server, connections, args.seconds, body_dir, len(bodies), report, timeout_s=30,
                    probe_body=probe_body, path=path)
    after, answered_after = scrape_batches(port), scrape_answers_by_level(port)
    calls = after[1] - before[1]
    level["accuracy_level"] = accuracy_level
    level["answered_by_level"] = {k: v - answered_before.get(k, 0) for k, v in answered_after.items()
                                  if v - answered_before.get(k, 0) > 0} if server.one_metrics_view else {}
    level["mean_batch"] = round((after[0] - before[0]) / calls, 1) if calls and server.one_metrics_view else None
    level["alive_after"] = server.process.poll() is None and http_request(port, "GET", "/readyz")[0] == 200
    drain(port, metrics=True)
    print(f"  {server.name} {accuracy_level or 'default'} c={connections}: {level['ok_per_s']:.0f} ok/s, "
          f"p50 {level['latency_ms']['p50']} ms, p99 {level['latency_ms']['p99']} ms, 503 {level['rejected_503']}, "
          f"errors {level['errors']}, other {level['cpu_share']['other']:.0%}, answered {level['answered_by_level']}",
          file=sys.stderr)
    return level


def scrape_answers_by_level(port: int) -> dict[str, float]:
    """Images answered so far per accuracy level, from /metrics (absent for a service without levels)."""
    _, _, content = http_request(port, "GET", "/metrics", timeout=60)
    answered = {}
    for line in content.decode().splitlines():
        if line.startswith("cifar10_answers_by_level_total{"):
            answered[line.split('level="', 1)[1].split('"', 1)[0]] = float(line.split()[-1])
    return answered


def bench_protocol(args: argparse.Namespace, body_dir: Path, bodies: list[bytes], jpegs: list[bytes],
                   work: Path) -> dict[str, Any]:
    """One server, at ``--protocol-connections``: /predict with the 32x32 JPEGs and /v2/models/<name>/infer with
    the same images as binary UINT8 tensors, both at ``--protocol-level`` (adaptation off), measured in turns."""
    level, connections = args.protocol_level, args.protocol_connections
    port = args.port + 1
    env = {"MODEL_DIR": str(args.model_dir), "PORT": str(port), "HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "MODEL_POLL_SECONDS": "0", "ADAPT_QUEUE_IMAGES": "0"}
    env.update(args.env)
    server = Server("protocol", [sys.executable, "-m", "app"], env, port, "/readyz", work)
    result: dict[str, Any] = {"name": "protocol", "label": "same server", "settings": resolved_settings(env),
                              "levels": []}
    try:
        result["ready_s"] = round(server.wait_ready(args.ready_timeout), 2)
        check_answers(port, bodies)
        name = json.loads(http_request(port, "GET", "/metadata")[2])["model"]["name"]
        v2_dir = work / "v2-bodies"
        v2_bodies, header_length = write_v2_bodies(v2_dir, jpegs, level)
        v2_headers = {"Content-Type": "application/octet-stream",
                      "Inference-Header-Content-Length": str(header_length)}
        v2_path = f"/v2/models/{name}/infer"
        status, headers, content = http_request(port, "POST", v2_path, v2_bodies[0], v2_headers)
        if status != 200 or "inference-header-content-length" not in {key.lower() for key in headers}:
            raise SystemExit(f"{v2_path} answered {status}: {content[:300]!r}")
        routes = [("/predict", f"/predict?level={level}", body_dir, None),
                  ("/v2 binary uint8", v2_path, v2_dir, v2_headers)]
        turns: dict[str, list[dict[str, Any]]] = {route: [] for route, *_ in routes}
        for _, path, folder, headers_ in routes:
            warm(server, connections, args.warmup, folder, len(jpegs), work / "protocol-warm.json", path, headers_)
        for round_ in range(args.protocol_rounds):
            for route, path, folder, headers_ in routes:
                report = work / f"protocol-{route.split()[0].strip('/').replace('/', '-')}-{round_}.json"
                drain(port, metrics=True)
                before, loop_before = scrape_batches(port), event_loop_cpu_seconds(server.pids()[0])
                run = run_wrk(server, connections, args.seconds / args.protocol_rounds, folder, len(jpegs), report,
                              timeout_s=30, path=path, headers=headers_)
                after, loop_after = scrape_batches(port), event_loop_cpu_seconds(server.pids()[0])
                run.update(images=after[0] - before[0], calls=after[1] - before[1],
                           loop_cpu_s=loop_after[0] - loop_before[0], rest_cpu_s=loop_after[1] - loop_before[1])
                turns[route].append(run)
                print(f"  {route} {level} c={connections} turn {round_ + 1}: {run['ok_per_s']:.0f} ok/s, "
                      f"p50 {run['latency_ms']['p50']} ms, errors {run['errors']}, "
                      f"other {run['cpu_share']['other']:.0%}", file=sys.stderr)
        result["levels"] = [combined_turns(route, level, turns[route]) for route, *_ in routes]
        result["memory_after"] = server.memory()
    finally:
        server.stop()
    return result


def combined_turns(route: str, level: str, turns: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a route's turns: answers and errors summed over their seconds, the turns' median latency
    percentiles and machine shares, and the server's CPU ms per answer on the event loop and elsewhere."""
    seconds, ok = sum(run["seconds"] for run in turns), sum(run["ok"] for run in turns)
    calls, images = sum(run.pop("calls") for run in turns), sum(run.pop("images") for run in turns)
    loop_s, rest_s = sum(run.pop("loop_cpu_s") for run in turns), sum(run.pop("rest_cpu_s") for run in turns)
    return {
        "route": route, "accuracy_level": level, "concurrency": turns[0]["concurrency"],
        "seconds": round(seconds, 2), "requests": sum(run["requests"] for run in turns), "ok": ok,
        "rejected_503": sum(run["rejected_503"] for run in turns), "errors": sum(run["errors"] for run in turns),
        "ok_per_s": round(ok / seconds, 1),
        "ok_per_s_by_turn": [run["ok_per_s"] for run in turns],
        "latency_ms": {key: round(statistics.median(run["latency_ms"][key] for run in turns), 2)
                       for key in turns[0]["latency_ms"]},
        "cpu_share": {key: round(statistics.median(run["cpu_share"][key] for run in turns), 3)
                      for key in ("server", "load_generator", "other", "idle")},
        "server_cpu_ms_per_answer": {"event_loop": round(loop_s * 1000 / max(ok, 1), 2),
                                     "inference_and_other_threads": round(rest_s * 1000 / max(ok, 1), 2)},
        "mean_batch": round(images / calls, 1) if calls else None,
    }


def bench_naive(args: argparse.Namespace, bodies_dir: Path, bodies: list[bytes], work: Path) -> dict[str, Any]:
    port = args.port + 1
    env = {"NAIVE_MODEL_DIR": str(args.model_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "uvicorn", "--app-dir", "bench", "naive_app:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    server = Server("naive", command, env, port, "/healthz", work)
    result: dict[str, Any] = {"name": "naive", "what": "bench/naive_app.py: TFSMLayer in a keras.Model, "
                              "model.predict per request on the event loop, 1 uvicorn worker, TensorFlow's default "
                              "threads"}
    try:
        result["ready_s"] = round(server.wait_ready(args.ready_timeout), 2)
        check_answers(port, bodies)
        result["levels"] = []
        for connections in args.naive_levels:
            report = work / f"naive-c{connections}.json"
            warm(server, connections, min(args.warmup, 2), bodies_dir, len(bodies), report)
            drain(port, metrics=False)
            level = run_wrk(server, connections, args.naive_seconds, bodies_dir, len(bodies), report, timeout_s=60)
            result["levels"].append(level)
            drain(port, metrics=False)
            print(f"  naive c={connections}: {level['ok_per_s']:.0f} ok/s, p50 {level['latency_ms']['p50']} ms",
                  file=sys.stderr)
        result["memory_after"] = server.memory()
    finally:
        server.stop()
    return result


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {"cpu": cpu, "cpus": CPUS, "memory_gib": round(mem_kib / 2**20, 1), "python": platform.python_version(),
            "kernel": platform.release(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "commit": commit, "wrk": (wrk.stdout or wrk.stderr).splitlines()[0]}


def _run(results: dict[str, Any], key: str, concurrency: int, accuracy_level: str | None) -> dict[str, Any] | None:
    for run in (results.get(key) or {}).get("levels", []):
        if run["concurrency"] == concurrency and run.get("accuracy_level") == accuracy_level:
            return run
    return None


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 24, met or missed, with the measured figures (ratios from this one run)."""
    targets = []

    def add(name: str, met: bool, measured: str) -> None:
        targets.append({"target": name, "met": bool(met), "measured": measured})

    ceiling, today_ceiling = results.get("ceiling"), results.get("today_ceiling")
    today64, today256 = _run(results, "today", 64, None), _run(results, "today", 256, None)
    default = (ceiling or {}).get("default_level", "accurate")
    levels = list((ceiling or {}).get("levels", {}))
    if today64:
        base = today64["ok_per_s"]
        run = _run(results, "levels", 64, default)
        if run and ceiling and today_ceiling:
            accuracy = ceiling["levels"][default]["val_accuracy"]
            today_accuracy = today_ceiling["levels"][today_ceiling.get("default_level", default)]["val_accuracy"]
            add(f"default level ({default}) c=64 >= 1.5x today's predictions/s, accuracy within 0.1 points",
                run["ok_per_s"] >= 1.5 * base and abs(accuracy - today_accuracy) <= 0.001,
                f"{run['ok_per_s']:.0f} vs {base:.0f} ok/s = {run['ok_per_s'] / base:.2f}x; validation "
                f"{accuracy:.2%} vs {today_accuracy:.2%}")
        fastest = max(levels, key=lambda name: ceiling["levels"][name]["images_per_s"]) if levels else None
        alternative = (results.get("alternative") or {}).get("label", "")
        for key, how in (("levels", ""), ("alternative", f" with {alternative}")):
            run = _run(results, key, 64, fastest)
            if run:
                add(f"fastest level ({fastest}) c=64{how} >= 5x today's predictions/s", run["ok_per_s"] >= 5 * base,
                    f"{run['ok_per_s']:.0f} vs {base:.0f} ok/s = {run['ok_per_s'] / base:.2f}x")
    for name in levels:
        run = _run(results, "levels", 1, name)
        if run:
            single = ceiling["levels"][name]["single_image_ms"]["p50"]
            add(f"{name}: c=1 p50 <= in-process single image + 2 ms", run["latency_ms"]["p50"] <= single + 2,
                f"{run['latency_ms']['p50']:.1f} ms vs {single:.1f} + 2 ms")
    adaptive = _run(results, "adaptive", 256, None)
    if adaptive and today256:
        add("c=256 with adaptation: p99 <= half of today's, zero non-503 errors",
            adaptive["latency_ms"]["p99"] <= today256["latency_ms"]["p99"] / 2 and adaptive["errors"] == 0,
            f"p99 {adaptive['latency_ms']['p99']:.0f} ms vs today's {today256['latency_ms']['p99']:.0f} ms "
            f"({adaptive['latency_ms']['p99'] / today256['latency_ms']['p99']:.2f}x); {adaptive['errors']} errors, "
            f"{adaptive['rejected_503']} x 503")
    protocol = (results.get("protocol") or {}).get("levels") or []
    if len(protocol) == 2:
        jpeg, v2 = protocol
        add(f"/v2 binary UINT8 c={v2['concurrency']} >= 1.2x /predict 32x32 JPEG, same level ({v2['accuracy_level']})",
            v2["ok_per_s"] >= 1.2 * jpeg["ok_per_s"],
            f"{v2['ok_per_s']:.0f} vs {jpeg['ok_per_s']:.0f} ok/s = "
            f"{v2['ok_per_s'] / max(jpeg['ok_per_s'], 1e-9):.2f}x")
    for key in ("levels", "adaptive"):
        if results.get(key):
            add(f"{key}: time to /readyz 200 <= 3 s", results[key]["ready_s"] <= 3, f"{results[key]['ready_s']} s")
            rss = results[key].get("memory_after", {}).get("rss_mib_total")
            if rss:
                add(f"{key}: RSS after the run <= 250 MiB", rss <= 250, f"{rss:.0f} MiB")
    return targets


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Serving benchmark {results['finished']}: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; "
             f"load average at start {m['load_average_at_start'][0]}; commit {m['commit']}", ""]
    header = (f"{'model, level':<24}{'val acc':>8}{'img/s b1':>9}{'b64':>7}{'best':>7}{'1 img ms':>9}"
              f"{'f32 b1':>8}{'f32 b64':>8}{'other':>6}")
    lines += ["In-process ceiling (LoadedModel.predict, the service's path; f32: float32 forced)", header,
              "-" * len(header)]
    for key in ("today_ceiling", "ceiling"):
        c = results.get(key)
        if not c:
            continue
        for name, lvl in c["levels"].items():
            by = {int(k): v for k, v in lvl["images_per_s_by_batch"].items()}
            f32 = {int(k): v for k, v in lvl.get("float32_images_per_s", {}).items()}
            lines.append(f"{'v' + str(c['model']['version']) + ' ' + name:<24}{lvl['val_accuracy'] or 0:>8.2%}"
                         f"{by.get(1, 0):>9.0f}{by.get(64, 0):>7.0f}{lvl['images_per_s']:>7.0f}"
                         f"{lvl['single_image_ms']['p50']:>9.1f}{f32.get(1, 0):>8.0f}{f32.get(64, 0):>8.0f}"
                         f"{c['cpu_share']['other']:>6.0%}")
    header = (f"{'run':<28}{'conc':>5}{'ok/s':>7}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'503':>7}"
              f"{'err':>5}{'batch':>6}{'other':>6}  answered by level")
    lines += ["", header, "-" * len(header)]
    for key in ("today", "today_engine", "levels", "adaptive", "alternative", "overload", "naive", "protocol"):
        run = results.get(key)
        if not run:
            continue
        for lvl in run.get("levels", []):
            lat, cpu = lvl["latency_ms"], lvl["cpu_share"]
            batch = lvl.get("mean_batch")
            label = (lvl.get("route") or run["label"]) + f" {lvl.get('accuracy_level') or ''}"
            answered = ", ".join(f"{k} {v:.0f}" for k, v in (lvl.get("answered_by_level") or {}).items())
            lines.append(f"{label:<28}{lvl['concurrency']:>5}{lvl['ok_per_s']:>7.0f}{lat['p50']:>8.1f}"
                         f"{lat['p90']:>8.1f}{lat['p99']:>8.1f}{lat['max']:>8.0f}{lvl['rejected_503']:>7}"
                         f"{lvl['errors']:>5}{batch if batch is not None else '-':>6}{cpu['other']:>6.0%}  {answered}")
    lines += lone_request_rows(results)
    for row in (results.get("protocol") or {}).get("levels", []):
        cpu = row.get("server_cpu_ms_per_answer")
        if cpu:
            lines.append(f"{row['route']}: server CPU per answer {cpu['event_loop']:.2f} ms on the event loop, "
                         f"{cpu['inference_and_other_threads']:.2f} ms on other threads; ok/s by turn "
                         f"{', '.join(f'{value:.0f}' for value in row['ok_per_s_by_turn'])}")
    lines += ["ok/s: 200 answers per second (one image each); batch: mean images per model call; other: share of",
              "all CPUs used by processes other than the server and wrk (anything else running on the machine).",
              ""]
    for key in ("today", "today_engine", "levels", "adaptive", "alternative"):
        run = results.get(key)
        if run:
            st = run["settings"]
            rss = run.get("memory_after", {}).get("rss_mib_total", 0)
            lines.append(f"{run['label']}: ready in {run['ready_s']} s, RSS after {rss:.0f} MiB; "
                         f"{run['env'].get('MODEL_DIR')}, {st['workers']} worker(s), "
                         f"max batch {st['max_batch_size']}, queue {st['max_queue_images']}, adapt above "
                         f"{st['adapt_queue_images']} images waiting or computing to {st['adapt_level']}, "
                         f"bfloat16 {st['bfloat16']}, "
                         f"{st['batch_concurrency']} batch(es) at once")
    lines.append("")
    for t in results["targets"]:
        lines.append(f"[{'met' if t['met'] else 'MISSED':>6}] {t['target']}: {t['measured']}")
    return "\n".join(lines)


def lone_request_rows(results: dict[str, Any]) -> list[str]:
    """Issue 24's lone-request target, one row per level: the service's 1-connection p50 against the same
    level's in-process single-image p50 (bench/lone_request.py measures the same in alternating turns)."""
    header = (f"{'1 connection, level':<28}{'in-process':>11}{'service':>9}{'diff':>8}"
              "  target: service <= in-process + 2 ms")
    rows = []
    for ceiling_key, run_key in (("today_ceiling", "today"), ("ceiling", "levels")):
        ceiling = results.get(ceiling_key) or {}
        for name, figures in ceiling.get("levels", {}).items():
            if run_key == "today" and name != ceiling.get("default_level"):
                continue  # today's service answers every request at its default level
            run = _run(results, run_key, 1, None if run_key == "today" else name)
            if run:
                alone, served = figures["single_image_ms"]["p50"], run["latency_ms"]["p50"]
                label = f"v{ceiling['model']['version']} {name}" + (" (today)" if run_key == "today" else "")
                verdict = "(reference)" if run_key == "today" else "met" if served <= alone + 2 else "MISSED"
                rows.append(f"{label:<28}{alone:>8.1f} ms{served:>6.1f} ms{served - alone:>+8.1f}  {verdict}")
    return ["", header, "-" * len(header), *rows] if rows else []


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def service_setting(text: str) -> tuple[str, str]:
    """A service setting given as KEY=VALUE on the command line (argparse ``type=``, for every bench script)."""
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _levels(text: str) -> list[int]:
    """argparse type: a comma-separated list of whole numbers of at least 1, e.g. 1,64,256."""
    numbers = [at_least_one(part.strip()) for part in text.split(",") if part.strip()]
    if not numbers:
        raise argparse.ArgumentTypeError("no number given: a comma-separated list, e.g. 1,64,256")
    return numbers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=Path("models/cifar10"), help="model to serve")
    parser.add_argument("--images", type=Path, default=None,
                        help="ImageFolder archive to take JPEGs from (default: the shared CIFAR-10 archive)")
    parser.add_argument("--image-count", type=at_least_one, default=200, help="distinct JPEGs the load cycles through")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per service level")
    parser.add_argument("--warmup", type=float, default=3, help="unrecorded seconds before each level")
    parser.add_argument("--levels", type=_levels, default=[1, 64, 256], help="service concurrencies")
    parser.add_argument("--today", type=lambda text: Path(text) if text else None, default=Path("models/cifar10/4"),
                        help="the model today's service (TensorFlow) serves, measured alongside as the baseline "
                             "('' for none)")
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "tensorflow"], help=argparse.SUPPRESS)
    parser.add_argument("--adapt-queue", type=int, default=ADAPT_QUEUE_IMAGES_DEFAULT,
                        help="ADAPT_QUEUE_IMAGES for the load-adaptation run at the highest concurrency; 0: skip")
    parser.add_argument("--alt-workers", type=int, default=0,
                        help="also run the service with this many workers (threads divided), every accuracy level "
                             "at --alt-levels, in the side-by-side turns; 0: skip")
    parser.add_argument("--alt-levels", type=_levels, default=[1, 64])
    parser.add_argument("--alt-env", action="append", default=[], type=service_setting, metavar="KEY=VALUE",
                        help="a setting of the --alt-workers service only (repeatable), e.g. INFERENCE_THREADS=2")
    parser.add_argument("--overload-queue", type=int, default=0,
                        help="MAX_QUEUE_IMAGES for the back-pressure run at the highest level; 0: skip")
    parser.add_argument("--naive-levels", type=_levels, default=[1, 64])
    parser.add_argument("--naive-seconds", type=float, default=15, help="measured seconds per naive level")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0, help="seconds per batch size")
    parser.add_argument("--ceiling-batches", type=_levels, default=list(CEILING_BATCHES))
    parser.add_argument("--threads", type=int, default=CPUS, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="naive",
                        help="comma-separated parts to skip: ceiling, side (side-by-side services), naive, protocol")
    parser.add_argument("--protocol-level", default="fast",
                        help="accuracy level of the /predict vs /v2 binary UINT8 pair (both ask it)")
    parser.add_argument("--protocol-connections", type=int, default=64, help="concurrency of that pair")
    parser.add_argument("--protocol-rounds", type=int, default=4,
                        help="alternating turns of that pair, sharing --seconds per route")
    parser.add_argument("--env", action="append", default=[], type=service_setting, metavar="KEY=VALUE",
                        help="service setting for every service run, e.g. --env MAX_BATCH_SIZE=128 (repeatable)")
    parser.add_argument("--port", type=int, default=8765, help="service port; the naive app uses the next one")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--json", type=json_output, default=None,
                        help="also write the JSON here (e.g. docs/bench-serve.json)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "ceiling":
        print(json.dumps(measure_ceiling(args.model_dir, args.threads, args.ceiling_seconds, args.ceiling_batches,
                                         args.runtime)))
        return
    # On SIGTERM (a timeout, a CI stop) unwind normally, so every server this run started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian), or `make bench-serve` does it")
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = ROOT / "bench/results" / f"serve-{stamp}"
    body_dir = work / "bodies"
    try:
        jpegs, source = load_jpegs(args.images, args.image_count)
    except ArchiveError as error:
        raise SystemExit(f"error: {'--images ' if args.images else ''}{error}") from None
    bodies = write_bodies(body_dir, jpegs)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "images": {"source": source, "count": len(jpegs), "mean_bytes": round(statistics.fmean(map(len, jpegs)))},
    }
    print(f"load average {results['machine']['load_average_at_start']}; results in {work}", file=sys.stderr)
    level_names = ("fast", "balanced", "accurate")
    if "ceiling" not in skip:
        print("in-process ceiling, every level ...", file=sys.stderr)
        results["ceiling"] = run_ceiling(args, args.model_dir)
        level_names = tuple(results["ceiling"]["levels"])
        if args.today:
            print(f"in-process ceiling of today's model ({args.today}) ...", file=sys.stderr)
            results["today_ceiling"] = run_ceiling(args, args.today, runtime="tensorflow")
    off = {"ADAPT_QUEUE_IMAGES": "0"}
    top = max(args.levels)
    services: list[dict[str, Any]] = []
    if args.today:
        # Today's service: the same app and settings, TensorFlow computing the batches (bench/tensorflow_app.py).
        services.append({"key": "today", "label": f"today TF (v{args.today.name})", "env": off,
                         "model_dir": args.today, "command": [sys.executable, str(ROOT / "bench/tensorflow_app.py")],
                         "runs": [(c, None) for c in args.levels]})
    services.append({"key": "levels", "label": "levels", "env": off,
                      "runs": [(c, level) for c in args.levels for level in level_names]})
    if args.adapt_queue > 0:
        services.append({"key": "adaptive", "label": f"adaptive >{args.adapt_queue}",
                         "env": {"ADAPT_QUEUE_IMAGES": str(args.adapt_queue)}, "runs": [(top, None)]})
    if args.alt_workers:
        # The HTTP path runs on one event loop per process: where it costs as much as the model, a second
        # process is the way to put both cores on it. Measured in the same turns as the rows it is set against.
        services.append({"key": "alternative",
                         "label": " ".join([f"{args.alt_workers} workers", *(f"{k}={v}" for k, v in args.alt_env)]),
                         "env": {**off, "WORKERS": str(args.alt_workers), **dict(args.alt_env)},
                         "runs": [(c, level) for c in args.alt_levels for level in level_names]})
    if args.alt_workers and "side" in skip:
        print("--alt-workers is measured in the side-by-side turns, which --skip side leaves out", file=sys.stderr)
    if "side" not in skip:
        print("side by side: " + ", ".join(spec["label"] for spec in services) + " ...", file=sys.stderr)
        results.update(bench_side_by_side(args, services, body_dir, bodies, work))
    if args.overload_queue > 0:
        print(f"service with MAX_QUEUE_IMAGES={args.overload_queue} at c={top} ...", file=sys.stderr)
        overload = bench_service(args, "overload", [top], {"MAX_QUEUE_IMAGES": str(args.overload_queue)},
                                 body_dir, bodies, work, probe_at=top)
        overload["label"] = f"queue={args.overload_queue}"
        results["overload"] = overload
    if "protocol" not in skip:
        print(f"/predict and /v2 infer (binary UINT8) at c={args.protocol_connections}, level "
              f"{args.protocol_level} ...", file=sys.stderr)
        results["protocol"] = bench_protocol(args, body_dir, bodies, jpegs, work)
    if "naive" not in skip:
        print("naive app ...", file=sys.stderr)
        naive = bench_naive(args, body_dir, bodies, work)
        naive["label"] = "naive model.predict"
        results["naive"] = naive
    results["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["targets"] = evaluate(results)
    text = table(results)
    results["table"] = text.splitlines()
    print(text)
    shutil.rmtree(body_dir, ignore_errors=True)
    payload = json.dumps(results, indent=2) + "\n"
    (work / "results.json").write_text(payload)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(payload)
        print(f"wrote {work / 'results.json'} and {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
