"""Soak, load and fault run against a real server on loopback: ``python bench/soak.py``.

Starts ``python -m app`` on a free 127.0.0.1 port (or uses --url/--pid), then keeps --concurrency
clients busy for --duration seconds with a mix of good and bad uploads, and reports:
- status counts, 5xx (must be 0) and dropped connections (transport errors; must be 0);
- latency p50/p99 per minute: after the first minute, no minute's p99 may exceed 1.5x their median;
- server RSS sampled every few seconds: growth between the baseline (minute 2, or 20% into a short
  run) and the end must be under 5%;
- with --sigterm-at S: SIGTERM at S seconds under load; requests already sent must all be answered,
  new connections are refused, and the server must exit 0 within --exit-bound seconds.
Exits 1 when a criterion fails. Every loop is bounded by the duration and --max-requests; only
loopback addresses are accepted as targets.

    python bench/soak.py --duration 600 --concurrency 64                  # the 10-minute soak
    python bench/soak.py --duration 30                                    # a quick try
    python bench/soak.py --duration 60 --sigterm-at 30                    # graceful shutdown under load
"""

import argparse
import asyncio
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve import service_setting  # noqa: E402
from tests import hostile_files as files  # noqa: E402 - the same generated uploads as the tests

RSS_SAMPLE_S = 5.0
RSS_GROWTH_LIMIT = 0.05
# "p99 stable": after the first window, no window's p99 above this multiple of their median p99.
P99_SPREAD_LIMIT = 1.5


@dataclass
class Upload:
    name: str
    path: str
    expected: int
    make: object = field(repr=False)  # () -> httpx request kwargs


def upload_mix() -> list[tuple[Upload, int]]:
    """(upload, weight): mostly good images of the common formats, a fifth bad ones of every 4xx kind."""
    png, jpeg = files.encode(files.photo(64, 48, 1), "PNG"), files.encode(files.photo(320, 240, 2), "JPEG")
    photo = files.encode(files.photo(1024, 768, 3), "JPEG", quality=85)
    webp = files.encode(files.photo(100, 100, 4), "WEBP")
    one = lambda data, name="x.png": {"files": {"file": (name, data, "image/png")}}  # noqa: E731
    return [
        (Upload("png", "/predict", 200, lambda: one(png)), 20),
        (Upload("jpeg_320x240", "/predict", 200, lambda: one(jpeg, "x.jpg")), 20),
        (Upload("jpeg_1024x768", "/predict", 200, lambda: one(photo, "x.jpg")), 8),
        (Upload("webp_preview", "/predict?preview=true", 200, lambda: one(webp, "x.webp")), 6),
        (Upload("batch_of_8", "/predict/batch", 200,
                lambda: {"files": [("files", (f"{i}.png", png, "image/png")) for i in range(8)]}), 6),
        (Upload("empty", "/predict", 400, lambda: one(b"")), 3),
        (Upload("text", "/predict", 400, lambda: one(b"not an image\n" * 50)), 3),
        (Upload("truncated_png", "/predict", 400, lambda: one(png[: len(png) // 2])), 3),
        (Upload("pdf", "/predict", 415, lambda: one(b"%PDF-1.7\n%%EOF\n", "x.pdf")), 3),
        (Upload("bomb_header", "/predict", 413, lambda: one(files.png_header_only(100_000, 100_000))), 3),
        (Upload("missing_field", "/predict", 422, lambda: {"files": {"image": ("x.png", png, "image/png")}}), 3),
        (Upload("batch_too_many", "/predict/batch", 413,
                lambda: {"files": [("files", (f"{i}.png", b"x", "image/png")) for i in range(40)]}), 2),
    ]


@dataclass
class Result:
    at: float
    name: str
    status: int  # 0: transport error
    latency_s: float
    error: str = ""
    after_sigterm: bool = False


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        sys.exit(f"refusing to load {host!r}: soak runs target loopback addresses only")


def start_server(model_dir: Path, log_path: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODEL_DIR": str(model_dir), "HOST": "127.0.0.1", "PORT": str(port),
           "LOG_LEVEL": "warning", "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit("server not ready within 300 s")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def encoded_bodies(mix: list[tuple[Upload, int]]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each upload's multipart body, encoded once: the client shares the server's 2 cores, and
    re-encoding every request would spend them on the client and inflate the measured latency."""
    bodies = {}
    for upload, _ in mix:
        request = httpx.Request("POST", "http://127.0.0.1" + upload.path, **upload.make())
        bodies[upload.name] = (request.read(), {"Content-Type": request.headers["Content-Type"]})
    return bodies


async def client_loop(client: httpx.AsyncClient, mix: list[tuple[Upload, int]],
                      bodies: dict[str, tuple[bytes, dict[str, str]]], stop_at: float, results: list[Result],
                      budget: list[int], sigterm: asyncio.Event, rng: random.Random) -> None:
    uploads, weights = zip(*mix, strict=True)
    started = time.monotonic()
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        upload = rng.choices(uploads, weights)[0]
        sent_after_sigterm = sigterm.is_set()
        began = time.monotonic()
        try:
            body, headers = bodies[upload.name]
            response = await client.post(upload.path, content=body, headers=headers)
            status, error = response.status_code, ""
        except httpx.TransportError as exc:
            status, error = 0, type(exc).__name__
        results.append(Result(began - started, upload.name, status, time.monotonic() - began, error,
                              sent_after_sigterm))
        if status == 0 and sigterm.is_set():
            await asyncio.sleep(0.05)  # the server is going away: do not spin on refused connections
        elif status != upload.expected and status != 503:
            results[-1].error = f"expected {upload.expected}"


async def sample_rss(pid: int | None, stop_at: float, samples: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while pid is not None and time.monotonic() < stop_at:
        try:
            samples.append((time.monotonic() - started, rss_mib(pid)))
        except (FileNotFoundError, ProcessLookupError):
            return
        await asyncio.sleep(RSS_SAMPLE_S)


async def run_load(url: str, pid: int | None, args: argparse.Namespace, process: subprocess.Popen | None) -> dict:
    mix = upload_mix()
    results: list[Result] = []
    rss: list[tuple[float, float]] = []
    sigterm = asyncio.Event()
    budget = [args.max_requests]
    stop_at = time.monotonic() + args.duration
    shutdown: dict[str, object] = {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def fault() -> None:
            if args.sigterm_at is None or process is None:
                return
            await asyncio.sleep(args.sigterm_at)
            process.send_signal(signal.SIGTERM)
            sigterm.set()
            signalled = time.monotonic()
            while process.poll() is None and time.monotonic() - signalled < args.exit_bound + 30:
                await asyncio.sleep(0.05)
            shutdown.update(returncode=process.poll(), exit_s=round(time.monotonic() - signalled, 2))

        bodies = encoded_bodies(mix)
        tasks = [client_loop(client, mix, bodies, stop_at, results, budget, sigterm, random.Random(seed))
                 for seed in range(args.concurrency)]
        await asyncio.gather(sample_rss(pid, stop_at, rss), fault(), *tasks)
    return summarize(results, rss, args, shutdown)


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else 0.0


def summarize(results: list[Result], rss: list[tuple[float, float]], args: argparse.Namespace,
              shutdown: dict[str, object]) -> dict:
    statuses: dict[str, int] = {}
    for result in results:
        statuses[str(result.status)] = statuses.get(str(result.status), 0) + 1
    # Before SIGTERM every transport error is a dropped connection; after it only a request that the
    # server had accepted and then cut off is (a refused new connection is the expected behaviour).
    dropped = [r for r in results if r.status == 0 and not (r.after_sigterm and r.error == "ConnectError")]
    refused = [r for r in results if r.status == 0 and r.after_sigterm and r.error == "ConnectError"]
    wrong = [r for r in results if r.status and r.error.startswith("expected")]
    window = 60.0 if args.duration >= 180 else max(args.duration / 6, 5.0)
    minutes = []
    for start in np.arange(0, args.duration, window):
        latencies = [r.latency_s for r in results if start <= r.at < start + window and r.status]
        if latencies:
            minutes.append({"from_s": float(start), "requests": len(latencies), "p50_ms": percentile(latencies, 50),
                            "p99_ms": percentile(latencies, 99)})
    baseline_at = min(120.0, 0.2 * args.duration)
    baseline = next((mib for at, mib in rss if at >= baseline_at), None)
    final = rss[-1][1] if rss else None
    growth = (final - baseline) / baseline if baseline and final else None
    steady = [m["p99_ms"] for m in minutes[1:]] or [m["p99_ms"] for m in minutes]
    median_p99 = float(np.median(steady)) if steady else 0.0
    p99_spread = max(steady) / median_p99 if median_p99 > 0 else None
    summary = {
        "duration_s": args.duration, "concurrency": args.concurrency, "requests": len(results),
        "throughput_rps": round(len(results) / args.duration, 1), "statuses": statuses,
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5") and s != "503"),
        "busy_503": statuses.get("503", 0), "dropped_connections": len(dropped),
        "dropped_examples": [asdict(r) for r in dropped[:5]], "refused_after_sigterm": len(refused),
        "unexpected_status": len(wrong), "unexpected_examples": [asdict(r) for r in wrong[:5]],
        "latency_windows": minutes, "p99_ms_min_max_after_first_window": [min(steady, default=0),
                                                                          max(steady, default=0)],
        "p99_max_over_median": round(p99_spread, 2) if p99_spread is not None else None,
        "rss_mib": {"baseline_at_s": baseline_at, "baseline": baseline, "final": final,
                    "peak": max((mib for _, mib in rss), default=None),
                    "growth_pct": round(growth * 100, 2) if growth is not None else None},
        "shutdown": shutdown,
    }
    failures = []
    if summary["server_errors_5xx"]:
        failures.append("5xx responses")
    if dropped:
        failures.append("dropped connections")
    if wrong:
        failures.append("unexpected statuses")
    if growth is not None and growth >= RSS_GROWTH_LIMIT and args.sigterm_at is None:
        failures.append(f"RSS grew {growth:.1%}")
    if p99_spread is not None and p99_spread > P99_SPREAD_LIMIT and args.sigterm_at is None:
        failures.append(f"p99 unstable (worst window {p99_spread:.2f}x the median)")
    if args.sigterm_at is not None and (shutdown.get("returncode") != 0
                                        or float(shutdown.get("exit_s", 1e9)) > args.exit_bound):
        failures.append(f"shutdown {shutdown}")
    summary["failures"] = failures
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Soak/load/fault run against a loopback server.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="hard cap on requests sent")
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR", "models/cifar10")))
    parser.add_argument("--url", help="use a running server (loopback only) instead of starting one")
    parser.add_argument("--pid", type=int, help="that server's pid, for RSS")
    parser.add_argument("--sigterm-at", type=float, help="send SIGTERM this many seconds into the run")
    parser.add_argument("--exit-bound", type=float, default=35.0, help="seconds allowed to exit after SIGTERM")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    parser.add_argument("--env", action="append", default=[], type=service_setting, metavar="KEY=VALUE",
                        help="a server setting (repeatable)")
    args = parser.parse_args()
    if args.sigterm_at is not None and args.url:
        parser.error("--sigterm-at needs a server this script starts")
    process = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        extra = dict(args.env)
        process, url = start_server(args.model_dir.resolve(), args.out.with_suffix(".server.log"), extra)
        pid = process.pid
    require_loopback(url)
    print(f"soak: {args.concurrency} clients for {args.duration:g} s against {url}", flush=True)
    try:
        summary = asyncio.run(run_load(url, pid, args, process))
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("latency_windows",)}, indent=2))
    for window in summary["latency_windows"]:
        print(f"  from {window['from_s']:>5.0f} s: {window['requests']:>6} requests, p50 {window['p50_ms']} ms, "
              f"p99 {window['p99_ms']} ms")
    print("PASS" if not summary["failures"] else f"FAIL: {', '.join(summary['failures'])}")
    sys.exit(1 if summary["failures"] else 0)


if __name__ == "__main__":
    main()
