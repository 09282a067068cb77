"""Offline out-of-distribution benchmark: how well each score separates validation images from images of
something else (bench/ood_sets.py), per accuracy level.

    python bench/ood.py --model models/cifar10/9 --data ../shared/data/cifar10-train-jpeg.tar.gz \
        [--json docs/ood-benchmark.json] [--scale 0.1 --val-limit 500]   # the last two: a quick check

In-distribution: the model's validation split (the stratified split training holds out, rebuilt from
metadata.json's seed and size). Scores from probabilities (what the signatures output and the service
serves) and from logits (computed here with the recipe's Keras model and the SavedModel's weights, as
training.reexport does; the probabilities are checked to be the signature's). Per set and score: AUROC
(OOD as positives) and the false-positive rate at 95% true-positive rate (the share of OOD images still
called "in" when 95% of validation images are kept), plus the validation accuracy of the answers kept "in".
The score today's exports serve (``ood_score``, core.ood.LAYER_STATISTICS) is fitted and computed here with
training.ood_export, as an export would, so that a model exported before it can be measured with it too.
Then the benign shifts (bench/ood_sets.SHIFTS: validation images uploaded as photographs, made gray, brighter,
blurred...): the share of them the scores of the image itself flag "out" at their fitted threshold.
Needs scikit-learn (the `bench` extra) for the digits and sample photographs.
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
from sklearn.metrics import roc_auc_score  # noqa: E402

from bench.ood_sets import FAR_SETS, add_size_arguments, make_sets, shifted_sets  # noqa: E402
from bench.paths import json_output  # noqa: E402
from core import ood  # noqa: E402
from core.contract import (  # noqa: E402
    INPUT_NAME,
    LEVELS,
    METADATA_FILE,
    OUTPUT_NAME,
    level_signature,
)
from core.cpus import available_cpus  # noqa: E402

# The smallest float32 probability treated as non-zero: log(0) would make the centred log-probability infinite.
TINY = 1e-30


def entropy_score(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row, in nats."""
    p = np.clip(probabilities.astype("float64"), TINY, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def centred_max_log_probability_score(probabilities: np.ndarray) -> np.ndarray:
    """``-(max log p - mean log p)``: the calibrated logits' maximum minus their mean, which softmax keeps
    (it loses only the logits' common offset), so a max-logit-like score without a logits output."""
    log_p = np.log(np.clip(probabilities.astype("float64"), TINY, 1.0))
    return -(np.max(log_p, axis=-1) - np.mean(log_p, axis=-1))


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """``-max z`` (Hendrycks et al. 2022); needs the logits, which today's signatures do not output."""
    return -np.max(logits, axis=-1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy ``-T logsumexp(z / T)`` (Liu et al. 2020); needs the logits."""
    scaled = logits.astype("float64") / temperature
    peak = np.max(scaled, axis=-1, keepdims=True)
    return -temperature * (peak[..., 0] + np.log(np.sum(np.exp(scaled - peak), axis=-1)))


def fit_class_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the precision (inverse) of their shared covariance: Mahalanobis' model of the
    penultimate features of in-distribution images (Lee et al. 2018)."""
    features = features.astype("float64")
    means = np.stack([features[labels == label].mean(axis=0) for label in range(num_classes)])
    centred = features - means[labels]
    covariance = centred.T @ centred / len(features)
    return means, np.linalg.pinv(covariance, hermitian=True)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The squared Mahalanobis distance to the nearest class mean; needs the penultimate features."""
    differences = features.astype("float64")[:, np.newaxis, :] - means[np.newaxis]
    distances = np.einsum("ncd,de,nce->nc", differences, precision, differences)
    return distances.min(axis=1)


def rebuilt_model(model_dir: Path, metadata: dict):
    """The recipe's Keras model with the SavedModel's weights (as training.reexport does), and the SavedModel."""
    import keras
    import tensorflow as tf

    from training.recipes import trained_recipe

    keras.config.set_dtype_policy("float32")
    model = trained_recipe(metadata, model_dir / METADATA_FILE).build()
    saved = tf.saved_model.load(str(model_dir))
    model.set_weights([variable.numpy() for variable in saved.variables])
    return model, saved


def penultimate_features(model, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """The input of the last Dense layer (the logits' features), for the image itself (no test-time views)."""
    import keras
    import tensorflow as tf

    dense = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense))
    extractor = keras.Model(model.inputs, dense.input)
    compute = tf.function(lambda batch: extractor(tf.cast(batch, tf.float32), training=False))
    return np.concatenate([compute(tf.constant(images[start : start + batch_size])).numpy()
                           for start in range(0, len(images), batch_size)]).astype("float64")


def layer_statistics_scores(model, score, sets: dict[str, np.ndarray], batch_size: int = 250) -> dict[str, np.ndarray]:
    """set -> the layer-statistics score (core.ood.LAYER_STATISTICS) of each image; ``score``: its constants,
    fitted on training images by training.ood_export.fit_layer_statistics as today's export fits them, so any
    model can be measured with it (tests/test_training_export checks that the export's ``ood_score`` output is
    this score)."""
    from training import ood_export

    read = ood_export.statistics_reader(ood_export.ood_heads(model), batch_size)
    return {name: score.score_arrays(*read(images)) for name, images in sets.items()}


def image_scores(features: np.ndarray, own: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of the image itself, whatever the level: the feature norm and the layer statistics."""
    return {ood.FEATURE_NORM: ood.feature_norm_score(np.linalg.norm(features, axis=1)), ood.LAYER_STATISTICS: own}


def logits_per_level(model, saved, metadata: dict, images: dict[str, np.ndarray], levels: list[str],
                     ) -> dict[str, dict[str, np.ndarray]]:
    """level -> set -> the view-averaged logits the level's signature divides by its temperature."""
    import tensorflow as tf

    from training import signatures

    out: dict[str, dict[str, np.ndarray]] = {}
    for level in LEVELS:
        if level.name not in levels:
            continue
        started = time.perf_counter()
        out[level.name] = {name: signatures.logits_with_tta(model, batch, level.tta, batch_size=250)
                           for name, batch in images.items()}
        # The logits are the signature's: its probabilities are their softmax at the level's temperature.
        check = images["validation"][:200]
        served = saved.signatures[level_signature(level.name)](**{INPUT_NAME: tf.constant(check)})[OUTPUT_NAME].numpy()
        ours = softmax(out[level.name]["validation"][:200] / temperature(metadata, level.name))
        difference = float(np.abs(served - ours).max())
        print(f"{level.name}: logits of {sum(len(b) for b in images.values())} images in "
              f"{time.perf_counter() - started:.0f} s; signature vs softmax(logits / T) max difference "
              f"{difference:.1e}", flush=True)
        if difference > 1e-3:
            raise SystemExit(f"{level.name}: the rebuilt model's logits are not the signature's ({difference:.1e})")
    return out


def temperature(metadata: dict, level: str) -> float:
    levels = metadata.get("levels") or {}
    return float(levels.get(level, {}).get("temperature") or metadata["temperature"])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype("float32")


def all_scores(logits: np.ndarray, temp: float, features: np.ndarray, gaussians: tuple, own: np.ndarray,
               ) -> dict[str, np.ndarray]:
    """Every score tried: from float32 probabilities as the signature returns them, from the logits, from
    the penultimate features and the layer statistics (both of the image itself, whatever the level's views)."""
    probabilities = softmax(logits / temp)
    return {
        ood.MAX_PROBABILITY: ood.max_probability_score(probabilities),
        "entropy": entropy_score(probabilities),
        "centred_max_log_probability": centred_max_log_probability_score(probabilities),
        "max_logit": max_logit_score(logits),
        "energy": energy_score(logits),
        "mahalanobis": mahalanobis_score(features, *gaussians),
        **image_scores(features, own),
    }


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    threshold = ood.fit_threshold(in_scores)
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return {"auroc": round(float(roc_auc_score(labels, np.concatenate([in_scores, out_scores]))), 4),
            "fpr_at_95_tpr": round(float(np.mean(out_scores <= threshold)), 4)}


def shift_flags(model, score, validation: dict[str, np.ndarray], images: np.ndarray) -> dict:
    """Per score of the image itself: the share of ``images`` (validation images) and of each benign shift of
    them that the score flags "out" at the threshold fitted on ``validation`` (that score's validation scores)."""
    sets = {"originals": images, **shifted_sets(images)}
    own = layer_statistics_scores(model, score, sets)
    scores = {name: image_scores(penultimate_features(model, batch), own[name]) for name, batch in sets.items()}
    return {"images": len(images), "scores": {
        score: {name: round(float(np.mean(by_score[score] > ood.fit_threshold(in_scores))), 4)
                for name, by_score in scores.items()}
        for score, in_scores in validation.items()}}


def benchmark(model_dir: Path, data: Path, levels: list[str], scale: float, val_limit: int | None,
              fit_images: int, shift_images: int, cache_dir: Path | None) -> dict:
    from bench.version_split import shared_split, version_metadata

    metadata = version_metadata(model_dir)
    train, val = shared_split(data, [model_dir], cache_dir)
    images, labels = val.images[:val_limit], val.labels[:val_limit]
    sets = {"validation": images, **make_sets(scale)}
    model, saved = rebuilt_model(model_dir, metadata)
    # Mahalanobis' class Gaussians come from training images (never the validation images scored here).
    fit_index = np.random.default_rng(0).permutation(len(train.labels))[:fit_images]
    gaussians = fit_class_gaussians(penultimate_features(model, train.images[fit_index]),
                                        train.labels[fit_index], len(metadata["class_names"]))
    features = {name: penultimate_features(model, batch) for name, batch in sets.items()}
    from training.ood_export import fit_layer_statistics

    layer_statistics = fit_layer_statistics(model, train.images)  # once: the shifts below reuse its constants
    own = layer_statistics_scores(model, layer_statistics, sets)
    logits = logits_per_level(model, saved, metadata, sets, levels)
    results: dict = {"model": str(model_dir), "served_score": ood.LAYER_STATISTICS, "validation_images": len(images),
                     "ood_images": {name: len(batch) for name, batch in sets.items() if name != "validation"},
                     "mahalanobis_fit_images": len(fit_index),
                     "keep_in_distribution": ood.KEEP_IN_DISTRIBUTION, "levels": {}}
    for level, by_set in logits.items():
        temp = temperature(metadata, level)
        scores = {name: all_scores(level_logits, temp, features[name], gaussians, own[name])
                  for name, level_logits in by_set.items()}
        predicted = by_set["validation"].argmax(axis=1)
        level_result: dict = {"accuracy": round(float(np.mean(predicted == labels)), 4), "scores": {}}
        for score_name, in_scores in scores["validation"].items():
            kept = in_scores <= ood.fit_threshold(in_scores)
            level_result["scores"][score_name] = {
                "threshold": ood.fit_threshold(in_scores),
                "accuracy_of_in": round(float(np.mean(predicted[kept] == labels[kept])), 4),
                "sets": {name: separation(in_scores, by_score[score_name])
                         for name, by_score in scores.items() if name != "validation"},
            }
        results["levels"][level] = level_result
    results["shifts"] = shift_flags(model, layer_statistics, image_scores(features["validation"], own["validation"]),
                                    images[:shift_images])
    return results


def print_tables(results: dict) -> None:
    for level, level_result in results["levels"].items():
        sets = list(next(iter(level_result["scores"].values()))["sets"])
        print(f"\n{level} (validation accuracy {level_result['accuracy']:.2%}; {results['validation_images']} "
              "validation images): AUROC / FPR at 95% TPR")
        print("| score | " + " | ".join(sets) + " | accuracy of 'in' |")
        print("|---|" + "---:|" * (len(sets) + 1))
        for score, figures in level_result["scores"].items():
            cells = [f"{figures['sets'][name]['auroc']:.3f} / {figures['sets'][name]['fpr_at_95_tpr']:.1%}"
                     for name in sets]
            print(f"| {score} | " + " | ".join(cells) + f" | {figures['accuracy_of_in']:.2%} |")
        served = level_result["scores"][results["served_score"]]["sets"]
        missed = [name for name in FAR_SETS if name in served and served[name]["auroc"] < 0.90]
        print(f"today's export's score {results['served_score']}: far-OOD target (AUROC >= 0.90 on "
              f"{', '.join(FAR_SETS)}) " + ("met" if not missed else f"missed on {', '.join(missed)}"))
    shifts = results["shifts"]
    names = list(next(iter(shifts["scores"].values())))
    print(f"\nbenign shifts of {shifts['images']} validation images: share flagged 'out' (by construction 5% of "
          "all validation images)")
    print("| score | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for score, flagged in shifts["scores"].items():
        print(f"| {score} | " + " | ".join(f"{flagged[name]:.1%}" for name in names) + " |")


def main() -> None:
    from bench.version_split import VersionSplitError, version_folder
    from core.tensorflow_runtime import set_tensorflow_threads
    from training.data import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/cifar10"),
                        help="a version folder, or a model folder for its highest version (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-train-jpeg.tar.gz"))
    parser.add_argument("--levels", default=",".join(level.name for level in LEVELS))
    add_size_arguments(parser)
    parser.add_argument("--fit-images", type=int, default=10000,
                        help="training images that fit the Mahalanobis score's class means and covariance")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here")
    args = parser.parse_args()
    set_tensorflow_threads(args.threads)
    try:
        results = benchmark(version_folder(args.model), args.data, args.levels.split(","), args.scale,
                            args.val_limit, args.fit_images, args.shift_images, args.cache_dir)
    except VersionSplitError as error:
        parser.error(str(error))
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
