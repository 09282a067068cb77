"""Load with per-request latency, for scripts/docker-smoke.sh's faults under load.

    python3 scripts/fault_load.py --url http://127.0.0.1:18000/predict --image sample.jpg \
        --connections 16 --summary kill.json

Keeps CONNECTIONS keep-alive connections busy posting the image to URL until SIGTERM or SIGINT;
SIGUSR1 marks the moment the fault begins (times in the summary count from it). On stop it stops
starting requests, lets those in flight finish (a request that hangs counts with its full time, up
to --timeout, then as failed), and writes a JSON summary: counts, failures by reason, latency
percentiles and the slowest request with its start relative to the fault.

Standard library only (the smoke script runs it with the host's python3, before any virtual
environment exists), and a hand-written HTTP/1.1 client: status counts alone hide stalls, so
every request's own latency is recorded, and a closed or reset connection counts as a failed
request (then a new connection is opened), as it would for any real client.
"""

import argparse
import asyncio
import json
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

RETRY_PAUSE_S = 0.05  # after a request that got no answer, before the next on that connection


@dataclass
class Outcome:
    started: float  # monotonic seconds
    seconds: float
    status: int | None  # None: no HTTP answer
    error: str = ""


class Load:
    def __init__(self, url: str, body: bytes, content_type: str, timeout_s: float, interval_s: float = 0.0,
                 honour_retry_after: bool = False) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.request_head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.body = body
        self.timeout_s = timeout_s
        # Each connection starts a request at most every interval_s (--rate), and waits out a 429's
        # Retry-After first if told to, as the project's client does (--honour-retry-after).
        self.interval_s = interval_s
        self.honour_retry_after = honour_retry_after
        self.outcomes: list[Outcome] = []
        self.stopping = asyncio.Event()
        self.fault_at: float | None = None

    async def one_request(self, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                          ) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, float]:
        if streams is None:
            streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = streams
        writer.write(self.request_head + self.body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before an answer")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
                await reader.readexactly(size + 2)
            await reader.readline()
        else:  # the body runs to the end of the connection
            await reader.read()
            headers["connection"] = "close"
        # HTTP/1.0 closes after each answer unless told otherwise; HTTP/1.1 keeps the connection.
        keep_alive = "keep-alive" if status_line.startswith(b"HTTP/1.1") else "close"
        retry_after = float(headers["retry-after"]) if headers.get("retry-after", "").isdigit() else 1.0
        if headers.get("connection", keep_alive).lower() == "close":
            writer.close()
            return status, None, retry_after
        return status, streams, retry_after

    async def connection(self) -> None:
        streams = None
        next_start = time.monotonic()
        while not self.stopping.is_set():
            if self.interval_s:
                await self.sleep_unless_stopping(next_start - time.monotonic())
                next_start = max(next_start + self.interval_s, time.monotonic())
                if self.stopping.is_set():
                    break
            started = time.monotonic()
            try:
                status, streams, retry_after = await asyncio.wait_for(self.one_request(streams), self.timeout_s)
                self.outcomes.append(Outcome(started, time.monotonic() - started, status))
                if status == 429 and self.honour_retry_after:
                    await self.sleep_unless_stopping(retry_after)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:  # OSError: TimeoutError too
                reason = "timeout" if isinstance(error, TimeoutError) else type(error).__name__
                self.outcomes.append(Outcome(started, time.monotonic() - started, None, reason))
                if streams is not None:
                    streams[1].close()
                streams = None
                # A refused connection fails at once: without a pause each connection would spin on it,
                # taking the CPU a restarting replica needs, with thousands of failures a second.
                await self.sleep_unless_stopping(RETRY_PAUSE_S)
        if streams is not None:
            streams[1].close()

    async def sleep_unless_stopping(self, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(self.stopping.wait(), seconds)
            except TimeoutError:
                pass


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"sample.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))] if sorted_values else 0.0


def summarize(load: Load, began: float, ended: float) -> dict:
    outcomes = load.outcomes
    origin = load.fault_at if load.fault_at is not None else began
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != 200:
            reason = outcome.error or f"HTTP {outcome.status}"
            failures[reason] = failures.get(reason, 0) + 1
    latencies = sorted(outcome.seconds for outcome in outcomes)
    slowest = max(outcomes, key=lambda outcome: outcome.seconds, default=None)
    return {
        "requests": len(outcomes),
        "ok": sum(outcome.status == 200 for outcome in outcomes),
        "too_many": sum(outcome.status == 429 for outcome in outcomes),
        "server_errors": sum(outcome.status is not None and outcome.status >= 500 for outcome in outcomes),
        # Latency of the answered requests alone: a 429 comes back at once and would flatter the figures.
        "p99_ok_s": round(percentile(sorted(outcome.seconds for outcome in outcomes if outcome.status == 200), 0.99),
                          3),
        "failed": sum(failures.values()),
        "failures": failures,
        "seconds": round(ended - began, 2),
        "fault_after_s": round(load.fault_at - began, 2) if load.fault_at is not None else None,
        "p50_s": round(percentile(latencies, 0.50), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "slowest_s": round(slowest.seconds, 3) if slowest else None,
        # When the slowest request started, in seconds from the fault (negative: before it).
        "slowest_started_s": round(slowest.started - origin, 2) if slowest else None,
        "slowest_status": (slowest.status or slowest.error) if slowest else None,
        "over_2s": sum(outcome.seconds > 2.0 for outcome in outcomes),
        # The same machine's latency before the fault began: what the fault is to be compared with.
        "slowest_before_fault_s": round(max((outcome.seconds for outcome in outcomes if outcome.started < origin),
                                            default=0.0), 3),
    }


async def run(args: argparse.Namespace) -> dict:
    body, content_type = multipart(args.image_bytes)
    interval_s = args.connections / args.rate if args.rate else 0.0
    load = Load(args.url, body, content_type, args.timeout, interval_s, args.honour_retry_after)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, load.stopping.set)
    loop.add_signal_handler(signal.SIGINT, load.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(load, "fault_at", time.monotonic()))
    if args.duration:
        loop.call_later(args.duration, load.stopping.set)
    began = time.monotonic()
    await asyncio.gather(*(load.connection() for _ in range(args.connections)))
    return summarize(load, began, time.monotonic())


def http_url(text: str) -> str:
    """argparse type: an http:// URL with a host (the client speaks plain HTTP/1.1, no TLS)."""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a port that is not a number from 0 to 65535") from None
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// URL with a host (no TLS here)")
    return text


def number_at_least(lowest: float, kind: type = float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not value >= lowest:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is below {lowest:g}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", type=http_url, required=True,
                        help="where to POST, e.g. http://127.0.0.1:18000/predict (a query string is kept)")
    parser.add_argument("--image", type=Path, required=True, help="the image to upload in the field `file`")
    parser.add_argument("--connections", type=number_at_least(1, int), default=16,
                        help="concurrent keep-alive connections")
    parser.add_argument("--timeout", type=number_at_least(0.001), default=30.0,
                        help="seconds before a request counts as failed")
    parser.add_argument("--duration", type=number_at_least(0), default=0.0,
                        help="stop after this many seconds (0: on SIGTERM)")
    parser.add_argument("--rate", type=number_at_least(0), default=0.0,
                        help="requests a second across all connections at most (0: each sends as fast as answered)")
    parser.add_argument("--honour-retry-after", action="store_true",
                        help="after a 429, wait its Retry-After on that connection before the next request")
    parser.add_argument("--summary", type=Path, help="write the JSON summary here (default: stdout)")
    args = parser.parse_args()
    try:
        args.image_bytes = args.image.read_bytes()
    except OSError as error:
        parser.error(f"--image {args.image}: {error.strerror or error}")
    summary = json.dumps(asyncio.run(run(args)))
    if args.summary:
        args.summary.write_text(summary + "\n")
    else:
        print(summary)


if __name__ == "__main__":
    main()
