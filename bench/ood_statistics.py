"""Which of the layer-statistics score's statistics earn their cost (docs/ood.md, "Fewer reductions").

    python bench/ood_statistics.py --model models/cifar10/10 --data ../shared/data/cifar10-train-jpeg.tar.gz \
        [--scale 0.1 --val-limit 500 --shift-images 100]   # the last three: a quick check

Per variant (which of the last feature maps the score reads, pooled which ways), the score is refitted on the
same training images as training.ood_export fits it and measured as bench/ood.py measures it: AUROC / share
called "in" at the threshold that keeps 95% of the validation images, per OOD set, and the share of each benign
shift flagged "out". Then what each variant's part of the graph costs alone: the statistics, the whitened
distance and the feature term, converted to OpenVINO float32 and run at batch 1 on --threads threads, the
variants in turns so that drift on the machine hits them alike.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.ood import rebuilt_model, separation  # noqa: E402
from bench.ood_sets import add_size_arguments, make_sets, shifted_sets  # noqa: E402
from bench.paths import json_output  # noqa: E402
from core import ood  # noqa: E402
from core.contract import FLOAT32  # noqa: E402
from core.cpus import available_cpus  # noqa: E402
from core.openvino_runtime import DEVICE, compile_config, openvino_core  # noqa: E402
from training import ood_export  # noqa: E402


def root_mean_square(activation: tf.Tensor, axis: list[int]) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(activation), axis=axis))


# Every pooling measured: today's export's (ood_export.POOLINGS) and version 10's third, RMS.
POOLINGS = {**ood_export.POOLINGS, "rms": root_mean_square}
# name -> (indices into the maps ood_export reads, poolings). Map 0 is the first of conv group 2.
VARIANTS = {
    "max, mean, rms (version 10)": ((0, 1, 2, 3), ("max", "mean", "rms")),
    "max, mean (today's export)": ((0, 1, 2, 3), ("max", "mean")),
    "mean": ((0, 1, 2, 3), ("mean",)),
    "max": ((0, 1, 2, 3), ("max",)),
    "max, mean, rms without map 0": ((1, 2, 3), ("max", "mean", "rms")),
    "max, mean of maps 0 and 2": ((0, 2), ("max", "mean")),
}
BATCH_SIZE = 250


def columns(maps: int) -> dict[tuple[int, str], int]:
    """(map, pooling) -> its column in the statistics every_statistic computes."""
    return {(index, name): index * len(POOLINGS) + position
            for index in range(maps) for position, name in enumerate(POOLINGS)}


def every_statistic(heads, sets: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """set -> (every map's statistic under every pooling ``(n, maps * len(POOLINGS))``, feature shortness)."""
    read = ood_export.statistics_reader(heads, BATCH_SIZE, POOLINGS)
    return {name: read(images) for name, images in sets.items()}


def variant_scores(statistics: dict[str, tuple[np.ndarray, np.ndarray]], chosen: list[int],
                   score: ood_export.LayerStatisticsScore) -> dict[str, np.ndarray]:
    """set -> ``score`` (fitted on the ``chosen`` columns) of its images."""
    return {name: score.score_arrays(values[:, chosen], short) for name, (values, short) in statistics.items()
            if name != "fit"}


def separation_of(scores: dict[str, np.ndarray], ood_names: list[str], shift_names: list[str]) -> dict:
    validation = scores["validation"]
    threshold = ood.fit_threshold(validation)
    return {"sets": {name: separation(validation, scores[name]) for name in ood_names},
            "shifts_flagged": {name: round(float(np.mean(scores[name] > threshold)), 4) for name in shift_names}}


def score_graph(score: ood_export.LayerStatisticsScore, map_indices: tuple[int, ...], poolings: dict):
    """The variant's score as a function of every map ood_export reads and the penultimate features."""

    def graph(*tensors: tf.Tensor) -> tf.Tensor:
        *maps, features = tensors
        return score.from_statistics(ood_export.layer_statistics([maps[i] for i in map_indices], poolings),
                                     ood_export.feature_shortness(features))

    return graph


def subgraph_cost(heads, scores: dict[str, ood_export.LayerStatisticsScore], threads: int,
                  rounds: int = 15, seconds: float = 0.3) -> dict[str, dict[str, float]]:
    """Per variant: operations and microseconds per image (median and best of ``rounds``) of its score alone."""
    import openvino

    *map_outputs, features, _ = heads.outputs
    specs = [tf.TensorSpec([None, *output.shape[1:]], tf.float32) for output in [*map_outputs, features]]
    rng = np.random.default_rng(0)
    inputs = [np.maximum(rng.normal(size=(1, *spec.shape[1:])), 0).astype("float32") for spec in specs]
    requests = {}
    for name, (map_indices, poolings) in VARIANTS.items():
        graph = score_graph(scores[name], map_indices, {pooling: POOLINGS[pooling] for pooling in poolings})
        model = openvino.convert_model(tf.function(graph).get_concrete_function(*specs))
        compiled = openvino_core().compile_model(model, DEVICE, compile_config(FLOAT32, threads))
        request = compiled.create_infer_request()
        for _ in range(200):  # first calls allocate
            request.infer(inputs)
        requests[name] = (request, len(model.get_ordered_ops()))
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(rounds):
        for name, (request, _) in requests.items():
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                request.infer(inputs)
                calls += 1
            times[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: {"operations": operations, "median_us": round(float(np.median(times[name])), 1),
                   "best_us": round(min(times[name]), 1)} for name, (_, operations) in requests.items()}


def benchmark(model_dir: Path, data: Path, scale: float, val_limit: int | None, shift_images: int,
              threads: int) -> dict:
    from bench.version_split import shared_split, version_metadata
    from training.data import default_cache_dir

    metadata = version_metadata(model_dir)
    train, val = shared_split(data, [model_dir], default_cache_dir())
    model, _ = rebuilt_model(model_dir, metadata)
    heads = ood_export.ood_heads(model)
    images = val.images[:val_limit]
    ood_sets = make_sets(scale)
    shifts = {"originals": images[:shift_images], **shifted_sets(images[:shift_images])}
    statistics = every_statistic(heads, {"fit": ood_export.fitting_images(train.images), "validation": images,
                                         **ood_sets, **shifts})
    by_column = columns(len(heads.outputs) - 2)
    variants = {name: [by_column[(index, pooling)] for index in map_indices for pooling in poolings]
                for name, (map_indices, poolings) in VARIANTS.items()}
    fit, shortness = statistics["fit"]
    # Each variant refitted on its own columns of the fitting images, as ood_export fits the whole score.
    scores = {name: ood_export.fit_constants(fit[:, chosen], shortness) for name, chosen in variants.items()}
    results = {"model": str(model_dir), "validation_images": len(images), "shift_images": len(shifts["originals"]),
               "threads": threads, "variants": {}}
    for name, chosen in variants.items():
        results["variants"][name] = {"statistics": len(chosen), **separation_of(
            variant_scores(statistics, chosen, scores[name]), list(ood_sets), list(shifts))}
    for name, cost in subgraph_cost(heads, scores, threads).items():
        results["variants"][name]["cost"] = cost
    return results


def print_table(results: dict) -> None:
    first = next(iter(results["variants"].values()))
    sets, shifts = list(first["sets"]), list(first["shifts_flagged"])
    print(f"{results['model']}: AUROC / share called 'in' at 95% of {results['validation_images']} validation images "
          f"kept; benign shifts of {results['shift_images']} flagged 'out' (lowest-highest); the score alone in "
          f"OpenVINO, batch 1, {results['threads']} threads")
    print("| variant | statistics | " + " | ".join(sets) + " | shifts flagged | operations | µs per image (median) |")
    print("|---|---:|" + "---:|" * (len(sets) + 3))
    for name, figures in results["variants"].items():
        cells = [f"{figures['sets'][s]['auroc']:.3f} / {figures['sets'][s]['fpr_at_95_tpr']:.1%}" for s in sets]
        flagged = [figures["shifts_flagged"][s] for s in shifts]
        cost = figures["cost"]
        print(f"| {name} | {figures['statistics']} | " + " | ".join(cells)
              + f" | {min(flagged):.1%}-{max(flagged):.1%} | {cost['operations']} | {cost['median_us']:.0f} |")


def main() -> None:
    from bench.version_split import VersionSplitError, version_folder
    from core.tensorflow_runtime import set_tensorflow_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/cifar10"),
                        help="a version folder, or a model folder for its highest version (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-train-jpeg.tar.gz"))
    add_size_arguments(parser)
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here")
    args = parser.parse_args()
    set_tensorflow_threads(args.threads)
    try:
        results = benchmark(version_folder(args.model), args.data, args.scale, args.val_limit, args.shift_images,
                            args.threads)
    except VersionSplitError as error:
        parser.error(str(error))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
