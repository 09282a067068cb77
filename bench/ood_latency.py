"""What the "none of these" score costs a lone /predict: the same weights served with and without it.

    python bench/ood_latency.py [--with models/cifar10/5] [--without models/cifar10/4] [--pairs 500]

Version 5 is version 4's weights exported again with the ``feature_norm`` output and the fitted OOD threshold
(docs/ood.md); version 4 has neither, so its answers carry only the fallback score from the probabilities.
Both versions are served at once, each by its own service (``python -m app`` on loopback, each alone in a
models folder of its own), and take turns call by call: per level, ``--pairs`` pairs of uploads of the same
32x32 JPEG, one to each service on its keep-alive connection, back to back (the order swapped every pair),
so that whatever else the machine does falls on both alike. Prints both medians per level and the median of
the paired differences against issue 27's target (at most +0.2 ms). ``--with models/cifar10/10 --without
models/cifar10/9`` times version 10's layer-statistics score against version 9's feature norm.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.arguments import at_least_one  # noqa: E402
from bench.lone_request import BOUNDARY, jpeg_upload, proc_stat, service_times, wait_ready  # noqa: E402
from bench.paths import json_output  # noqa: E402
from core.contract import LEVEL_NAMES  # noqa: E402

TARGET_MS = 0.2
MODEL_NAME = "cifar10"


def start_service(version_dir: Path, port: int, log: Path, models_root: Path) -> subprocess.Popen:
    """``python -m app`` serving ``version_dir`` alone: a models folder holding only a link to it."""
    (models_root / MODEL_NAME).mkdir(parents=True)
    (models_root / MODEL_NAME / version_dir.name).symlink_to(version_dir.resolve())
    env = {**os.environ, "MODEL_DIR": str(models_root / MODEL_NAME), "HOST": "127.0.0.1", "PORT": str(port),
           "MODEL_POLL_SECONDS": "0"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def first_answer(connection: http.client.HTTPConnection, body: bytes) -> dict[str, Any]:
    connection.request("POST", "/predict", body=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    return json.loads(connection.getresponse().read())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sides = {"with": args.with_dir, "without": args.without_dir}
    services: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory(prefix="ood-latency-") as temporary:
        try:
            for index, (side, folder) in enumerate(sides.items()):
                services[side] = start_service(folder, args.port + index, Path(temporary) / f"{side}.log",
                                               Path(temporary) / side)
            connections = {}
            for index, side in enumerate(sides):
                wait_ready(args.port + index, services[side], Path(temporary) / f"{side}.log")
                connections[side] = http.client.HTTPConnection("127.0.0.1", args.port + index, timeout=60)
            body = jpeg_upload()
            answers = {side: first_answer(connections[side], body) for side in sides}
            levels = tuple(args.level or LEVEL_NAMES)
            for side in sides:
                for level in levels:
                    service_times(connections[side], body, level, 20)  # warm each level's kernels
            times: dict[str, dict[str, list[float]]] = {side: {level: [] for level in levels} for side in sides}
            busy_before, total_before = proc_stat()
            for level in levels:
                for pair in range(args.pairs):  # one call each, in turn, the order swapped every pair
                    for side in (sides if pair % 2 == 0 else reversed(sides)):
                        times[side][level] += service_times(connections[side], body, level, 1)
            busy_after, total_after = proc_stat()
        finally:
            for process in services.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(60)
    rows = {}
    for level in levels:
        with_ood, without = statistics.median(times["with"][level]), statistics.median(times["without"][level])
        # The median of the paired differences: each pair ran back to back, under the same load.
        paired = statistics.median(a - b for a, b in zip(times["with"][level], times["without"][level], strict=True))
        rows[level] = {"with_p50_ms": round(with_ood, 2), "without_p50_ms": round(without, 2),
                       "difference_ms": round(paired, 2), "met": paired <= TARGET_MS,
                       "calls": len(times["with"][level])}
    return {"with": str(args.with_dir), "without": str(args.without_dir),
            "ood_fields": {side: {key: answers[side].get(key) for key in ("ood_score", "in_distribution")}
                           for side in sides},
            "machine_busy_share": round((busy_after - busy_before) / max(total_after - total_before, 1), 3),
            "levels": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"/predict at one connection: {result['with']} ({ood_score_name(Path(result['with']))}) against "
             f"{result['without']} ({ood_score_name(Path(result['without']))}), the same weights; all CPUs "
             f"{result['machine_busy_share']:.0%} busy",
             f"first answers' OOD fields: {json.dumps(result['ood_fields'])}",
             f"{'level':<12}{'with p50':>11}{'without p50':>14}{'paired diff.':>14}  target (<= +{TARGET_MS} ms)"]
    for level, row in result["levels"].items():
        lines.append(f"{level:<12}{row['with_p50_ms']:>8.2f} ms{row['without_p50_ms']:>11.2f} ms"
                     f"{row['difference_ms']:>+11.2f} ms  {'met' if row['met'] else 'MISSED'}")
    return "\n".join(lines)


def ood_score_name(version_dir: Path) -> str:
    """The OOD score a version's export fitted a threshold for, as its metadata.json names it."""
    block = json.loads((version_dir / "metadata.json").read_text()).get("ood")
    return f"OOD score {block['score']}" if isinstance(block, dict) else "no fitted OOD score"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--with", dest="with_dir", type=Path, default=Path("models/cifar10/5"),
                        help="a version folder exported with an OOD output (version 5: feature_norm)")
    parser.add_argument("--without", dest="without_dir", type=Path, default=Path("models/cifar10/4"),
                        help="the same weights exported without it, or with another (version 9 against 10)")
    parser.add_argument("--pairs", type=at_least_one, default=500, help="calls per level and side, taken in turns")
    parser.add_argument("--level", action="append", choices=LEVEL_NAMES, help="measure only this level (repeatable)")
    parser.add_argument("--port", type=int, default=8792, help="the first service's port; the second gets the next")
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    result = measure(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
