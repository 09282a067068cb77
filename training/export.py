"""The export path, top to bottom: calibrate every level, write the SavedModel, evaluate it, draw the
report, write metadata.json.

``train`` runs it on the weights it has just fitted, ``reexport`` on weights read back from an exported
version; both run it inside a staging folder (training.publish) and publish that folder after. A step
added to every export (a conversion for another runtime, a threshold fitted on validation) goes into
:func:`export` where its comment says, and adds its entries to metadata.json there.
"""

import datetime as dt
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core.contract import LEVELS, METADATA_FILE, SIGNATURE_NAME, export_contract, level_named
from core.level_table import OPENVINO_SECTION
from training import calibration, evaluation, ood_export, openvino_export, reports, signatures
from training.calibration import FittedTemperature
from training.data import Split
from training.recipes import Recipe


@dataclass(frozen=True)
class Trained:
    """One set of trained weights and what metadata.json says about how they were trained."""

    model: keras.Model  # float32: every level is traced from it (bfloat16 signatures too, with its weights)
    recipe: Recipe
    default_level: str  # the level exported as serving_default
    history: dict[str, list[float]]  # per epoch, for the report's curves
    seed: int  # the run's; the report draws its sample images with it
    description: dict[str, Any]  # metadata.json's entries about the training: class_names, recipe, data, ...


@dataclass(frozen=True)
class Evaluation:
    """Figures of the written SavedModel, called as the service calls it."""

    default_level: str
    level_probabilities: dict[str, np.ndarray]  # each level's validation probabilities, float32
    val_accuracy: float
    test_accuracy: float | None  # None without a test split
    levels: dict[str, dict[str, Any]]  # metadata.json's "levels": every level's figures
    precision: dict[str, Any]  # metadata.json's "precision": bfloat16 against float32, and where it is used

    @property
    def val_probabilities(self) -> np.ndarray:
        """The default level's validation probabilities."""
        return self.level_probabilities[self.default_level]


@dataclass(frozen=True)
class Exported:
    metadata: dict[str, Any]
    val_probabilities: np.ndarray  # the default level's, as its signature answers


@dataclass(frozen=True)
class KeptPrecisions:
    """The precisions an export of the same weights chose by timing on its CPU (``reexport --keep-precisions``),
    kept instead of timing here: a CPU without bfloat16 cannot time what a CPU with it would choose."""

    source: str  # which export chose them, for metadata.json
    tensorflow_bfloat16_batch_sizes: dict[str, list[int]]  # its "precision" section's bfloat16_batch_sizes
    openvino: dict[str, str]  # its "openvino" section's precision per level


def export(directory: Path, trained: Trained, train_images: np.ndarray, val: Split, test: Split | None, name: str,
           threads: int, timing_seconds: float = evaluation.TIMING_SECONDS,
           kept: KeptPrecisions | None = None) -> Exported:
    """Write ``trained`` into ``directory`` as a complete version: SavedModel, report/ and metadata.json.
    ``train_images``: the training split's, which calibrate the int8 levels (judged on ``val``) and fit the
    "none of these" score's statistics. ``kept``: precisions to keep rather than choose by timing here."""
    temperatures = calibrate(trained.model, val)
    ood_score = ood_export.fit_layer_statistics(trained.model, train_images)  # "none of these", in the graph
    signatures.write_saved_model(directory, trained.model, signatures.level_signatures(
        trained.model, {level: fitted.temperature for level, fitted in temperatures.items()},
        trained.default_level, bfloat16_policies(trained.recipe), ood_score))
    measured = evaluate(directory, val, test, temperatures, trained.default_level, timing_seconds,
                        kept and kept.tensorflow_bfloat16_batch_sizes)
    # Further export steps go here: each reads the written, measured SavedModel in `directory` (and `val`)
    # and adds its metadata.json entries to `further` (e.g. a conversion for another runtime).
    # What the service loads: an OpenVINO IR per level, and each level's precision (docs/runtime.md).
    openvino = openvino_export.export_openvino(directory, val.images, val.labels, train_images, threads,
                                               timing_seconds, kept=kept and kept.openvino,
                                               kept_from=kept and kept.source)
    further: dict[str, Any] = {
        # The "none of these" threshold of each level, in float32 and in the precision it is served in.
        "ood": ood_export.fit_ood(directory, val.images, measured.level_probabilities, ood_score,
                                  openvino.ood_scores),
        OPENVINO_SECTION: openvino.metadata,
    }
    reports.write_report(directory / reports.REPORT_DIR, trained.history, val.images, val.labels,
                         measured.val_probabilities, trained.description["class_names"], trained.model, trained.seed)
    metadata = build_metadata(trained.description, measured, further, name, threads)
    write_metadata(directory, metadata)
    return Exported(metadata, measured.val_probabilities)


def calibrate(model: keras.Model, val: Split) -> dict[str, FittedTemperature]:
    """Per level, the temperature minimising validation NLL of that level's own view-averaged logits."""
    fitted = {}
    for level in LEVELS:
        logits = signatures.logits_with_tta(model, val.images, level.tta)
        before = calibration.expected_calibration_error(calibration.softmax(logits), val.labels)
        fitted[level.name] = FittedTemperature(calibration.fit_temperature(logits, val.labels), before)
    return fitted


def bfloat16_policies(recipe: Recipe) -> list[str] | None:
    """Each layer's dtype policy for the bfloat16 signatures; None (float32 only) unless the recipe trains in it."""
    return signatures.mixed_bfloat16_policies(recipe.build) if recipe.mixed_bfloat16 else None


def evaluate(directory: Path, val: Split, test: Split | None, temperatures: dict[str, FittedTemperature],
             default_level: str, timing_seconds: float, kept_bfloat16: dict[str, list[int]] | None = None,
             ) -> Evaluation:
    """Accuracy, calibration and speed of every level of the SavedModel in ``directory``, through its signatures."""
    level_figures, precision, probabilities = evaluation.evaluate_levels(
        directory, val.images, val.labels, temperatures, timing_seconds=timing_seconds,
        kept_bfloat16_batch_sizes=kept_bfloat16)
    test_accuracy = None
    if test is not None:
        saved = tf.saved_model.load(str(directory))  # bound: its signatures hold only weak references to it
        test_accuracy = accuracy(signatures.predict_saved_model(saved.signatures[SIGNATURE_NAME], test.images),
                                 test.labels)
    return Evaluation(default_level, probabilities, accuracy(probabilities[default_level], val.labels),
                      test_accuracy, level_figures, precision)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def build_metadata(description: dict[str, Any], measured: Evaluation, further: dict[str, Any], name: str,
                   threads: int) -> dict[str, Any]:
    """metadata.json: how the weights were trained (``description``), then what this export wrote and
    measured (README, "The export contract")."""
    default = measured.levels[measured.default_level]
    return {
        **description,
        "name": name,
        "input_contract": export_contract(),
        "val_accuracy": round(measured.val_accuracy, 4),
        "test_accuracy": None if measured.test_accuracy is None else round(measured.test_accuracy, 4),
        "tta": level_named(measured.default_level).tta,
        # The default level's calibration under the keys metadata.json had before levels (read by older tools).
        **{key: default[key] for key in ("temperature", "val_ece_before_temperature", "val_ece")},
        "default_level": measured.default_level,
        "levels": measured.levels,
        "precision": measured.precision,
        **further,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threads": threads,
    }


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def git_commit() -> str | None:
    """The commit of this checkout, for metadata.json; None outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
