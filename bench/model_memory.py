"""Resident memory of served model versions, per level and batch size, each version in a fresh process.

    python bench/model_memory.py --model models/cifar10/9 --model models/cifar10/10 [--rounds 2]

What a replica's model costs in memory, before HTTP: every ``--model`` version folder is loaded as the service
loads it (``core.versions.load_version`` with ``app.settings``' defaults: its inference threads, its
``BATCH_CONCURRENCY`` and level settings) in a Python process of its own, which reads its ``VmRSS`` after the
load, then after each level has answered batches of each ``--batch`` size, ``BATCH_CONCURRENCY`` batches at once
from as many threads (as a busy replica computes them). Memory only grows along the way: the runtime keeps the
buffers its largest batch needed, so the last figure is what a replica holds after heavy load. The versions
take turns within each of ``--rounds`` rounds, so they are compared side by side on the same machine.
"""

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.paths import json_output  # noqa: E402
from core.contract import version_dirs  # noqa: E402

BATCH_SIZES = (1, 8, 64)  # one upload; a few connections' worth; MAX_BATCH_SIZE's default


def resident_mib() -> float:
    """This process's resident set (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status (Linux only)")


def measure_one(version_dir: Path, batch_sizes: list[int]) -> dict[str, Any]:
    """In this process: load ``version_dir`` as the service would and read VmRSS after each step."""
    import numpy as np

    from app.settings import Settings
    from core.versions import load_version

    settings = Settings()
    options = settings.runtime_options()
    before = resident_mib()
    model = load_version(version_dir, int(version_dir.name), options, settings.level_settings())
    steps = {"loaded": round(resident_mib() - before, 1)}
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(options.concurrency) as pool:
        for size in batch_sizes:
            for level in model.level_names:
                batches = [rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
                           for _ in range(options.concurrency)]
                list(pool.map(lambda images, level=level: model.predict(images, level), batches))
                steps[f"{level}@{size}"] = round(resident_mib() - before, 1)
    precisions = {level: model.level_table.precision(level) for level in model.level_names}
    return {"model": str(version_dir), "interpreter_mib": round(before, 1), "threads": options.threads,
            "concurrency": options.concurrency, "precisions": precisions, "steps": steps}


def measure(models: list[Path], batch_sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Every model once per round, each in a fresh interpreter."""
    results = []
    for round_index in range(rounds):
        for model in models:
            command = [sys.executable, __file__, "--child", str(model), "--batch", *map(str, batch_sizes)]
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode != 0:  # e.g. a folder that fails the export contract: its loader says why
                last_line = (child.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"measuring {model} failed (exit {child.returncode}): {last_line}")
            results.append({"round": round_index + 1, **json.loads(child.stdout.splitlines()[-1])})
    return results


def table(results: list[dict[str, Any]]) -> str:
    steps = list(results[0]["steps"])
    width = max(len(row["model"]) for row in results)
    lines = ["MiB above the interpreter's own resident set, after each step (a fresh process per row; "
             f"{results[0]['threads']} inference threads, {results[0]['concurrency']} batches at once)",
             f"round  {'model':<{width}}" + "".join(f"{step:>14}" for step in steps)]
    for row in results:
        figures = "".join(f"{row['steps'][step]:>14.1f}" for step in steps)
        lines.append(f"{row['round']:>5}  {row['model']:<{width}}{figures}")
    lines.append("precisions: " + "; ".join(sorted({f"{r['model']}: {json.dumps(r['precisions'])}" for r in results})))
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, action="append",
                        help="a version folder, models/cifar10/<N> (repeatable; default: the two newest "
                        "versions in models/cifar10)")
    parser.add_argument("--batch", type=int, nargs="+", default=list(BATCH_SIZES), help="batch sizes, in order")
    parser.add_argument("--rounds", type=int, default=2, help="times each model is measured, in turns")
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here as JSON")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None and not args.model:
        args.model = [Path(os.path.relpath(path)) for _, path in version_dirs(ROOT / "models" / "cifar10")[-2:]]
    if any(size < 1 for size in args.batch) or args.rounds < 1:
        parser.error("--batch sizes and --rounds must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.child is not None:
        print(json.dumps(measure_one(args.child, args.batch)))
        return
    for model in args.model:
        if not (model / "metadata.json").is_file() or not model.name.isdigit():
            sys.exit(f"{model} is not a model version folder (models/cifar10/<N> with metadata.json)")
    results = measure(args.model, args.batch, args.rounds)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
