"""``python -m training report VERSION_DIR --data PATH``: draw an exported model's report again.

Re-evaluates the exported SavedModel (as the service calls it) on the validation split its
``metadata.json`` records (same data, checked by sha256; same seed and size), checks the accuracy
against the recorded one, and rewrites ``report/`` with the current :mod:`training.reports`. Nothing
is trained; the curves come from the recorded history.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from core.contract import METADATA_FILE, SIGNATURE_NAME
from training import reports, signatures
from training.data import load_trained_on, model_split
from training.errors import TrainingError
from training.recipes import RECIPES, trained_recipe

# What this command reads from metadata.json: every export of this code writes them.
REQUIRED_KEYS = ("architecture", "class_names", "data", "history", "seed", "val_accuracy", "val_images")


class ReportError(TrainingError):
    """The version folder cannot be reported on; the message names the file and the fix."""


def regenerate_report(version_dir: Path, data: Path | None, cache_dir: Path | None) -> float:
    """Rewrite ``version_dir/report``; returns the re-measured validation accuracy."""
    metadata = read_metadata(version_dir)
    dataset = load_trained_on(data, metadata, version_dir / METADATA_FILE, cache_dir)
    _, val_split = model_split(dataset.train, metadata)
    saved = tf.saved_model.load(str(version_dir))  # bound: its signatures hold only weak references to it
    probabilities = signatures.predict_saved_model(saved.signatures[SIGNATURE_NAME], val_split.images)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == val_split.labels))
    if round(accuracy, 4) != metadata["val_accuracy"]:
        raise ReportError(f"{version_dir}: validation accuracy re-measured as {accuracy:.4f}, metadata.json "
                          f"says {metadata['val_accuracy']}: this is not the split the model was measured on.")
    # Only its layers are drawn: no weights needed.
    model = trained_recipe(metadata, version_dir / METADATA_FILE).build()
    reports.write_report(version_dir / reports.REPORT_DIR, metadata["history"], val_split.images, val_split.labels,
                         probabilities, metadata["class_names"], model, metadata["seed"])
    return accuracy


def read_metadata(version_dir: Path) -> dict[str, Any]:
    path = version_dir / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file. Pass an exported version directory such as "
                          "models/cifar10/3.") from None
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is not readable JSON ({error}); export the model again with "
                          "`python -m training reexport`.") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ReportError(f"{path} has no {', '.join(missing)}: it was not written by this training command.")
    if metadata["architecture"] not in RECIPES:
        raise ReportError(f"{path}: architecture {metadata['architecture']!r} is not a recipe of this code "
                          f"({sorted(RECIPES)}); draw its report with the code that trained it.")
    return metadata
