"""``python -m training reexport``: write an exported model's weights again through today's export path.

No training: the weights are read from the source SavedModel's variables into the recipe's Keras
model, the validation split the source was trained with is rebuilt from its data, seed and size, and
the export path (training.export) runs as at the end of ``python -m training train``. The re-exported
default level must answer as the source's own signature of that level does, or nothing is published.
``default_level`` makes another level the default: a level of the same weights that is as accurate as
the source's default at less compute (docs/training.md). Like promote, it will not publish a default level
less accurate on validation than the version the target folder serves, which the re-export would replace,
unless ``force``. ``keep_precisions`` keeps the precisions the source chose by timing on its CPU (both
runtimes'), rather than timing here: a CPU without bfloat16 cannot choose what one with it would.
"""

import json
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core.contract import (
    BFLOAT16,
    LEVEL_NAMES,
    METADATA_FILE,
    SIGNATURE_NAME,
    LevelName,
    level_for_tta,
    level_named,
    metadata_number,
)
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import OPENVINO_SECTION
from core.tensorflow_runtime import set_tensorflow_threads
from training import export, signatures
from training.data import load_trained_on, model_split
from training.errors import TrainingError
from training.openvino_export import PRECISIONS
from training.promote import served_version
from training.publish import publish_next_version, staging_dir
from training.recipes import RECIPES, trained_recipe

# The source's served probabilities and the rebuilt model's may differ by float round-off only.
AGREEMENT_TOLERANCE = 1e-4


class ReexportError(TrainingError):
    """The source cannot be re-exported; the message names the file and the fix."""


def reexport(source: Path, data: Path | None, out: Path, cache_dir: Path | None, threads: int,
             timing_seconds: float, default_level: LevelName | None = None, force: bool = False,
             keep_precisions: bool = False) -> Path:
    """Publish the weights of the version ``source`` as the next version of ``out``; returns its folder."""
    set_tensorflow_threads(threads)
    source_metadata = read_source_metadata(source)
    recipe = trained_recipe(source_metadata, source / METADATA_FILE)
    source_default = level_for_tta(source_metadata.get("tta", level_named(recipe.default_level).tta))
    default_level = default_level or source_default
    if not force:
        refuse_a_downgrade(source, source_metadata, default_level, out)
    kept = source_precisions(source, source_metadata) if keep_precisions else None
    warning = None if keep_precisions else precision_warning(source, source_metadata, has_bfloat16(cpu_flags()))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    dataset = load_trained_on(data, source_metadata, source / METADATA_FILE, cache_dir)
    seed = int(source_metadata["seed"])
    train, val = model_split(dataset.train, source_metadata)

    keras.config.set_dtype_policy("float32")
    model = recipe.build()
    saved = tf.saved_model.load(str(source))
    # Dropout layers save their random-number state beside the weights (tutorial recipes): not weights.
    weights = [variable.numpy() for variable in saved.variables if "seed_generator_state" not in variable.name]
    if [w.shape for w in weights] != [tuple(w.shape) for w in model.weights]:
        raise ReexportError(f"{source}: its variables do not fit the {source_metadata['architecture']} recipe's "
                            "model; re-export it with the code that trained it.")
    model.set_weights(weights)
    source_signature = SIGNATURE_NAME if default_level == source_default else default_level
    if source_signature not in saved.signatures:
        raise ReexportError(f"{source}: it has no {default_level} signature to compare the re-export with; "
                            "re-export it once without --default-level, then from that version.")
    source_probabilities = signatures.predict_saved_model(saved.signatures[source_signature], val.images)
    trained = export.Trained(model, recipe, default_level, source_metadata["history"], seed, source_metadata)

    with staging_dir(out) as staging:
        exported = export.export(staging, trained, train.images, val, dataset.test, out.name, threads,
                                 timing_seconds, kept)
        # The rebuilt model must be the source model: its default level against the source's own signature.
        difference = float(np.abs(exported.val_probabilities - source_probabilities).max())
        source_accuracy = export.accuracy(source_probabilities, val.labels)
        accuracy = export.accuracy(exported.val_probabilities, val.labels)
        print(f"{source} {source_signature} on the validation split: {source_accuracy:.2%}; re-exported "
              f"{default_level}: {accuracy:.2%} (largest probability difference {difference:.1e})", flush=True)
        if accuracy != source_accuracy or difference > AGREEMENT_TOLERANCE:
            raise ReexportError(f"the re-exported {default_level} level scores {accuracy:.4f} on the validation "
                                f"split and {source} {source_accuracy:.4f} (probabilities differ by up to "
                                f"{difference:.1e}); the rebuilt model is not the source model, so nothing was "
                                "written.")
        export.write_metadata(staging, {**exported.metadata, "reexported_from": {
            "version": source.name, "git_commit": source_metadata.get("git_commit"),
            "created": source_metadata.get("created"), "max_probability_difference": float(f"{difference:.2e}")}})
        version_dir = publish_next_version(staging, out)
    levels = exported.metadata["levels"]
    print(json.dumps({"model": str(version_dir), "levels": {name: {key: figures[key] for key in (
        "val_accuracy", "val_ece", "temperature", "images_per_second")} for name, figures in levels.items()},
        "bfloat16_batch_sizes": exported.metadata["precision"]["bfloat16_batch_sizes"]}), flush=True)
    return version_dir


def refuse_a_downgrade(source: Path, source_metadata: dict[str, Any], default_level: str, out: Path) -> None:
    """The re-export becomes the newest version of ``out``, which a service there serves at once: refused, as
    promote refuses, when its default level was less accurate on validation than the version served now."""
    served = served_version(out)
    levels = source_metadata.get("levels")
    level = levels.get(default_level) if isinstance(levels, dict) else None
    expected = metadata_number(level.get("val_accuracy") if isinstance(level, dict)
                               else source_metadata.get("val_accuracy"))
    if served is None or expected is None:
        return
    number, served_metadata = served
    served_accuracy = metadata_number(served_metadata.get("val_accuracy"))
    if served_accuracy is not None and expected < served_accuracy:
        raise ReexportError(
            f"{source} at {default_level} has validation accuracy {expected:.2%}, below the {served_accuracy:.2%} "
            f"of {out / str(number)}, which is served now; as the next version of {out} it would be served instead. "
            "Pass --out a scratch model folder (e.g. runs/cifar10), or add --force to publish it anyway.")


def precision_warning(source: Path, source_metadata: dict[str, Any], bfloat16_cpu: bool) -> str | None:
    """A warning when ``source`` serves levels in bfloat16 and this CPU has no bfloat16 instructions: the export
    chooses each level's precision by timing them here, so the re-export would serve those levels in float32 or
    int8, slower on the CPUs the source was timed on."""
    chosen = (source_metadata.get(OPENVINO_SECTION) or {}).get("precision")
    reduced = sorted(level for level, precision in (chosen if isinstance(chosen, dict) else {}).items()
                     if precision == BFLOAT16)
    if bfloat16_cpu or not reduced:
        return None
    return (f"warning: {source} serves {', '.join(reduced)} in bfloat16, chosen by timing on a CPU with bfloat16 "
            "instructions; this CPU has none, so the re-export times and chooses without bfloat16, and its "
            "levels may run slower on such CPUs. Re-export on one, or add --keep-precisions to keep them.")


def source_precisions(source: Path, source_metadata: dict[str, Any]) -> export.KeptPrecisions:
    """The precisions ``source`` chose by timing, for both runtimes: refused for an export that chose none."""
    openvino = (source_metadata.get(OPENVINO_SECTION) or {}).get("precision")
    bfloat16 = (source_metadata.get("precision") or {}).get("bfloat16_batch_sizes")
    if not isinstance(openvino, dict) or not isinstance(bfloat16, dict):
        raise ReexportError(f"{source / METADATA_FILE}: it records no precision chosen per level for OpenVINO and "
                            "TensorFlow (exported before the OpenVINO runtime); re-export it without "
                            "--keep-precisions.")
    if set(openvino) != set(LEVEL_NAMES) or not set(openvino.values()) <= set(PRECISIONS):
        raise ReexportError(f"{source / METADATA_FILE}: its openvino precisions {openvino} do not name one of "
                            f"{', '.join(PRECISIONS)} for each of {', '.join(LEVEL_NAMES)}; re-export it without "
                            "--keep-precisions.")
    return export.KeptPrecisions(f"version {source.name} ({source_metadata.get('created', 'date unknown')})",
                                 {level: list(sizes) for level, sizes in bfloat16.items()}, dict(openvino))


def read_source_metadata(source: Path) -> dict[str, Any]:
    """The source's metadata.json, checked to name a recipe of this code."""
    path = source / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReexportError(f"{path}: cannot read it ({error}); VERSION_DIR must be an exported version "
                            "directory such as models/cifar10/3.") from None
    recipe = metadata.get("architecture") if isinstance(metadata, dict) else None
    if recipe not in RECIPES:
        raise ReexportError(f"{path}: architecture {recipe!r} is not a recipe of this code ({sorted(RECIPES)}); "
                            "re-export it with the code that trained it.")
    return metadata
