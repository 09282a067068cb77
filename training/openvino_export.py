"""The OpenVINO side of an export: an IR per accuracy level beside the SavedModel, and each level's precision.

:func:`export_openvino` runs once the SavedModel and its float32 level signatures are written. Per level it
converts that signature (core.openvino_runtime.convert_signature: the same conversion the service falls back
to for a folder without IR), writes ``openvino/<level>.xml`` and ``.bin`` with float32 weights (no float16
compression: probabilities stay within 1e-5 of TensorFlow's), then runs the written IR on the validation
split and times it at batch 1 and 64. It does the same with two cheaper forms of the level:

- int8: NNCF's post-training quantization of the IR (``openvino/<level>.int8.xml``), its ranges set on
  CALIBRATION_IMAGES images of the training split, never the validation split it is judged on. The stem
  convolution that reads the pixels and the classifier's last matrix product stay float32: quantized too,
  they cost 0.28 points of accuracy and 0.5 of ECE in a trial (docs/runtime.md). Quantization moves the
  logits' scale a little, so the int8 level gets its own temperature, fitted on the validation split as the
  float32 level's was: a factor that divides the softmax's input once more (``temperature_factor``);
- bfloat16, OpenVINO's bfloat16 inference of the float32 IR, on a CPU with bfloat16 instructions only (elsewhere
  OpenVINO would compute float32 anyway).

A level keeps the fastest of them that was faster than float32 at both batch sizes with validation accuracy and
ECE no more than 0.1 points worse than float32's; else float32 (better is no reason to refuse a form: on 5,000
images int8 lands a few tenths of a point either side of float32). A re-export may keep the precisions its
source chose by timing on another CPU instead (``kept``: :func:`kept_precision`). An int8 IR that was not chosen
is deleted. The result is metadata.json's ``openvino`` section, which the service reads (core.level_table), with
the sha256 of every IR file kept, which the service checks before it reads them (core.versions.check_ir_files), and
each level's "none of these" scores on the validation split as its chosen precision computes them, on which
the export fits that precision's threshold (training.ood_export.fit_ood).
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import ood
from core.contract import (
    BFLOAT16,
    CHANNELS,
    FLOAT32,
    INT8,
    LEVELS,
    NUM_CLASSES,
    OUTPUT_NAME,
    level_signature,
)
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import IR_SHA256_KEY
from core.openvino_runtime import (
    DEVICE,
    IR_DIR,
    check_io,
    compile_config,
    convert_signature,
    ir_digests,
    ir_path,
    openvino_core,
    own_ood_output,
    request_pool,
    run_chunk,
)
from training import calibration

MAX_LOSS = 0.001  # 0.1 points of validation accuracy, and of ECE, worse than float32
TIMED_BATCH_SIZES = (1, 64)
EVALUATION_BATCH_SIZE = 500
CALIBRATION_IMAGES = 1000  # training images whose activations set int8's ranges (NNCF's default is 300)
CALIBRATION_SEED = 0
PRECISIONS = (FLOAT32, INT8, BFLOAT16)


@dataclass(frozen=True)
class OpenVinoExport:
    metadata: dict[str, Any]  # metadata.json's ``openvino`` section
    # precision -> level -> validation "none of these" scores, for each level whose chosen precision is not
    # float32 and was measured here (a bfloat16 level on a CPU without bfloat16 is not) and whose IR has a score.
    ood_scores: dict[str, dict[str, np.ndarray]]


def export_openvino(version_dir: Path, images: np.ndarray, labels: np.ndarray, train_images: np.ndarray,
                    threads: int, timing_seconds: float = 1.0, bfloat16: bool | None = None,
                    kept: dict[str, str] | None = None, kept_from: str | None = None) -> OpenVinoExport:
    """Write ``version_dir/openvino/<level>.xml|.bin`` (and ``<level>.int8.*`` where chosen) for every level and
    return metadata.json's ``openvino`` section with the chosen precisions' OOD scores. ``images``, ``labels``: the
    validation split, which judges; ``train_images``: the training split, which calibrates int8. ``bfloat16``:
    whether to try it (None: if this CPU has bfloat16 instructions). ``kept``: level -> the precision another
    export of the same weights chose (``kept_from`` names it), kept instead of timing here; its caller has
    checked it names one of PRECISIONS per level (training.reexport.source_precisions, before any work)."""
    import openvino

    try_bfloat16 = has_bfloat16(cpu_flags()) if bfloat16 is None else bfloat16
    precisions = PRECISIONS if try_bfloat16 else (FLOAT32, INT8)
    timing_images = np.resize(images, (max(TIMED_BATCH_SIZES), *images.shape[1:]))
    calibration_images = calibration_sample(train_images)
    figures: dict[str, dict[str, Any]] = {}
    chosen: dict[str, str] = {}
    ood_scores: dict[str, dict[str, np.ndarray]] = {}
    for level in LEVELS:
        path = ir_path(version_dir, level.name)
        path.parent.mkdir(exist_ok=True)
        openvino.save_model(convert_signature(version_dir, level_signature(level.name)), str(path),
                            compress_to_fp16=False)
        quantized_path = ir_path(version_dir, level.name, INT8)
        model = openvino_core().read_model(str(path))  # measured as the service will read it
        check_io(model, f"{IR_DIR}/{path.name}")
        # A model of its own for NNCF, which may rewrite the graph it is given.
        quantized = quantize(openvino_core().read_model(str(path)), calibration_images)
        temperature_factor = fit_temperature_factor(quantized, images, labels, threads)
        openvino.save_model(with_temperature_factor(quantized, temperature_factor), str(quantized_path),
                            compress_to_fp16=False)
        quantized = openvino_core().read_model(str(quantized_path))
        check_io(quantized, f"{IR_DIR}/{quantized_path.name}")
        by_precision, scores = {}, {}
        for precision in precisions:
            compiled = openvino_core().compile_model(quantized if precision == INT8 else model, DEVICE,
                                                     compile_config(precision, threads))
            probabilities, scores[precision] = predict(compiled, images)
            by_precision[precision] = {
                "val_accuracy": round(float(np.mean(probabilities.argmax(axis=1) == labels)), 4),
                "val_ece": round(calibration.expected_calibration_error(probabilities, labels), 4),
                "images_per_second": {f"batch_{size}": images_per_second(compiled, timing_images[:size],
                                                                         timing_seconds / len(TIMED_BATCH_SIZES))
                                      for size in TIMED_BATCH_SIZES},
            }
        by_precision[INT8]["temperature_factor"] = round(temperature_factor, 4)
        figures[level.name] = by_precision
        chosen[level.name] = (choose_precision(by_precision) if kept is None
                              else kept_precision(by_precision, kept[level.name]))
        served_scores = scores.get(chosen[level.name])
        if chosen[level.name] != FLOAT32 and served_scores is not None:
            ood_scores.setdefault(chosen[level.name], {})[level.name] = served_scores
        if chosen[level.name] != INT8:
            quantized_path.unlink()
            quantized_path.with_suffix(".bin").unlink()
    rule = (f"int8 or bfloat16 only where it measured faster at batch {' and '.join(map(str, TIMED_BATCH_SIZES))} "
            f"and validation accuracy and ECE are no more than {MAX_LOSS * 100:.1f} points worse than float32's "
            "(the fastest such); bfloat16 tried only on a CPU with bfloat16 instructions")
    if kept is not None:
        rule = (f"kept from {kept_from or 'the source'}, where they were chosen by the rule: {rule}; here, a kept "
                "precision this CPU can run was checked against that rule's accuracy and ECE limits")
    return OpenVinoExport({
        "openvino_version": openvino.get_version().split("-")[0],
        "ir": {level.name: f"{IR_DIR}/{ir_path(version_dir, level.name, chosen[level.name]).name}"
               for level in LEVELS},
        "precision": chosen,
        IR_SHA256_KEY: ir_digests(version_dir),  # the files as written: the service loads no other export's
        "cpu_has_bfloat16": try_bfloat16,
        "int8": {"calibration_images": len(calibration_images), "calibration": "training split",
                 "kept_float32": "the convolutions reading the image's channels, the products writing the "
                 f"{NUM_CLASSES} logits, the operations only the out-of-distribution output reads",
                 "temperature": "the float32 level's, times temperature_factor fitted on the validation split"},
        "rule": rule,
        "threads": threads,
        "levels": figures,
    }, ood_scores)


def choose_precision(by_precision: dict[str, dict[str, Any]]) -> str:
    """Of the precisions measured beside float32, the fastest at the largest timed batch among those faster at
    every timed batch size and no more than MAX_LOSS worse than float32 in accuracy and in ECE; else float32."""
    full = by_precision[FLOAT32]

    def acceptable(figures: dict[str, Any]) -> bool:
        faster = all(figures["images_per_second"][key] > rate for key, rate in full["images_per_second"].items())
        return faster and accurate_enough(figures, full)

    largest = f"batch_{max(TIMED_BATCH_SIZES)}"
    candidates = [name for name, figures in by_precision.items() if name != FLOAT32 and acceptable(figures)]
    return max(candidates, key=lambda name: by_precision[name]["images_per_second"][largest], default=FLOAT32)


def accurate_enough(figures: dict[str, Any], full: dict[str, Any]) -> bool:
    """Whether ``figures`` are no more than MAX_LOSS worse than float32's (``full``) in accuracy and in ECE."""
    # Rounded first: figures are stored to 4 places, and 0.9078 against 0.9088 is 0.1 points, not 0.1000001.
    return (round(full["val_accuracy"] - figures["val_accuracy"], 6) <= MAX_LOSS
            and round(figures["val_ece"] - full["val_ece"], 6) <= MAX_LOSS)


def kept_precision(by_precision: dict[str, dict[str, Any]], kept: str) -> str:
    """``kept``, a precision another export of the same weights chose by timing on its CPU, unless it measured
    more than MAX_LOSS worse than float32 here (then float32). A precision not measured here (bfloat16 on a CPU
    without its instructions, where OpenVINO would compute float32) is kept on the source's measurement: its
    speed is the reason to keep it, and a CPU without bfloat16 serves such a level in float32 anyway."""
    if kept == FLOAT32 or kept not in by_precision:
        return kept
    return kept if accurate_enough(by_precision[kept], by_precision[FLOAT32]) else FLOAT32


def calibration_sample(train_images: np.ndarray) -> np.ndarray:
    """CALIBRATION_IMAGES training images drawn at random (a class-ordered folder starts with airplanes)."""
    count = min(CALIBRATION_IMAGES, len(train_images))
    return train_images[np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(train_images), count,
                                                                               replace=False))]


def quantize(model: Any, images: np.ndarray) -> Any:
    """``model`` with int8 weights and activations where NNCF's post-training quantization puts them, except
    the layers float32_layers names."""
    import nncf

    nncf.set_log_level(logging.WARNING)  # its INFO lines list every layer it leaves unquantized
    return nncf.quantize(model, nncf.Dataset([image[np.newaxis] for image in images]),
                         preset=nncf.QuantizationPreset.MIXED, subset_size=len(images),
                         ignored_scope=nncf.IgnoredScope(names=float32_layers(model), validate=False))


def level_softmax(model: Any) -> Any:
    """The one softmax of a level's graph, which turns its logits over the temperature into probabilities."""
    softmaxes = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Softmax", "SoftMax")]
    if len(softmaxes) != 1:
        raise ValueError(f"expected one softmax in the level's graph, found {len(softmaxes)}")
    return softmaxes[0]


def fit_temperature_factor(model: Any, images: np.ndarray, labels: np.ndarray, threads: int) -> float:
    """The factor by which ``model``'s (int8) softmax input should be divided again to minimise validation NLL:
    calibration.fit_temperature on the scaled logits it computes, read from a copy given them as an output."""
    probe = model.clone()
    probe.add_outputs([level_softmax(probe).input_value(0)])
    compiled = openvino_core().compile_model(probe, DEVICE, compile_config(INT8, threads))
    request, scaled_logits = compiled.create_infer_request(), compiled.outputs[-1]
    logits = np.concatenate([np.asarray(request.infer([images[start:start + EVALUATION_BATCH_SIZE]])[scaled_logits])
                             for start in range(0, len(images), EVALUATION_BATCH_SIZE)])
    return calibration.fit_temperature(logits, labels)


def with_temperature_factor(model: Any, factor: float) -> Any:
    """``model`` with its softmax input divided by ``factor`` (a float32 Divide before the softmax)."""
    import openvino.opset13 as ops

    softmax = level_softmax(model)
    scaled = ops.divide(softmax.input_value(0), ops.constant(np.float32(factor)))
    softmax.input(0).replace_source_output(scaled.output(0))
    return model


def ancestors(model: Any, output_name: str) -> set[str]:
    """The friendly names of every operation the output named ``output_name`` is computed from."""
    [port] = [port for port in model.outputs if output_name in port.get_names()]
    names: set[str] = set()
    pending = [port.get_node()]
    while pending:
        node = pending.pop()
        if node.get_friendly_name() not in names:
            names.add(node.get_friendly_name())
            pending.extend(value.get_node() for value in node.input_values())
    return names


def ood_only_layers(model: Any) -> list[str]:
    """The operations only the "none of these" output (``ood_score`` or ``feature_norm``) is computed from: the
    pooled statistics, norms, logs and the whitening product. int8 would round them (the fast level's
    layer-statistics score kept 100% of validation images "in" when they were quantized)."""
    own = own_ood_output(model.outputs)
    return sorted(ancestors(model, own) - ancestors(model, OUTPUT_NAME)) if own else []


def float32_layers(model: Any) -> list[str]:
    """The layers that stay float32: convolutions reading at most CHANNELS channels (the stem, on pixels), the
    operations only the "none of these" output reads (:func:`ood_only_layers`), and every operation from the
    product that writes the NUM_CLASSES logits to the softmax (the views' weighted average and the temperature
    among them: quantizing their inputs would round the logits)."""
    kept = [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "Convolution" and op.input(1).get_partial_shape()[1].get_length() <= CHANNELS]
    kept += ood_only_layers(model)
    node = level_softmax(model).input_value(0).get_node()
    while True:
        kept.append(node.get_friendly_name())
        if node.get_type_name() == "MatMul" and node.get_output_partial_shape(0)[-1] == NUM_CLASSES:
            return kept
        # Up the data path: the one input that is not a constant (a weight, the temperature).
        data = [value.get_node() for value in node.input_values() if value.get_node().get_type_name() != "Constant"]
        if len(data) != 1 or data[0].get_type_name() == "Parameter":  # no single path back: keep what was found
            return kept
        node = data[0]


def predict(compiled: Any, images: np.ndarray, batch_size: int = EVALUATION_BATCH_SIZE,
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, the "none of these" score or None where the IR has no output of its own), read through
    the service's own path (core.openvino_runtime.run_chunk)."""
    request = request_pool(compiled, 1).get()
    rows = np.concatenate([run_chunk(request, images[start:start + batch_size])
                           for start in range(0, len(images), batch_size)]).astype("float64")
    return rows[:, :NUM_CLASSES], (ood.ood_scores(rows) if ood.served_score(rows) == ood.MODEL_OWN else None)


def images_per_second(compiled: Any, batch: np.ndarray, seconds: float) -> float:
    """Images a second through the service's path (core.openvino_runtime.run_chunk), as :func:`predict` runs."""
    request = request_pool(compiled, 1).get()
    for _ in range(3):  # first calls allocate
        run_chunk(request, batch)
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        run_chunk(request, batch)
        calls += 1
    return round(len(batch) * calls / (time.perf_counter() - started), 1)
