"""``python -m training.regenerate_report models/cifar10/3 --data PATH``: redraw an exported model's report.

Re-evaluates the exported SavedModel (as the service calls it) on the validation split its
``metadata.json`` records (same data, checked by sha256; same seed and size), checks the accuracy
against the recorded one, and rewrites ``report/`` with the current :mod:`training.reports`. Nothing
is trained; the curves come from the recorded history.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.contract import METADATA_FILE, SIGNATURE_NAME
from training import export, reports
from training.data import DatasetError, default_cache_dir, load_image_folder, stratified_split
from training.recipes import RECIPES, recipe_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.regenerate_report", description=__doc__.split("\n")[0])
    parser.add_argument("version_dir", type=Path, help="an exported version directory, e.g. models/cifar10/3")
    parser.add_argument("--data", type=Path, required=True,
                        help="the ImageFolder dataset the model was trained on (its sha256 must match metadata.json)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where decoded ImageFolder arrays are cached (default: %(default)s)")
    return parser


def regenerate(version_dir: Path, data: Path, cache_dir: Path | None) -> float:
    """Rewrite ``version_dir/report``; returns the re-measured validation accuracy."""
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    dataset = load_image_folder(data, cache_dir)
    if dataset.sha256 != metadata["data"]["sha256"]:
        raise DatasetError(f"{data}: sha256 {dataset.sha256} is not the {metadata['data']['sha256']} that "
                           f"{version_dir / METADATA_FILE} records. Pass the dataset this model was trained on.")
    _, val_split = stratified_split(dataset.train, metadata["val_images"], metadata["seed"])
    saved = tf.saved_model.load(str(version_dir))  # bound: its signatures hold only weak references to it
    probabilities = export.predict_saved_model(saved.signatures[SIGNATURE_NAME], val_split.images)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == val_split.labels))
    if round(accuracy, 4) != metadata["val_accuracy"]:
        raise DatasetError(f"{version_dir}: validation accuracy re-measured as {accuracy:.4f}, metadata.json "
                           f"says {metadata['val_accuracy']}: this is not the split the model was measured on.")
    history = metadata["history"]
    # Only its layers are drawn: no weights needed. Models trained before the rename record former names.
    model = RECIPES[recipe_name(metadata["architecture"])].build()
    reports.write_report(version_dir / reports.REPORT_DIR, history, val_split.images, val_split.labels, probabilities,
                         metadata["class_names"], model, metadata["seed"])
    return accuracy


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        accuracy = regenerate(args.version_dir, args.data, args.cache_dir)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"error: {error.filename}: no such file. Pass an exported version directory such as "
              "models/cifar10/3.", file=sys.stderr)
        return 1
    except KeyError as error:
        print(f"error: {args.version_dir / METADATA_FILE} has no {error} entry: it was not written by this "
              "training command.", file=sys.stderr)
        return 1
    print(f"wrote {args.version_dir / reports.REPORT_DIR}/ (validation accuracy {accuracy:.2%}, as recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
