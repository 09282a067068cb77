"""Hot swap under load: ``python bench/model_swap.py`` (on a quiet machine: it measures latency and RSS).

Starts ``python -m app`` on loopback with a copy of a model folder's highest version as version 1, keeps
--connections clients posting CIFAR-sized JPEGs, and --swaps times drops a copy of the same SavedModel in
as the next version, the way ``python -m training promote`` publishes (staged under a hidden name, then
renamed). For each swap it reports:
- seconds from the rename to the first answer computed by the new version (what a user sees: the poll
  wait, loading, the contract check, the warm-up and the swap; the server's own log line gives the part
  after the poll);
- throughput from the rename to that first answer against the 5 s before the rename (the dip), the
  longest wait between two answers, and p50/p99 latency in both;
- requests that failed (any status but 200, or a transport error) and answers from an older version
  to requests sent after the first new answer (both must be 0);
- the server's RSS after the swap.
Exits 1 if a request failed or an old answer came late.
With --no-swap nothing is dropped in: the same load and the same timing, the control for the RSS figure.

    .venv/bin/python bench/model_swap.py --json docs/bench-model-swap.json
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.paths import json_output, recorded_path  # noqa: E402
from core.contract import version_dirs  # noqa: E402
from tests import hostile_files as files  # noqa: E402 - the same generated uploads as the tests
from tests.servers import Server, rss_bytes, spawn_server  # noqa: E402

BASELINE_S = 5.0
# --no-swap waits this long where a swap would be: about the median rename-to-first-answer time.
NO_SWAP_S = 4.4


@dataclass
class Reply:
    sent: float
    received: float
    ok: bool
    version: int | None
    failure: str = ""  # the status and detail, or the transport error (with its cause), of a request that failed


def publish(export: Path, model_root: Path, version: int) -> float:
    """Copy ``export`` in as ``version``, staged then renamed; returns the moment of the rename."""
    staging = model_root / f".staging-{version}"
    shutil.copytree(export, staging)
    staging.rename(model_root / str(version))
    return time.monotonic()


async def client(url: str, body: bytes, headers: dict[str, str], stop: asyncio.Event, replies: list[Reply]) -> None:
    """One connection posting in a loop, each request sent as soon as the last answer came (as wrk does).

    Each client has its own one-connection pool. With one httpx pool of 64 shared by the 64 tasks (this
    script until 29 November), requests waited in the client for seconds while other connections of the
    pool sat idle (against a stand-in server answering everyone every 0.7 s: median 1.19 s instead of
    0.70 s, and 98 connections left idle for 5 s in 30 s). That inflated the latency measured, and the
    server closed the idle connections at its keep-alive timeout, now and then just as the client
    reused one: the sporadic ReadError."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        while not stop.is_set():
            sent = time.monotonic()
            failure = ""
            try:
                response = await http.post("/predict", content=body, headers=headers)
                ok = response.status_code == 200
                version = response.json()["model"]["version"] if ok else None
                failure = "" if ok else f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as error:
                ok, version, failure = False, None, f"{type(error).__name__}: {error!r} (cause {error.__cause__!r})"
            replies.append(Reply(sent, time.monotonic(), ok, version, failure))


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1000, 1) if latencies else None


def window(replies: list[Reply], start: float, end: float) -> dict[str, float | None]:
    done = [reply for reply in replies if start <= reply.received < end]
    latencies = [reply.received - reply.sent for reply in done]
    return {"seconds": round(end - start, 2), "requests_per_s": round(len(done) / (end - start), 1),
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}


def longest_gap(replies: list[Reply], start: float, end: float) -> float:
    """Longest time between consecutive answers within [start, end]: a stall shows here. Batching makes
    answers come in bursts, one per model call, so compare it with the same figure before the swap."""
    received = np.sort([start, *(reply.received for reply in replies if start <= reply.received <= end), end])
    return round(float(np.diff(received).max()), 2)


async def measure(server: Server, export: Path, model_root: Path, args: argparse.Namespace) -> dict:
    request = httpx.Request("POST", f"{server.url}/predict",
                            files={"file": ("cifar.jpg", files.encode(files.photo(32, 32, 5), "JPEG"), "image/jpeg")})
    body, headers = request.read(), {"Content-Type": request.headers["Content-Type"]}
    replies: list[Reply] = []
    stop = asyncio.Event()
    swaps = []
    started = time.monotonic()
    tasks = [asyncio.create_task(client(server.url, body, headers, stop, replies))
             for _ in range(args.connections)]
    await asyncio.sleep(args.warm_up)  # connections open, batches at their steady size, the process warmed up
    rss_before_mib = round(rss_bytes(server.pid) / 2**20, 1)
    for version in range(2, args.swaps + 2):
        if args.no_swap:  # the control: the same load and timing, nothing dropped in
            landed = time.monotonic()
            await asyncio.sleep(NO_SWAP_S)
            first = time.monotonic()
            version = 1
        else:
            landed = await asyncio.to_thread(publish, export, model_root, version)
            while not any(reply.version == version for reply in replies[-2 * args.connections:]):
                if time.monotonic() - landed > 300:
                    raise SystemExit(f"version {version} never answered:\n{server.log()[-3000:]}")
                await asyncio.sleep(0.01)
            first = min(reply.received for reply in replies if reply.version == version)
        await asyncio.sleep(args.settle)  # steady again, and the old model collected
        found = re.search(rf"version {version} from .* warmed in ([0-9.]+) s", server.log())
        loading_s = float(found.group(1)) if found else None
        late = sum(1 for reply in replies if reply.sent > first and reply.version is not None
                   and reply.version < version)
        swaps.append({
            "version": version,
            "landing_to_first_answer_s": round(first - landed, 2),
            "before": window(replies, landed - BASELINE_S, landed),
            "during": window(replies, landed, first),
            # the part of it after the poll found the version: loading, checking and warming it up
            "server_load_check_warm_s": loading_s,
            "while_loading": window(replies, first - loading_s, first) if loading_s else None,
            "longest_gap_s": {"before": longest_gap(replies, landed - BASELINE_S, landed),
                              "during": longest_gap(replies, landed, first)},
            "old_answers_after_first_new": late,
            "rss_mib": round(rss_bytes(server.pid) / 2**20, 1),
        })
        print(json.dumps(swaps[-1]), flush=True)
    stop.set()
    await asyncio.gather(*tasks)
    failures = Counter(reply.failure for reply in replies if not reply.ok)
    # When each failure happened (seconds from the start of the load), to set beside the swaps and the server's log.
    failed_at = [{"sent_s": round(reply.sent - started, 2), "received_s": round(reply.received - started, 2),
                  "failure": reply.failure} for reply in replies if not reply.ok]
    return {"requests": len(replies), "failed": sum(failures.values()), "failures": dict(failures),
            "failed_at": failed_at, "rss_mib_before_first_swap": rss_before_mib, "swaps": swaps}


def summarize(result: dict, args: argparse.Namespace) -> dict:
    swaps = result["swaps"]
    warmed = [s["server_load_check_warm_s"] for s in swaps if s["server_load_check_warm_s"]]
    dips = [1 - s["during"]["requests_per_s"] / s["before"]["requests_per_s"] for s in swaps]
    loading_dips = [1 - s["while_loading"]["requests_per_s"] / s["before"]["requests_per_s"]
                    for s in swaps if s["while_loading"]]
    summary = {
        "landing_to_first_answer_s": {"median": float(np.median([s["landing_to_first_answer_s"] for s in swaps])),
                                      "max": max(s["landing_to_first_answer_s"] for s in swaps)},
        "server_load_check_warm_s": {"median": float(np.median(warmed)) if warmed else None,
                                     "max": max(warmed) if warmed else None},
        "throughput_before_rps_median": float(np.median([s["before"]["requests_per_s"] for s in swaps])),
        "throughput_during_rps_median": float(np.median([s["during"]["requests_per_s"] for s in swaps])),
        "throughput_dip_median": round(float(np.median(dips)), 3),
        "throughput_while_loading_rps_median": float(np.median([s["while_loading"]["requests_per_s"]
                                                                for s in swaps if s["while_loading"]])),
        "throughput_dip_while_loading_median": round(float(np.median(loading_dips)), 3) if loading_dips else None,
        "p99_ms_before_median": float(np.median([s["before"]["p99_ms"] for s in swaps])),
        "p99_ms_during_median": float(np.median([s["during"]["p99_ms"] for s in swaps])),
        "longest_gap_s_before_max": max(s["longest_gap_s"]["before"] for s in swaps),
        "longest_gap_s_during_max": max(s["longest_gap_s"]["during"] for s in swaps),
        "failed_requests": result["failed"],
        "old_answers_after_first_new": sum(s["old_answers_after_first_new"] for s in swaps),
        "rss_mib_before_first_swap": result["rss_mib_before_first_swap"],
        "rss_mib_after_first_swap": swaps[0]["rss_mib"],
        "rss_mib_after_last_swap": swaps[-1]["rss_mib"],
        "rss_growth": round(swaps[-1]["rss_mib"] / swaps[0]["rss_mib"] - 1, 4),
    }
    return {"settings": {"connections": args.connections, "swaps": args.swaps, "poll_seconds": args.poll_seconds,
                         "warm_up_s": args.warm_up,
                         "model": recorded_path(export_of(args)), "server_env": args.server_env,
                         "cpus": len(os.sched_getaffinity(0)),
                         "load_average_before": args.load_before, "load_average_after": os.getloadavg()},
            "summary": summary, **result}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "cifar10",
                        help="model folder; its highest version (or --version) is served and dropped in again")
    parser.add_argument("--version", type=int, default=None,
                        help="the version of --model-dir to serve and drop in (default: the highest)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="the server's MODEL_POLL_SECONDS")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of steady load before and after each swap")
    parser.add_argument("--warm-up", type=float, default=8.0,
                        help="seconds of load before the first swap, so that what grows with the load alone (batch "
                             "sizes met, caches filled) has grown before the first RSS reading")
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here")
    parser.add_argument("--server-log", type=Path, default=None, help="keep the server's log here")
    parser.add_argument("--no-swap", action="store_true",
                        help="control for the RSS figure: the same load and timing with no version dropped in")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server only (repeatable), e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args()
    for item in args.server_env:
        if "=" not in item:
            parser.error(f"--server-env {item!r}: write it as NAME=VALUE")
    return args


def export_of(args: argparse.Namespace) -> Path:
    """The version folder that is served as version 1 and dropped in as every later version."""
    versions = dict(version_dirs(args.model_dir))
    if not versions:
        sys.exit(f"error: {args.model_dir} has no version folders (<version>/saved_model.pb)")
    if args.version is None:
        return versions[max(versions)]
    if args.version not in versions:
        have = ", ".join(map(str, sorted(versions)))
        sys.exit(f"error: --version {args.version}: {args.model_dir} has versions {have}")
    return versions[args.version]


def main() -> None:
    args = parse_args()
    args.load_before = os.getloadavg()
    export = export_of(args)
    with tempfile.TemporaryDirectory(prefix="model-swap-") as work:
        model_root = Path(work) / "cifar10"
        model_root.mkdir()
        publish(export, model_root, 1)
        server_env = dict(item.split("=", 1) for item in args.server_env)
        server = spawn_server(model_root, Path(work) / "server.log", MODEL_POLL_SECONDS=str(args.poll_seconds),
                              LOG_LEVEL="info", INFERENCE_THREADS=str(len(os.sched_getaffinity(0))), **server_env)
        try:
            server.wait_ready()
            result = asyncio.run(measure(server, export, model_root, args))
        finally:
            server.stop()
        log = server.log()
    if args.server_log:
        args.server_log.write_text(log)
    report = summarize(result, args)
    print(json.dumps(report["summary"], indent=2))
    print(f"load average before {args.load_before}, after {report['settings']['load_average_after']}")
    if report["failures"]:
        print(f"failures: {json.dumps(report['failed_at'], indent=1)}")
        print("\n".join(line for line in log.splitlines() if "ERROR" in line or "Error" in line)[-3000:])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if report["summary"]["failed_requests"] or report["summary"]["old_answers_after_first_new"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
