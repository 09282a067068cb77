"""``python -m training promote RUN_DIR``: publish a finished training run as the next served version.

Training never writes into the served model folder by itself; this command is the one way in. It checks
the export contract from the files, loads the model and runs it on a few images, compares its validation
accuracy with the version served from the target folder (refusing a worse one unless ``--force``), then
publishes a copy atomically as the next integer version. A service polling that folder picks it up.
"""

import datetime as dt
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contract import (
    CLASS_NAMES,
    METADATA_FILE,
    export_contract,
    metadata_number,
    missing_files,
    next_version,
    version_dirs,
)
from core.versions import ModelLoadError, check_answers, load_version
from training.errors import TrainingError
from training.publish import DEFAULT_MODEL_ROOT, RUN_EXPORT_DIR, publish_next_version, staging_dir

# Batch sizes of the trial run: one image, and a batch, since a graph can fail at either.
TRIAL_BATCHES = (1, 8)


class PromotionError(TrainingError):
    """The run cannot be published; the message names the file or figure and what to do."""


@dataclass(frozen=True)
class Promotion:
    version_dir: Path
    val_accuracy: float
    served: tuple[int, float] | None  # the version served before, and its validation accuracy


def export_dir_of(run_dir: Path) -> Path:
    """The SavedModel folder of a run: ``RUN_DIR/model``, or RUN_DIR itself when it is an export."""
    if not run_dir.is_dir():
        raise PromotionError(f"{run_dir} does not exist. Pass the run folder a training run printed "
                             "(runs/<recipe>-<time>/).")
    nested = run_dir / RUN_EXPORT_DIR
    return nested if nested.is_dir() else run_dir


def read_metadata(export_dir: Path) -> dict[str, Any]:
    """metadata.json, checked for what serving and this comparison rely on."""
    path = export_dir / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PromotionError(f"{path} is not readable JSON ({error}). Export the run again "
                             "(rerun the training command with --resume).") from None
    if not isinstance(metadata, dict):
        raise PromotionError(f"{path} is not a JSON object. Export the run again.")
    problems = []
    if metadata.get("class_names") != list(CLASS_NAMES):
        problems.append(f"class_names must be the ten CIFAR-10 classes in order {list(CLASS_NAMES)}")
    if metadata.get("input_contract") != export_contract():
        problems.append(f"input_contract must be {json.dumps(export_contract())}")
    accuracy = metadata_number(metadata.get("val_accuracy"))
    if accuracy is None or not 0.0 <= accuracy <= 1.0:
        problems.append("val_accuracy must be a number from 0 to 1 (the validation accuracy of the export)")
    if problems:
        raise PromotionError(f"{path} breaks the export contract: {'; '.join(problems)}. "
                             "Export it with `python -m training train`.")
    return metadata


def served_version(model_root: Path) -> tuple[int, dict[str, Any]] | None:
    """The highest complete version in ``model_root`` and its metadata: what a service there serves."""
    for version, path in reversed(version_dirs(model_root)):
        if missing_files(path):
            continue
        try:
            return version, json.loads((path / METADATA_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None


def check_run(export_dir: Path, version: int) -> dict[str, Any]:
    """Every check short of the comparison; returns the metadata."""
    missing = missing_files(export_dir)
    if missing:
        raise PromotionError(f"{export_dir} is incomplete: it has no {', '.join(missing)}. A run that was "
                             "interrupted exports nothing: finish it with --resume.")
    metadata = read_metadata(export_dir)
    try:
        model = load_version(export_dir, version)  # the SignatureDef is checked before anything is loaded
        check_answers(model, TRIAL_BATCHES)
    except ModelLoadError as error:
        raise PromotionError(str(error)) from None
    return metadata


def promote(run_dir: Path, model_root: Path = DEFAULT_MODEL_ROOT, force: bool = False) -> Promotion:
    """Check the run in ``run_dir`` and publish it as the next version of ``model_root``."""
    export_dir = export_dir_of(run_dir)
    metadata = check_run(export_dir, next_version(model_root))
    accuracy = float(metadata["val_accuracy"])
    served = served_version(model_root)
    served_accuracy = None
    if served is not None:
        served_number, served_metadata = served
        served_accuracy = served_metadata.get("val_accuracy")
        if isinstance(served_accuracy, int | float) and accuracy < served_accuracy and not force:
            raise PromotionError(
                f"{export_dir}: validation accuracy {accuracy:.2%} is below the {served_accuracy:.2%} of "
                f"{model_root / str(served_number)}, which is served now. Not published; add --force to "
                "publish it anyway.")
        if served_metadata.get("data") != metadata.get("data"):
            print(f"note: {model_root / str(served_number)} was validated on other data "
                  f"({served_metadata.get('data')}), so the accuracies compare only roughly", file=sys.stderr)
    with staging_dir(model_root) as staging:
        shutil.copytree(export_dir, staging, dirs_exist_ok=True)
        published = {**metadata, "name": model_root.name, "promoted": {
            "from": str(export_dir.resolve()),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "replaced_version": None if served is None else served[0],
            "forced": force,
        }}
        (staging / METADATA_FILE).write_text(json.dumps(published, indent=2) + "\n")
        version_dir = publish_next_version(staging, model_root)
    previous = None
    if served is not None and isinstance(served_accuracy, int | float):
        previous = (served[0], float(served_accuracy))
    return Promotion(version_dir, accuracy, previous)

