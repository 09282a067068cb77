"""``cifar10-client predict FOLDER`` against a running service: wall time of the whole command (its
interpreter start included) over a folder of synthetic images, at several --concurrency values side
by side in one run, each repeated and its median kept.

    make serve                                     # in another terminal, or any running service
    .venv/bin/python bench/client_cli.py --url http://127.0.0.1:8000 --images 100 --size 32
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.arguments import at_least_one  # noqa: E402
from cifar10_client import Client, ClientError  # noqa: E402
from tests.synthetic import shape_image  # noqa: E402

CLIENT = Path(sys.executable).parent / "cifar10-client"


def write_folder(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        shape_image(index % 10, rng, size=size).save(folder / f"{index:03d}.jpg", format="JPEG", quality=90)


def run_once(folder: Path, url: str, concurrency: int, count: int) -> float:
    started = time.perf_counter()
    result = subprocess.run([str(CLIENT), "predict", str(folder), "--url", url, "--concurrency", str(concurrency),
                             "--format", "csv", "--no-progress"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    rows = result.stdout.splitlines()[1:]
    if result.returncode != 0 or len(rows) != count:
        raise SystemExit(f"cifar10-client failed (exit {result.returncode}, {len(rows)} rows):\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=at_least_one, default=100)
    parser.add_argument("--size", type=at_least_one, default=32, help="image side in pixels (default: 32, CIFAR's)")
    parser.add_argument("--concurrency", type=at_least_one, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=at_least_one, default=3)
    args = parser.parse_args()

    try:
        with Client(args.url) as client:
            if not client.health().ready:
                raise SystemExit(f"error: {args.url} is not ready (warming up); try again in a few seconds")
            model = client.metadata().model
    except (ValueError, ClientError) as error:  # a bad URL; no service there, or an error answer
        raise SystemExit(f"error: {error}") from None
    with tempfile.TemporaryDirectory(prefix="client-bench-") as tmp:
        folder = Path(tmp)
        write_folder(folder, args.images, args.size)
        run_once(folder, args.url, max(args.concurrency), args.images)  # warm-up: caches, connections, model
        print(f"{args.images} synthetic {args.size}x{args.size} JPEGs, model {model.get('name')} version "
              f"{model.get('version')}, median of {args.repeats} runs")
        print("| --concurrency | wall s (median) | min–max s | images/s |")
        print("|---:|---:|---:|---:|")
        for concurrency in args.concurrency:
            times = [run_once(folder, args.url, concurrency, args.images) for _ in range(args.repeats)]
            median = statistics.median(times)
            print(f"| {concurrency} | {median:.2f} | {min(times):.2f}–{max(times):.2f} | {args.images / median:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
