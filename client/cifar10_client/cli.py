"""``cifar10-client``: classify image files and folders with a running CIFAR-10 service.

Exit status: 0 when every file was classified (health: the service is ready), 1 when any file failed
(health: not ready yet, metadata: an error answer), 2 for a usage error or a service that cannot be
reached at all.
"""

import argparse
import asyncio
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from cifar10_client.client import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    AsyncClient,
    Client,
    FileResult,
    check_service_url,
)
from cifar10_client.errors import ClientError, OverlayNotWritten, ServiceUnreachable, UnreadableFile
from cifar10_client.models import ExplainedPrediction, Metadata, as_json
from cifar10_client.output import WRITERS, Progress, Writer
from cifar10_client.paths import expand

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2
URL_VARIABLE = "CIFAR10_URL"
# An environment variable rather than only an option: a key on the command line lands in shell history.
KEY_VARIABLE = "CIFAR10_API_KEY"
DEFAULT_CONCURRENCY = 8
PROG = "cifar10-client"
OVERLAY_SUFFIX = ".explain.png"
MAX_NAME_BYTES = 255  # a file name's limit on Linux and macOS file systems


def service_url(text: str) -> str:
    try:
        check_service_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def count(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
        return value
    parse.__name__ = "number"  # argparse names the type in its message for text that is no number at all
    return parse


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", type=service_url, default=os.environ.get(URL_VARIABLE, DEFAULT_URL),
                            help=f"the service's address (default: ${URL_VARIABLE} or {DEFAULT_URL})")
    connection.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                            help="longest wait for one answer (default: %(default)s)")
    connection.add_argument("--retries", type=count(0), default=DEFAULT_RETRIES, metavar="N",
                            help="times a 503 (warming up, at capacity) or 429 (over the rate limit) is retried "
                                 "after its Retry-After (default: %(default)s)")
    connection.add_argument("--api-key", default=os.environ.get(KEY_VARIABLE) or None, metavar="KEY",
                            help=f"the API key, for a service that requires one (default: ${KEY_VARIABLE})")

    parser = argparse.ArgumentParser(prog=PROG, description="Classify images with a CIFAR-10 service.",
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", parents=[connection], help="classify files, folders and globs",
                                  description="Classify images: one line per file (file, label, confidence).")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="an image file, a folder (searched recursively for images) or a glob ('**' recurses)")
    predict.add_argument("--concurrency", type=count(1), default=DEFAULT_CONCURRENCY, metavar="N",
                         help="requests in flight at once (default: %(default)s)")
    predict.add_argument("--format", choices=sorted(WRITERS), default="table", help="output (default: table)")
    predict.add_argument("--explain", type=Path, default=None, metavar="DIR",
                         help="ask /explain instead (the fast level, plus where the model looked) and write each "
                              "file's overlay PNG into DIR as <file>.explain.png")
    predict.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="progress bar on stderr (default: when stderr is a terminal and there are several files)")
    predict.set_defaults(run=run_predict)

    health = commands.add_parser("health", parents=[connection], help="is the service up and its model ready?")
    health.set_defaults(run=run_health)

    metadata = commands.add_parser("metadata", parents=[connection], help="the served model and the upload limits")
    metadata.add_argument("--format", choices=["text", "json"], default="text",
                          help="a summary, or the whole answer as JSON (default: text)")
    metadata.set_defaults(run=run_metadata)
    return parser


def overlay_name(source: str) -> str:
    """``photos/cat.jpg`` -> ``photos__cat.jpg.explain.png``: one file per source, even for equal base names.
    A name past the file system's 255 bytes keeps its end and a digest of the whole, still one per source."""
    parts = [part for part in Path(source).parts if part not in ("/", "..", ".")]
    name = "__".join(parts) + OVERLAY_SUFFIX
    if len(os.fsencode(name)) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    tail = parts[-1] + OVERLAY_SUFFIX
    while len(os.fsencode(tail)) > MAX_NAME_BYTES - len(digest) - 2:  # whole characters off its start
        tail = tail[1:]
    return f"{digest}__{tail}"


class OverlayWriter:
    """Writes each explained result's overlay into ``folder``, before the result's row is printed."""

    def __init__(self, folder: Path, then: "InOrder") -> None:
        self.folder, self.then = folder, then
        self.written = 0
        self.failed: dict[int, FileResult] = {}  # by index: the results that became errors here

    def __call__(self, index: int, result: FileResult) -> None:
        if isinstance(result.prediction, ExplainedPrediction) and result.prediction.explanation is not None:
            path = self.folder / overlay_name(result.source)
            try:  # a failure is this file's, like an upload's: the others go on
                path.write_bytes(result.prediction.explanation.overlay_png())
            except (OSError, ValueError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                result = self.failed[index] = FileResult(result.source, error=OverlayNotWritten(str(path), reason))
            else:
                result.prediction.extra["overlay_file"] = str(path)
                self.written += 1
        self.then(index, result)


class InOrder:
    """Writes results in the order the files were given, each as soon as all before it are known."""

    def __init__(self, writer: Writer, stdout: TextIO, progress: Progress) -> None:
        self.writer, self.stdout, self.progress = writer, stdout, progress
        self.waiting: dict[int, FileResult] = {}
        self.next = 0

    def __call__(self, index: int, result: FileResult) -> None:
        self.waiting[index] = result
        if self.next in self.waiting:
            self.progress.clear()
            while self.next in self.waiting:
                self.writer.row(self.waiting.pop(self.next))
                self.next += 1
            self.stdout.flush()
        self.progress.advance(result)


def run_predict(args: argparse.Namespace) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    expansion = expand(args.paths)
    unreadable = [FileResult(path, error=UnreadableFile(path, reason)) for path, reason in expansion.problems]
    writer = WRITERS[args.format](stdout, [result.source for result in unreadable] + expansion.files)
    show_progress = args.progress if args.progress is not None else stderr.isatty() and len(expansion.files) > 1
    progress = Progress(stderr, len(expansion.files), enabled=show_progress)

    on_result: InOrder | OverlayWriter = InOrder(writer, stdout, progress)
    if args.explain is not None:
        try:
            args.explain.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SystemExit(f"{PROG}: --explain {args.explain}: {error.strerror or error}") from None
        on_result = OverlayWriter(args.explain, on_result)

    async def classify() -> list[FileResult]:
        async with AsyncClient(args.url, timeout_s=args.timeout, retries=args.retries,
                               api_key=args.api_key) as client:
            return await client.predict_many(expansion.files, concurrency=args.concurrency, on_result=on_result,
                                             explain=args.explain is not None)

    started = time.monotonic()
    writer.begin()
    try:
        for result in unreadable:
            writer.row(result)
        classified = asyncio.run(classify()) if expansion.files else []
        if isinstance(on_result, OverlayWriter):
            classified = [on_result.failed.get(index, result) for index, result in enumerate(classified)]
        results = unreadable + classified
    finally:  # a run cut short (service unreachable, Ctrl-C) still leaves well-formed output
        progress.clear()
        writer.end()
        stdout.flush()
    seconds = time.monotonic() - started
    progress.finish()
    if expansion.skipped:
        shown = ", ".join(expansion.skipped[:3]) + (", ..." if len(expansion.skipped) > 3 else "")
        print(f"skipped {len(expansion.skipped)} file(s) not named as images: {shown}", file=stderr)
    if isinstance(on_result, OverlayWriter):
        print(f"wrote {on_result.written} overlay PNG(s) into {args.explain}", file=stderr)
    failed = sum(not result.ok for result in results)
    sent = len(expansion.files)
    rate = f", {sent / seconds:.1f} files/s" if sent and seconds > 0 else ""
    print(f"{len(results)} file(s): {len(results) - failed} classified, {failed} failed in {seconds:.2f} s{rate}",
          file=stderr)
    return EXIT_FAILED if failed else EXIT_OK


def run_health(args: argparse.Namespace) -> int:
    with Client(args.url, timeout_s=args.timeout, retries=args.retries, api_key=args.api_key) as client:
        health = client.health()
        if not health.ready:
            print(f"{args.url}: up, not ready ({health.status})")
            return EXIT_FAILED
        model = client.metadata().model
    print(f"{args.url}: ready, model {model.get('name')} version {model.get('version')}")
    return EXIT_OK


def _percent(value: object) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "n/a"


def metadata_summary(metadata: Metadata) -> str:
    model, limits = metadata.model, metadata.serving
    params = model.get("params")
    size = f", {params:,} parameters" if isinstance(params, int) else ""
    return "\n".join([
        f"model     {model.get('name')} version {model.get('version')} ({model.get('architecture', 'n/a')}{size})",
        f"accuracy  {_percent(model.get('val_accuracy'))} on {model.get('val_images', 'n/a')} validation images, "
        f"calibration error (ECE) {_percent(model.get('val_ece'))}",
        f"classes   {', '.join(map(str, model.get('class_names', [])))}",
        f"accepts   {', '.join(limits.accepted_formats)}: up to {limits.max_upload_bytes:,} bytes and "
        f"{limits.max_image_pixels:,} pixels an image, {limits.max_batch_files} files a batch",
    ])


def run_metadata(args: argparse.Namespace) -> int:
    with Client(args.url, timeout_s=args.timeout, retries=args.retries, api_key=args.api_key) as client:
        metadata = client.metadata()
    print(json.dumps(as_json(metadata), indent=2) if args.format == "json" else metadata_summary(metadata))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, not as a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ServiceUnreachable as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other command-line tools do. stdout now
        # points at /dev/null so that the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
