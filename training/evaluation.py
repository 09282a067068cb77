"""Every accuracy level of a written SavedModel, measured through its signatures as the service calls them.

The export holds one signature per level (core.contract.LEVELS) in float32, and the same in bfloat16
when the recipe can compute in it. Each level's accuracy and calibration are measured on validation,
its speed at the batch sizes the service forms. bfloat16 is kept only for the batch sizes where it
measured faster here, and only if no level's validation accuracy moves by more than
BFLOAT16_MAX_ACCURACY_CHANGE and every probability row still sums to 1 within BFLOAT16_MAX_SUM_ERROR.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from core.contract import BFLOAT16, FLOAT32, INPUT_NAME, LEVELS, level_signature
from training import calibration, signatures
from training.calibration import FittedTemperature

# The batch sizes the service's micro-batcher forms (1 up to MAX_BATCH_SIZE, 64 by default):
# bfloat16 is timed against float32 at each of these.
TIMED_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
BFLOAT16_MAX_ACCURACY_CHANGE = 0.001  # 0.1 points of validation accuracy
BFLOAT16_MAX_SUM_ERROR = 1e-5
TIMING_SECONDS = 1.0  # per signature and batch size
TIMING_ROUNDS = 5


def images_per_second(functions: dict[str, Callable], images: np.ndarray, seconds: float = TIMING_SECONDS,
                      rounds: int = TIMING_ROUNDS) -> dict[str, float]:
    """Throughput of each signature called on ``images`` as one batch, timed side by side: short turns in
    alternation, so a machine that gets busier or quieter meanwhile weighs on every signature alike."""
    batch = tf.constant(images)
    for signature in functions.values():
        for _ in range(3):  # first calls trace and allocate
            signature(**{INPUT_NAME: batch})
    calls = dict.fromkeys(functions, 0)
    elapsed = dict.fromkeys(functions, 0.0)
    for _ in range(rounds):
        for name, signature in functions.items():
            started = time.perf_counter()
            while True:
                signature(**{INPUT_NAME: batch})
                calls[name] += 1
                if time.perf_counter() - started >= seconds / rounds:
                    break
            elapsed[name] += time.perf_counter() - started
    return {name: len(images) * calls[name] / elapsed[name] for name in functions}


def bfloat16_batch_sizes(speeds: dict[str, dict[int, dict[str, float]]]) -> dict[str, list[int]]:
    """Per level, the timed batch sizes at which bfloat16 was faster than float32."""
    return {level: [size for size, by_precision in by_size.items() if by_precision[BFLOAT16] > by_precision[FLOAT32]]
            for level, by_size in speeds.items()}


def evaluate_levels(saved_model_dir: Path, images: np.ndarray, labels: np.ndarray,
                    temperatures: dict[str, FittedTemperature], timing_images: np.ndarray | None = None,
                    timed_batch_sizes: tuple[int, ...] = TIMED_BATCH_SIZES, timing_seconds: float = TIMING_SECONDS,
                    kept_bfloat16_batch_sizes: dict[str, list[int]] | None = None,
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """(levels metadata, precision metadata, each level's float32 validation probabilities).

    Everything is measured through the written SavedModel, as the service will call it.
    ``kept_bfloat16_batch_sizes``: per level, the batch sizes another export of the same weights chose for
    bfloat16 by timing on its CPU, kept instead of those timed here (the accuracy checks still apply)."""
    saved = tf.saved_model.load(str(saved_model_dir))
    if timing_images is None:  # tiled when the split is smaller than the largest timed batch
        timing_images = np.resize(images, (max(timed_batch_sizes), *images.shape[1:]))
    precisions = [p for p in (FLOAT32, BFLOAT16) if level_signature(LEVELS[0].name, p) in saved.signatures]
    outcomes: dict[str, dict[str, Any]] = {}
    for level in LEVELS:
        for precision in precisions:
            signature = saved.signatures[level_signature(level.name, precision)]
            probabilities = signatures.predict_saved_model(signature, images)
            outcomes.setdefault(level.name, {})[precision] = {
                "probabilities": probabilities,
                "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
                "ece": calibration.expected_calibration_error(probabilities, labels),
                "sum_error": float(np.abs(probabilities.astype("float64").sum(axis=1) - 1.0).max()),
            }
    speeds: dict[str, dict[int, dict[str, float]]] = {}
    for level in LEVELS:
        for size in timed_batch_sizes:
            rates = images_per_second({precision: saved.signatures[level_signature(level.name, precision)]
                                       for precision in precisions}, timing_images[:size], timing_seconds)
            speeds.setdefault(level.name, {})[size] = {precision: round(rate, 1) for precision, rate in rates.items()}

    bfloat16_checks: dict[str, Any] = {}
    use_bfloat16: dict[str, list[int]] = {level.name: [] for level in LEVELS}
    if BFLOAT16 not in precisions:
        faster = use_bfloat16
    elif kept_bfloat16_batch_sizes is not None:
        faster = {level.name: list(kept_bfloat16_batch_sizes.get(level.name, [])) for level in LEVELS}
    else:
        faster = bfloat16_batch_sizes(speeds)
    if BFLOAT16 in precisions:
        for level in LEVELS:
            by_precision = outcomes[level.name]
            bfloat16_checks[level.name] = {
                "accuracy_change": round(by_precision[BFLOAT16]["accuracy"] - by_precision[FLOAT32]["accuracy"], 4),
                "max_probability_sum_error": by_precision[BFLOAT16]["sum_error"],
                "argmax_agreement": round(float(np.mean(by_precision[BFLOAT16]["probabilities"].argmax(axis=1)
                                                        == by_precision[FLOAT32]["probabilities"].argmax(axis=1))), 4),
            }
        for name, check in bfloat16_checks.items():
            check["within_limits"] = (abs(check["accuracy_change"]) <= BFLOAT16_MAX_ACCURACY_CHANGE
                                      and check["max_probability_sum_error"] <= BFLOAT16_MAX_SUM_ERROR)
            if check["within_limits"]:
                use_bfloat16[name] = faster[name]

    levels_metadata = {}
    for level in LEVELS:
        chosen = outcomes[level.name][FLOAT32]
        levels_metadata[level.name] = {
            "signature": level_signature(level.name),
            "views": level.views,
            "tta": level.tta,
            "description": level.description,
            "temperature": round(temperatures[level.name].temperature, 4),
            "val_accuracy": round(chosen["accuracy"], 4),
            "val_ece_before_temperature": round(temperatures[level.name].ece_before, 4),
            "val_ece": round(chosen["ece"], 4),
            # The path the service takes at each batch size on a CPU with bfloat16 instructions.
            "images_per_second": {
                f"batch_{size}": speeds[level.name][size][BFLOAT16 if size in use_bfloat16[level.name] else FLOAT32]
                for size in (timed_batch_sizes[0], timed_batch_sizes[-1])},
            "images_per_second_float32": {f"batch_{size}": speeds[level.name][size][FLOAT32]
                                          for size in (timed_batch_sizes[0], timed_batch_sizes[-1])},
        }
    precision_metadata: dict[str, Any] = {
        "signatures": {precision: {level.name: level_signature(level.name, precision) for level in LEVELS}
                       for precision in precisions},
        "bfloat16_batch_sizes": use_bfloat16,
        "rule": (f"bfloat16 where it measured faster, only if every level's validation accuracy moves by at most "
                 f"{BFLOAT16_MAX_ACCURACY_CHANGE * 100:.1f} points and probabilities sum to 1 within "
                 f"{BFLOAT16_MAX_SUM_ERROR:g}; batch sizes between two timed ones take the smaller one's path"),
        **({"bfloat16_batch_sizes_chosen": "kept from the source export's timing"}
           if kept_bfloat16_batch_sizes is not None else {}),
        "timed_batch_sizes": list(timed_batch_sizes),
        "images_per_second_by_batch": {level: {str(size): figures for size, figures in by_size.items()}
                                       for level, by_size in speeds.items()},
        "bfloat16_checks": bfloat16_checks,
        "bfloat16_accuracy": {level.name: round(outcomes[level.name][BFLOAT16]["accuracy"], 4)
                              for level in LEVELS} if BFLOAT16 in precisions else {},
    }
    return levels_metadata, precision_metadata, {name: by_precision[FLOAT32]["probabilities"]
                                                 for name, by_precision in outcomes.items()}

