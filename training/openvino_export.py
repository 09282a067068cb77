"""The OpenVINO side of an export: an IR per accuracy level beside the SavedModel, and each level's precision.

:func:`export_openvino` runs once the SavedModel and its float32 level signatures are written. Per level it
converts that signature (core.openvino_runtime.convert_signature: the same conversion the service falls back
to for a folder without IR), writes ``openvino/<level>.xml`` and ``.bin`` with float32 weights (no float16
compression: probabilities stay within 1e-5 of TensorFlow's), then runs the written IR on the validation
split and times it at batch 1 and 64. On a CPU with bfloat16 instructions it does the same with
OpenVINO's bfloat16 inference and keeps bfloat16 for a level only where it was faster at both batch sizes
and its validation accuracy and ECE stay within 0.1 points of float32; elsewhere (a CPU without bfloat16,
where OpenVINO would compute float32 anyway) every level is float32. The result is metadata.json's
``openvino`` section, which the service reads (core.level_table).
"""

import time
from pathlib import Path
from typing import Any

import numpy as np

from core.contract import BFLOAT16, FLOAT32, LEVELS, level_signature
from core.cpus import cpu_flags, has_bfloat16
from core.openvino_runtime import (
    DEVICE,
    IR_DIR,
    check_io,
    compile_config,
    convert_signature,
    ir_path,
    openvino_core,
)
from training import calibration

BFLOAT16_MAX_CHANGE = 0.001  # 0.1 points of validation accuracy, and of ECE
TIMED_BATCH_SIZES = (1, 64)
EVALUATION_BATCH_SIZE = 500


def export_openvino(version_dir: Path, images: np.ndarray, labels: np.ndarray, threads: int,
                    timing_seconds: float = 1.0, bfloat16: bool | None = None) -> dict[str, Any]:
    """Write ``version_dir/openvino/<level>.xml|.bin`` for every level and return metadata.json's ``openvino``
    section. ``bfloat16``: whether to try it (None: if this CPU has bfloat16 instructions)."""
    import openvino

    try_bfloat16 = has_bfloat16(cpu_flags()) if bfloat16 is None else bfloat16
    precisions = (FLOAT32, BFLOAT16) if try_bfloat16 else (FLOAT32,)
    timing_images = np.resize(images, (max(TIMED_BATCH_SIZES), *images.shape[1:]))
    figures: dict[str, dict[str, Any]] = {}
    chosen: dict[str, str] = {}
    for level in LEVELS:
        path = ir_path(version_dir, level.name)
        path.parent.mkdir(exist_ok=True)
        openvino.save_model(convert_signature(version_dir, level_signature(level.name)), str(path),
                            compress_to_fp16=False)
        model = openvino_core().read_model(str(path))  # measured as the service will read it
        check_io(model, f"{IR_DIR}/{path.name}")
        by_precision = {}
        for precision in precisions:
            compiled = openvino_core().compile_model(model, DEVICE, compile_config(precision, threads))
            probabilities = predict(compiled, images)
            by_precision[precision] = {
                "val_accuracy": round(float(np.mean(probabilities.argmax(axis=1) == labels)), 4),
                "val_ece": round(calibration.expected_calibration_error(probabilities, labels), 4),
                "images_per_second": {f"batch_{size}": images_per_second(compiled, timing_images[:size],
                                                                         timing_seconds / len(TIMED_BATCH_SIZES))
                                      for size in TIMED_BATCH_SIZES},
            }
        figures[level.name] = by_precision
        chosen[level.name] = choose_precision(by_precision)
    return {
        "openvino_version": openvino.get_version().split("-")[0],
        "ir": {level.name: f"{IR_DIR}/{level.name}.xml" for level in LEVELS},
        "precision": chosen,
        "cpu_has_bfloat16": try_bfloat16,
        "rule": (f"bfloat16 only where it measured faster at batch {' and '.join(map(str, TIMED_BATCH_SIZES))} "
                 f"and validation accuracy and ECE stay within {BFLOAT16_MAX_CHANGE * 100:.1f} points of float32; "
                 "float32 on a CPU without bfloat16 instructions"),
        "threads": threads,
        "levels": figures,
    }


def choose_precision(by_precision: dict[str, dict[str, Any]]) -> str:
    """bfloat16 if it was measured, faster at every timed batch size and within the limits; else float32."""
    if BFLOAT16 not in by_precision:
        return FLOAT32
    full, half = by_precision[FLOAT32], by_precision[BFLOAT16]
    faster = all(half["images_per_second"][key] > rate for key, rate in full["images_per_second"].items())
    close = (abs(half["val_accuracy"] - full["val_accuracy"]) <= BFLOAT16_MAX_CHANGE
             and abs(half["val_ece"] - full["val_ece"]) <= BFLOAT16_MAX_CHANGE)
    return BFLOAT16 if faster and close else FLOAT32


def predict(compiled: Any, images: np.ndarray, batch_size: int = EVALUATION_BATCH_SIZE) -> np.ndarray:
    request = compiled.create_infer_request()
    output = compiled.output("probabilities")
    parts = [np.asarray(request.infer([images[start:start + batch_size]])[output])
             for start in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype("float64")


def images_per_second(compiled: Any, batch: np.ndarray, seconds: float) -> float:
    request = compiled.create_infer_request()
    for _ in range(3):  # first calls allocate
        request.infer([batch])
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        request.infer([batch])
        calls += 1
    return round(len(batch) * calls / (time.perf_counter() - started), 1)
