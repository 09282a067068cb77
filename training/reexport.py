"""``python -m training.reexport``: write an exported model's weights again, with every accuracy level.

No training: the weights are read from the source SavedModel's variables into the recipe's Keras
model, the source's own ``serving_default`` is checked to agree with the rebuilt model on the
validation split (the split the source was trained with, rebuilt from its data, seed and size), and
the export, calibration, evaluation and reports run as at the end of ``python -m training``.

    python -m training.reexport --source models/cifar10/3 --data ../shared/data/cifar10-train-jpeg.tar.gz
"""

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from core.contract import CLASS_NAMES, METADATA_FILE, SIGNATURE_NAME, export_contract, level_for_tta
from core.cpus import available_cpus
from training.data import DatasetError, default_cache_dir

# The source's served probabilities and the rebuilt model's may differ by float round-off only.
AGREEMENT_TOLERANCE = 1e-4


class ReexportError(Exception):
    """The source cannot be re-exported; the message names the file and the fix."""


def reexport(source: Path, data: Path, out: Path, cache_dir: Path | None, threads: int,
             timing_seconds: float) -> Path:
    import keras
    import numpy as np
    import tensorflow as tf

    from core.tensorflow_runtime import set_tensorflow_threads
    from training import export, levels, ood_export, reports
    from training.data import load_image_folder, stratified_split
    from training.publish import publish_next_version, staging_dir
    from training.recipes import RECIPE_ALIASES, RECIPES, recipe_name
    from training.train import git_commit

    set_tensorflow_threads(threads)
    metadata_path = source / METADATA_FILE
    try:
        source_metadata: dict[str, Any] = json.loads(metadata_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReexportError(f"{metadata_path}: cannot read it ({error}); --source must be an exported version "
                            "directory such as models/cifar10/3.") from None
    arch = source_metadata.get("architecture")
    if arch is None or RECIPE_ALIASES.get(arch, arch) not in RECIPES:
        raise ReexportError(f"{metadata_path}: architecture {arch!r} is not a recipe of this code "
                            f"({sorted(RECIPES)}); re-export it with the code that trained it.")
    recipe = RECIPES[recipe_name(arch)]

    dataset = load_image_folder(data, cache_dir)
    expected_sha = source_metadata.get("data", {}).get("sha256")
    if expected_sha and dataset.sha256 != expected_sha:
        raise ReexportError(f"{data}: sha256 {dataset.sha256} is not the data {source} was trained on "
                            f"({expected_sha}); pass that archive with --data.")
    _, val = stratified_split(dataset.train, int(source_metadata["val_images"]), int(source_metadata["seed"]))

    keras.config.set_dtype_policy("float32")
    model = recipe.build()
    saved = tf.saved_model.load(str(source))
    weights = [variable.numpy() for variable in saved.variables]
    if [w.shape for w in weights] != [tuple(w.shape) for w in model.weights]:
        raise ReexportError(f"{source}: its variables do not fit the {arch} recipe's model; re-export it with the "
                            "code that trained it.")
    model.set_weights(weights)

    # The rebuilt model must be the source model: its default level against the source's own signature.
    source_probabilities = export.predict_saved_model(saved.signatures[SIGNATURE_NAME], val.images)
    default_level = level_for_tta(source_metadata.get("tta", recipe.tta))
    bfloat16_policies = export.mixed_bfloat16_policies(recipe.build) if recipe.mixed_bfloat16 else None

    with staging_dir(out) as staging:
        levels_metadata, precision_metadata, level_probabilities = levels.export_levels(
            model, staging, val.images, val.labels, default_level, bfloat16_policies, timing_seconds)
        probabilities = level_probabilities[default_level]
        difference = float(np.abs(probabilities - source_probabilities).max())
        source_accuracy = float(np.mean(source_probabilities.argmax(axis=1) == val.labels))
        accuracy = float(np.mean(probabilities.argmax(axis=1) == val.labels))
        print(f"{source} serving_default on the validation split: {source_accuracy:.2%}; re-exported {default_level}: "
              f"{accuracy:.2%} (largest probability difference {difference:.1e})", flush=True)
        if accuracy != source_accuracy or difference > AGREEMENT_TOLERANCE:
            raise ReexportError(f"the re-exported {default_level} level scores {accuracy:.4f} on the validation split "
                                f"and {source} {source_accuracy:.4f} (probabilities differ by up to {difference:.1e}); "
                                "the rebuilt model is not the source model, so nothing was written.")

        reports.write_report(staging / reports.REPORT_DIR, source_metadata["history"], val.images, val.labels,
                             probabilities, CLASS_NAMES, model, int(source_metadata["seed"]))

        default_figures = levels_metadata[default_level]
        metadata = {
            **source_metadata,
            "name": out.name,
            "input_contract": export_contract(),
            "val_accuracy": round(accuracy, 4),
            "temperature": default_figures["temperature"],
            "val_ece_before_temperature": default_figures["val_ece_before_temperature"],
            "val_ece": default_figures["val_ece"],
            "default_level": default_level,
            "levels": levels_metadata,
            "precision": precision_metadata,
            "ood": ood_export.fit_ood(staging, val.images, level_probabilities),
            "reexported_from": {"version": source.name, "git_commit": source_metadata.get("git_commit"),
                                "created": source_metadata.get("created"),
                                "max_probability_difference": float(f"{difference:.2e}")},
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "git_commit": git_commit(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "threads": threads,
        }
        export.write_metadata(staging, metadata)
        version_dir = publish_next_version(staging, out)
    print(json.dumps({"model": str(version_dir), "levels": {name: {key: figures[key] for key in (
        "val_accuracy", "val_ece", "temperature", "images_per_second")} for name, figures in levels_metadata.items()},
        "bfloat16_batch_sizes": precision_metadata["bfloat16_batch_sizes"]}), flush=True)
    return version_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reexport", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the exported version directory to read")
    parser.add_argument("--data", type=Path, required=True,
                        help="the ImageFolder archive the source was trained on (its sha256 is checked)")
    parser.add_argument("--out", type=Path, default=None,
                        help="model directory for the new version (default: the source's parent)")
    parser.add_argument("--threads", type=int, default=available_cpus(), help="TensorFlow threads")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="decoded-dataset cache")
    parser.add_argument("--timing-seconds", type=float, default=1.0,
                        help="seconds timing each level, precision and batch size for metadata.json")
    args = parser.parse_args(argv)
    try:
        reexport(args.source, args.data, args.out or args.source.parent, args.cache_dir, args.threads,
                 args.timing_seconds)
    except (ReexportError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
