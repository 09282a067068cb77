"""What the service answers about "none of these": a version loaded as the service loads it (core.versions, the
OpenVINO runtime), each level in the precision it runs in on this CPU and, side by side, in float32.

    python bench/ood_served.py --model models/cifar10/10 --data ../shared/data/cifar10-train-jpeg.tar.gz \
        [--json docs/ood-served.json] [--scale 0.1 --val-limit 500 --shift-images 100]   # the last three: quick

Per level and precision, at the threshold the service applies (core.ood.model_threshold: the one fitted in that
precision where the export fitted one, else the float32 one): validation accuracy, the share of validation
images kept "in" (the export aims at 95%) and the accuracy of those; per OOD set (bench/ood_sets.py) the AUROC
of the served score and the share called "in" (the false-positive rate at the served threshold, not at a
threshold refitted here as bench/ood.py does); per benign shift of validation images, the share flagged "out".
Needs scikit-learn (the `bench` extra) for the digits and sample photographs.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from bench.ood_sets import add_size_arguments, make_sets, shifted_sets  # noqa: E402
from bench.paths import json_output  # noqa: E402
from core import ood  # noqa: E402
from core.contract import NUM_CLASSES  # noqa: E402
from core.cpus import available_cpus  # noqa: E402
from core.level_table import FLOAT32_LEVELS, MODEL_LEVELS, LevelSettings  # noqa: E402
from core.runtime import RuntimeOptions  # noqa: E402
from core.versions import LoadedModel, load_version  # noqa: E402

BATCH_SIZE = 64  # the service's largest batch by default
SETTINGS: dict[str, LevelSettings] = {"served": MODEL_LEVELS, "float32": FLOAT32_LEVELS}


def served_rows(model: LoadedModel, level: str, images: np.ndarray) -> np.ndarray:
    """Each image's served row: ten probabilities, then the model's own OOD score."""
    return np.concatenate([model.predict(images[start:start + BATCH_SIZE], level)
                           for start in range(0, len(images), BATCH_SIZE)]).astype("float64")


def measure_level(model: LoadedModel, level: str, sets: dict[str, np.ndarray], labels: np.ndarray,
                  shifts: dict[str, np.ndarray]) -> dict:
    """The figures of one level as ``model`` serves it (module docstring)."""
    rows = {name: served_rows(model, level, images) for name, images in {**sets, **shifts}.items()}
    precision = model.level_table.precision(level)
    threshold = ood.model_threshold(model.metadata, ood.served_score(rows["validation"]), level, precision)
    if threshold is None:
        raise SystemExit(f"{model.path}: no OOD threshold for {level}; this benchmark measures a version that has one")
    scores = {name: ood.ood_scores(value) for name, value in rows.items()}
    predicted = rows["validation"][:, :NUM_CLASSES].argmax(axis=1)
    kept = scores["validation"] <= threshold

    def auroc(out_scores: np.ndarray) -> float:
        truth = np.concatenate([np.zeros(len(scores["validation"])), np.ones(len(out_scores))])
        return round(float(roc_auc_score(truth, np.concatenate([scores["validation"], out_scores]))), 4)

    return {
        "precision": precision, "threshold": threshold,
        "accuracy": round(float(np.mean(predicted == labels)), 4),
        "kept_in": round(float(np.mean(kept)), 4),
        "accuracy_of_in": round(float(np.mean(predicted[kept] == labels[kept])), 4),
        "sets": {name: {"auroc": auroc(scores[name]), "called_in": round(float(np.mean(scores[name] <= threshold)), 4)}
                 for name in sets if name != "validation"},
        "shifts_flagged_out": {name: round(float(np.mean(scores[name] > threshold)), 4) for name in shifts},
    }


def benchmark(version_dir: Path, data: Path, levels: list[str], scale: float, val_limit: int | None,
              shift_images: int, threads: int, cache_dir: Path | None) -> dict:
    from bench.version_split import shared_split

    _, val = shared_split(data, [version_dir], cache_dir)
    images, labels = val.images[:val_limit], val.labels[:val_limit]
    sets = {"validation": images, **make_sets(scale)}
    shifts = {"originals": images[:shift_images], **shifted_sets(images[:shift_images])}
    results: dict = {"model": str(version_dir), "validation_images": len(images), "shift_images": shift_images,
                     "ood_images": {name: len(batch) for name, batch in sets.items() if name != "validation"},
                     "threads": threads, "settings": {}}
    for setting, level_settings in SETTINGS.items():
        model = load_version(version_dir, int(version_dir.name), RuntimeOptions(threads=threads), level_settings)
        results["settings"][setting] = {level: measure_level(model, level, sets, labels, shifts) for level in levels}
        for level in levels:
            figures = results["settings"][setting][level]
            print(f"{setting} {level}: {figures['precision']}, kept in {figures['kept_in']:.1%}", flush=True)
    return results


def print_tables(results: dict) -> None:
    first = next(iter(next(iter(results["settings"].values())).values()))
    sets, shifts = list(first["sets"]), list(first["shifts_flagged_out"])
    print(f"\n{results['validation_images']} validation images; per OOD set: AUROC / share called 'in'")
    print("| level | precision | accuracy | kept in | accuracy of in | " + " | ".join(sets) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(sets))
    for by_level in results["settings"].values():
        for level, figures in by_level.items():
            cells = [f"{figures['sets'][name]['auroc']:.3f} / {figures['sets'][name]['called_in']:.1%}"
                     for name in sets]
            print(f"| {level} | {figures['precision']} | {figures['accuracy']:.2%} | {figures['kept_in']:.1%} | "
                  f"{figures['accuracy_of_in']:.2%} | " + " | ".join(cells) + " |")
    print(f"\nbenign shifts of {results['shift_images']} validation images: share flagged 'out'")
    print("| level | precision | " + " | ".join(shifts) + " |")
    print("|---|---|" + "---:|" * len(shifts))
    for by_level in results["settings"].values():
        for level, figures in by_level.items():
            print(f"| {level} | {figures['precision']} | "
                  + " | ".join(f"{figures['shifts_flagged_out'][name]:.1%}" for name in shifts) + " |")


def main() -> None:
    from bench.version_split import VersionSplitError, version_folder
    from training.data import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a version folder (models/cifar10/10), or a model folder for its highest version")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-train-jpeg.tar.gz"))
    parser.add_argument("--levels", default="fast,balanced,accurate")
    add_size_arguments(parser)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here")
    args = parser.parse_args()
    try:
        results = benchmark(version_folder(args.model), args.data, args.levels.split(","), args.scale,
                            args.val_limit, args.shift_images, args.threads, args.cache_dir)
    except VersionSplitError as error:
        parser.error(str(error))
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
