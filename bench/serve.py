"""Serving benchmark: the real service against the model's in-process ceiling, in one run.

    python bench/serve.py [--model-dir models/cifar10] [--seconds 20] [--json docs/bench-serve.json]

Steps, each in its own process so none inherits another's threads or memory:
1. In-process ceiling: the SavedModel's ``serving_default`` called directly (``app.model``, the
   service's own call path), images/s at each batch size and single-image latency.
2. The service (``python -m app``, the settings' defaults unless overridden): time from process
   start to ``/readyz`` 200, then closed-loop load at each concurrency with ``wrk`` posting real
   CIFAR-10 JPEGs as multipart uploads (bench/load.lua), then RSS/PSS of every process.
3. The service with 2 workers (threads divided) at concurrency 1 and 64: the worker trade-off.
4. The highest concurrency on a service restarted with a small queue bound: back-pressure.
   A probe thread sends a few requests alongside and times 200s and 503s separately.
5. The naive app (bench/naive_app.py: ``model.predict`` per request) at concurrency 1 and 64.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.contract import CLASS_NAMES  # noqa: E402

BOUNDARY = "cifar10-bench-boundary-7d1f"
ARCHIVE = "shared/data/cifar10-train-jpeg.tar.gz"
DEFAULT_DATA = [ROOT.parent / ARCHIVE, ROOT / ARCHIVE, Path("/work") / ARCHIVE]
CEILING_BATCHES = (1, 8, 16, 32, 64, 128, 256, 512)
TICKS = os.sysconf("SC_CLK_TCK")
CPUS = len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- inputs

def load_jpegs(archive: Path | None, count: int) -> tuple[list[bytes], str]:
    """``count`` real CIFAR-10 JPEGs, one per class in turn, read from the start of the shared archive."""
    for path in [archive] if archive else DEFAULT_DATA:
        if path and path.is_file():
            per_class = -(-count // len(CLASS_NAMES))
            found: dict[str, list[bytes]] = {name: [] for name in CLASS_NAMES}
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    parts = Path(member.name).parts
                    if member.isfile() and len(parts) >= 2 and parts[-2] in found and len(found[parts[-2]]) < per_class:
                        found[parts[-2]].append(tar.extractfile(member).read())  # type: ignore[union-attr]
                        if all(len(v) >= per_class for v in found.values()):
                            break
            images = [img for group in zip(*found.values(), strict=False) for img in group][:count]
            if images:
                return images, str(path)
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


# ---------------------------------------------------------------- in-process ceiling (child process)

def measure_ceiling(model_dir: Path, threads: int, seconds: float, batches: list[int]) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from app.model import load_model

    model = load_model(model_dir, tensorflow_threads=threads)
    busy_before, total_before = machine_cpu_seconds()
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (max(batches), 32, 32, 3), dtype=np.uint8)
    by_batch = {}
    for size in batches:
        images = pool[:size]
        for _ in range(3):  # first calls trace and allocate
            model.predict(images)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            model.predict(images)
            calls += 1
        elapsed = time.perf_counter() - started
        by_batch[size] = round(size * calls / elapsed, 1)
    single = []
    one = pool[:1]
    deadline = time.perf_counter() + max(seconds, 1.0)
    while len(single) < 50 or (time.perf_counter() < deadline and len(single) < 2000):
        started = time.perf_counter()
        model.predict(one)
        single.append((time.perf_counter() - started) * 1000)
    best = max(by_batch, key=lambda k: by_batch[k])
    busy_after, total_after = machine_cpu_seconds()
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    total = (total_after - total_before) or 1e-9
    return {
        # Shares of all CPUs while measuring: "other" above a few per cent means a distorted ceiling.
        "cpu_share": {"self": round(own / total, 3), "other": round(max(busy_after - busy_before - own, 0) / total, 3)},
        "threads": threads,
        "model": {"name": model.name, "version": model.version, "path": str(model.path)},
        "images_per_s_by_batch": by_batch,
        "best_batch": best,
        "images_per_s": by_batch[best],
        "single_image_ms": {"p50": round(statistics.median(single), 3), "p90": round(_pct(single, 90), 3),
                            "mean": round(statistics.fmean(single), 3), "calls": len(single)},
    }


def run_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "ceiling", "--model-dir", str(args.model_dir), "--threads", str(CPUS),
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
            report: Path, timeout_s: float, probe_body: bytes | None = None) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODIES_DIR": str(body_dir), "WRK_BODIES": str(body_count),
           "WRK_BOUNDARY": BOUNDARY, "WRK_REPORT": str(report)}
    # One wrk thread is enough for 256 connections on loopback and costs the least CPU.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout_s:g}s",
               "-s", str(ROOT / "bench/load.lua"), f"http://127.0.0.1:{server.port}/predict"]
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


def warm(server: Server, connections: int, seconds: float, body_dir: Path, body_count: int, report: Path) -> None:
    """A short unrecorded run: connections, pools and TensorFlow's kernels for these batch sizes warm up."""
    if seconds > 0:
        run_wrk(server, connections, seconds, body_dir, body_count, report, timeout_s=60)


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

def resolved_settings(env: dict[str, str]) -> dict[str, Any]:
    """The settings the service will run with: its defaults, with ``env`` applied as the service applies it."""
    from app.settings import Settings

    fields = Settings.model_fields
    overrides = {key.lower(): value for key, value in env.items() if key.lower() in fields}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return {name: getattr(settings, name) for name in
            ("workers", "inference_threads", "decode_threads", "max_batch_size", "max_batch_delay_ms",
             "max_queue_images", "log_level")}


def bench_service(args: argparse.Namespace, name: str, levels: list[int], extra_env: dict[str, str],
                  body_dir: Path, bodies: list[bytes], work: Path, probe_at: int | None = None) -> dict[str, Any]:
    port = args.port
    env = {"MODEL_DIR": str(args.model_dir), "PORT": str(port), "HOST": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    env.update(extra_env)
    settings = resolved_settings(env)
    server = Server(name, [sys.executable, "-m", "app"], env, port, "/readyz", work)
    shown = {k: v for k, v in env.items() if k not in ("HOST", "PORT", "TF_CPP_MIN_LOG_LEVEL")}
    result: dict[str, Any] = {"name": name, "settings": settings, "env": shown}
    try:
        result["ready_s"] = round(server.wait_ready(args.ready_timeout), 2)
        check_answers(port, bodies)
        result["levels"] = []
        for connections in levels:
            report = work / f"{name}-c{connections}.json"
            warm(server, connections, args.warmup, body_dir, len(bodies), report)
            drain(port, metrics=True)
            before = scrape_batches(port)
            level = run_wrk(server, connections, args.seconds, body_dir, len(bodies), report, timeout_s=30,
                            probe_body=bodies[0] if connections == probe_at else None)
            after = scrape_batches(port)
            calls = after[1] - before[1]
            # With several workers /metrics is one worker's: its mean is still that worker's batch size.
            level["mean_batch"] = round((after[0] - before[0]) / calls, 1) if calls else None
            level["alive_after"] = server.process.poll() is None and http_request(port, "GET", "/readyz")[0] == 200
            result["levels"].append(level)
            drain(port, metrics=True)
            print(f"  {name} c={connections}: {level['ok_per_s']:.0f} ok/s, p50 {level['latency_ms']['p50']} ms, "
                  f"p99 {level['latency_ms']['p99']} ms, 503 {level['rejected_503']}, errors {level['errors']}",
                  file=sys.stderr)
        result["memory_after"] = server.memory()
    finally:
        server.stop()
    # uvicorn's supervisor restarts a worker that misses its health check (5 s); say so if it happened.
    result["worker_restarts"] = server.log_path.read_text(errors="replace").count("] died")
    return result


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


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5: met or missed, with the measured figure."""
    ceiling = results.get("ceiling")
    service = results["service"]
    levels = {lvl["concurrency"]: lvl for lvl in service.get("levels", [])}
    targets = []

    def add(name: str, met: bool, measured: str) -> None:
        targets.append({"target": name, "met": bool(met), "measured": measured})

    if ceiling and 64 in levels:
        c64 = levels[64]
        share = c64["ok_per_s"] / ceiling["images_per_s"]
        add("c=64 throughput >= 70% of the in-process ceiling", share >= 0.7,
            f"{c64['ok_per_s']:.0f} / {ceiling['images_per_s']:.0f} images/s = {share:.0%}")
        add("c=64 zero errors", c64["errors"] == 0 and c64["rejected_503"] == 0,
            f"{c64['errors']} errors, {c64['rejected_503']} x 503")
        add("c=64 p99 < 250 ms", c64["latency_ms"]["p99"] < 250, f"p99 {c64['latency_ms']['p99']:.0f} ms")
    if ceiling and 1 in levels:
        p50, single = levels[1]["latency_ms"]["p50"], ceiling["single_image_ms"]["p50"]
        add("c=1 p50 <= in-process single image + 3 ms", p50 <= single + 3, f"{p50:.1f} ms vs {single:.1f} + 3 ms")
    overload = results.get("overload")
    if overload and overload.get("levels"):
        lvl = overload["levels"][0]
        probe = lvl.get("probe", {})
        bound_ms = overload.get("queue_wait_bound_ms")
        rejected, served = probe.get("503", {}), probe.get("200", {})
        ok = (lvl["errors"] == 0 and lvl["alive_after"] and lvl["rejected_503"] > 0
              and rejected.get("all_have_retry_after", False)
              and (bound_ms is None or lvl["latency_ms"]["max"] <= bound_ms))
        add(f"c={lvl['concurrency']}, queue {overload['settings']['max_queue_images']}: no wait past the bound, "
            "excess gets 503 quickly, no crash", ok,
            f"max latency {lvl['latency_ms']['max']:.0f} ms (bound {bound_ms} ms); {lvl['rejected_503']} x 503, "
            f"probe 503 p50 {rejected.get('p50_ms')} ms, probe 200 p99 {served.get('p99_ms')} ms; "
            f"{lvl['errors']} errors; alive after: {lvl['alive_after']}")
    add("time to /readyz 200 <= 10 s", service["ready_s"] <= 10, f"{service['ready_s']} s")
    rss = service.get("memory_after", {}).get("rss_mib_by_process", [])
    if rss:
        add("RSS <= 1 GiB per worker", max(rss) <= 1024, f"largest process {max(rss):.0f} MiB")
    return targets


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Serving benchmark {results['finished']}: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB; "
             f"load average at start {m['load_average_at_start'][0]}; commit {m['commit']}"]
    c = results.get("ceiling")
    if c:
        lines.append(f"In-process ceiling ({c['threads']} TensorFlow threads): {c['images_per_s']:,.0f} images/s at "
                     f"batch {c['best_batch']}; single image p50 {c['single_image_ms']['p50']} ms"
                     + (f"; other processes {c['cpu_share']['other']:.0%} of the CPUs meanwhile" if "cpu_share" in c
                        else "") + ". By batch: "
                     + ", ".join(f"{k}: {v:,.0f}" for k, v in c["images_per_s_by_batch"].items()))
    header = (f"{'run':<24}{'conc':>5}{'ok/s':>7}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'503':>7}"
              f"{'err':>5}{'batch':>6}{'server':>7}{'wrk':>5}{'other':>6}")
    lines += ["", header, "-" * len(header)]
    runs = [results[key] for key in ("service", "alternative", "overload", "naive") if results.get(key)]
    for run in runs:
        for lvl in run.get("levels", []):
            lat, cpu = lvl["latency_ms"], lvl["cpu_share"]
            batch = lvl.get("mean_batch")
            lines.append(f"{run['label']:<24}{lvl['concurrency']:>5}{lvl['ok_per_s']:>7.0f}{lat['p50']:>8.1f}"
                         f"{lat['p90']:>8.1f}{lat['p99']:>8.1f}{lat['max']:>8.0f}{lvl['rejected_503']:>7}"
                         f"{lvl['errors']:>5}{batch if batch is not None else '-':>6}{cpu['server']:>7.0%}"
                         f"{cpu['load_generator']:>5.0%}{cpu['other']:>6.0%}")
    lines += ["ok/s: 200 answers per second (one image each); batch: mean images per model call (one worker's);",
              "server / wrk / other: share of all CPUs used by the server, the load generator and anything else.", ""]
    for run in runs:
        memory = run.get("memory_after", {})
        line = f"{run['label']}: ready in {run['ready_s']} s, RSS after {memory.get('rss_mib_total', 0):.0f} MiB"
        if len(memory.get("rss_mib_by_process", [])) > 1:
            line += f" (processes {memory['rss_mib_by_process']}, PSS {memory.get('pss_mib_total', 0):.0f} MiB)"
        if "settings" in run:
            st = run["settings"]
            line += (f"; {st['workers']} worker(s) x {st['inference_threads']} TF threads, max batch "
                     f"{st['max_batch_size']}, delay {st['max_batch_delay_ms']:g} ms, queue {st['max_queue_images']}")
        if run.get("worker_restarts"):
            line += f"; WORKER RESTARTS: {run['worker_restarts']} (missed uvicorn's health check)"
        lines.append(line)
    if results.get("naive"):
        lines.append(f"naive app: {results['naive']['what']}")
    lines.append("")
    for t in results["targets"]:
        lines.append(f"[{'met' if t['met'] else 'MISSED':>6}] {t['target']}: {t['measured']}")
    return "\n".join(lines)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "ceiling"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=Path("models/cifar10"), help="model to serve")
    parser.add_argument("--images", type=Path, default=None,
                        help="ImageFolder archive to take JPEGs from (default: the shared CIFAR-10 archive)")
    parser.add_argument("--image-count", type=int, default=200, help="distinct JPEGs the load cycles through")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per service level")
    parser.add_argument("--warmup", type=float, default=3, help="unrecorded seconds before each level")
    parser.add_argument("--levels", type=_levels, default=[1, 8, 64, 256], help="service concurrencies")
    parser.add_argument("--alt-workers", type=int, default=2,
                        help="also run the service with this many workers (threads divided) at --alt-levels; 0: skip")
    parser.add_argument("--alt-levels", type=_levels, default=[1, 64])
    parser.add_argument("--overload-queue", type=int, default=32,
                        help="MAX_QUEUE_IMAGES for the back-pressure run at the highest level; 0: skip")
    parser.add_argument("--naive-levels", type=_levels, default=[1, 64])
    parser.add_argument("--naive-seconds", type=float, default=15, help="measured seconds per naive level")
    parser.add_argument("--ceiling-seconds", type=float, default=2.0, help="seconds per batch size")
    parser.add_argument("--ceiling-batches", type=_levels, default=list(CEILING_BATCHES))
    parser.add_argument("--threads", type=int, default=CPUS, help=argparse.SUPPRESS)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ceiling, naive")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="service setting for every service run, e.g. --env MAX_BATCH_SIZE=128 (repeatable)")
    parser.add_argument("--port", type=int, default=8765, help="service port; the naive app uses the next one")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here (e.g. docs/bench-serve.json)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "ceiling":
        print(json.dumps(measure_ceiling(args.model_dir, args.threads, args.ceiling_seconds, args.ceiling_batches)))
        return
    # On SIGTERM (a timeout, a CI stop) unwind normally, so every server this run started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (Debian), or `make bench-serve` does it")
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = ROOT / "bench/results" / f"serve-{stamp}"
    body_dir = work / "bodies"
    jpegs, source = load_jpegs(args.images, args.image_count)
    bodies = write_bodies(body_dir, jpegs)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "images": {"source": source, "count": len(jpegs), "mean_bytes": round(statistics.fmean(map(len, jpegs)))},
    }
    print(f"load average {results['machine']['load_average_at_start']}; results in {work}", file=sys.stderr)
    if "ceiling" not in skip:
        print("in-process ceiling ...", file=sys.stderr)
        results["ceiling"] = run_ceiling(args)
    print("service (its default settings) ...", file=sys.stderr)
    service = bench_service(args, "service", args.levels, {}, body_dir, bodies, work)
    service["label"] = f"service {service['settings']['workers']}w"
    results["service"] = service
    if args.alt_workers and args.alt_workers != service["settings"]["workers"]:
        print(f"service with WORKERS={args.alt_workers} ...", file=sys.stderr)
        alternative = bench_service(args, "alternative", args.alt_levels, {"WORKERS": str(args.alt_workers)},
                                    body_dir, bodies, work)
        alternative["label"] = f"service {args.alt_workers}w"
        results["alternative"] = alternative
    if args.overload_queue > 0:
        top = max(args.levels)
        print(f"service with MAX_QUEUE_IMAGES={args.overload_queue} at c={top} ...", file=sys.stderr)
        overload = bench_service(args, "overload", [top], {"MAX_QUEUE_IMAGES": str(args.overload_queue)},
                                 body_dir, bodies, work, probe_at=top)
        overload["label"] = f"service {overload['settings']['workers']}w queue={args.overload_queue}"
        # The longest an admitted request can wait: a full queue ahead of it plus the batch running, then
        # its own batch, at the rate this run served (per worker), plus 50 ms for its HTTP work.
        st, ok_per_s = overload["settings"], overload["levels"][0]["ok_per_s"]
        if ok_per_s:
            ahead = st["max_queue_images"] + 2 * st["max_batch_size"]
            overload["queue_wait_bound_ms"] = round(ahead / (ok_per_s / st["workers"]) * 1000 + 50)
        results["overload"] = overload
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
