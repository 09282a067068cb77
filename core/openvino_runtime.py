"""OpenVINO runs the served model: one compiled model per accuracy level, on the CPU, without TensorFlow.

Each level comes from ``openvino/<level>.xml`` (+ ``.bin``) in the version folder when the export wrote it
(training/openvino_export.py), or from ``openvino/<level>.int8.xml`` where the export chose int8 for it (a
quantized copy of the same graph, which only the export can make); else it is converted from the
SavedModel itself: OpenVINO's converter reads only ``serving_default``, so the level's SignatureDef is copied
over it in a temporary ``saved_model.pb`` beside a link to the folder's variables (core.saved_model_proto).
Both give the same graph; the IR only saves the conversion's time at start-up (docs/runtime.md).

Each level is compiled once, as one stream on every inference thread (a lone request gets all the cores),
with the level's precision as INFERENCE_PRECISION_HINT (set to f32 explicitly: OpenVINO would otherwise pick
bf16 by itself on a CPU that has it), and given one infer request per batch that may run at once
(BATCH_CONCURRENCY). A second batch handed over while the first computes keeps the model busy while the
event loop answers the first; a second compilation as streams that divide the threads, tried until
4 December, served no faster and held ~100 MiB more (docs/runtime.md).

Memory: OpenVINO's CPU plugin keeps, per compiled model (a second infer request adds ~7 MiB), buffers sized
for the largest input it has run and compiled kernels for every input shape it has seen. Fed every batch size
from 1 to 64 at the three levels, a process grew from 130 to 1,363 MiB (the 6-view level turns 64 images into
384). So a batch runs in chunks of at most MAX_VIEWS_PER_CALL views (32 images at ``fast``, 16 at
``balanced``, 4 at ``accurate``), each padded with blank images to a multiple of four: a level sees at most
ten shapes, and the same 1-64 sweep ends at about 200 MiB, at the same images/s (on 2 cores these batch sizes
are as fast as 64; docs/runtime.md). The padding's rows are computed and dropped: each image's row depends on
it alone.
"""

import logging
import queue
import re
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from core import ood
from core.contract import (
    BFLOAT16,
    CHANNELS,
    FEATURE_NORM_NAME,
    FLOAT32,
    IMAGE_SIZE,
    INPUT_NAME,
    INT8,
    NUM_CLASSES,
    OOD_SCORE_NAME,
    OUTPUT_NAME,
    SAVED_MODEL_FILE,
    SIGNATURE_NAME,
    file_sha256,
    level_named,
)
from core.level_table import LevelTable
from core.runtime import RuntimeOptions
from core.saved_model_proto import with_signature_as_default

# OpenVINO's model converter and NNCF send usage events to Google Analytics unless the user has run
# `opt_in_out --opt_out` (docs.openvino.ai, "OpenVINO Telemetry"), and write a client id to ~/intel/ on the first
# conversion; each falls back to sending nothing where the openvino_telemetry package cannot be imported. Neither
# training nor the service should reach the internet or write outside its own folders, so that import fails here:
# both reach OpenVINO through this module (training.openvino_export imports it before it imports NNCF).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]

logger = logging.getLogger("core.openvino_runtime")
IR_DIR = "openvino"  # in a version folder: <level>.xml and <level>.bin, <level>.int8.xml and .bin
PRECISION_HINTS = {BFLOAT16: "bf16"}  # everything else: f32 (an int8 IR's layers left unquantized run in f32)
DEVICE = "CPU"
MAX_VIEWS_PER_CALL = 32  # images x test-time views in one model call (see Memory above)
PAD_MULTIPLE = 4  # a chunk is padded to a multiple of this many images (see Memory above)


class RuntimeLoadError(RuntimeError):
    """A level could not be read, converted or compiled; core.versions turns it into a ModelLoadError."""


def ir_path(version_dir: Path, level: str, precision: str = FLOAT32) -> Path:
    """The level's IR: the float32 graph (computed in float32 or bfloat16), or its int8 quantized copy."""
    return version_dir / IR_DIR / (f"{level}.{INT8}.xml" if precision == INT8 else f"{level}.xml")


def ir_digests(version_dir: Path) -> dict[str, str]:
    """metadata.json's ``openvino.sha256``: every file in ``version_dir/openvino``, by its path in the version
    (``openvino/fast.xml``). Recorded since 7 December 2026; versions before it load unchecked
    (core.versions.check_ir_files)."""
    return {f"{IR_DIR}/{file.name}": file_sha256(file) for file in sorted((version_dir / IR_DIR).iterdir())
            if file.is_file()}


@cache
def openvino_core() -> Any:
    """One ``openvino.Core`` per process: it holds the plugin and its caches. Imported on first use, so the
    file checks before a load (core.versions) fail fast without it."""
    import openvino

    return openvino.Core()


def convert_signature(version_dir: Path, signature: str) -> Any:
    """The SavedModel's ``signature`` as an ``openvino.Model`` (no TensorFlow needed)."""
    import openvino

    if signature == SIGNATURE_NAME:
        return openvino.convert_model(str(version_dir))
    with tempfile.TemporaryDirectory(prefix="openvino-convert-") as temporary:
        folder = Path(temporary)
        data = (version_dir / SAVED_MODEL_FILE).read_bytes()
        (folder / SAVED_MODEL_FILE).write_bytes(with_signature_as_default(data, signature))
        for part in ("variables", "assets"):
            if (version_dir / part).exists():
                (folder / part).symlink_to((version_dir / part).resolve())
        return openvino.convert_model(str(folder))


def read_level(version_dir: Path, level: str, signature: str, precision: str = FLOAT32) -> tuple[Any, str]:
    """(the level's model, where it came from): its IR if the export wrote one, else converted. An int8 level
    has no SavedModel signature to convert: its IR must be there."""
    path = ir_path(version_dir, level, precision)
    if path.is_file():
        try:
            return openvino_core().read_model(str(path)), f"{IR_DIR}/{path.name}"
        except Exception as error:  # a truncated, half-copied or unreadable IR: name the file, not OpenVINO's source
            raise RuntimeLoadError(f"level {level}: {IR_DIR}/{path.name} (or its .bin) cannot be read: "
                                   f"{first_line(error)}") from None
    if precision == INT8:
        raise RuntimeLoadError(f"level {level}: metadata.json chose int8, but {IR_DIR}/{path.name} is missing")
    return convert_signature(version_dir, signature), f"converted from signature {signature!r}"


def check_io(model: Any, source: str) -> None:
    """One uint8 ``images`` input ``[?, 32, 32, 3]`` and a float32 ``probabilities`` output ``[?, 10]``; an
    ``ood_score`` or ``feature_norm`` output, where the export added it, float32 ``[?]`` (others are not read)."""
    import openvino

    want_input = openvino.PartialShape([-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS])
    inputs = model.inputs
    outputs = [port for port in model.outputs if OUTPUT_NAME in port.get_names()]
    norms = [port for port in model.outputs if port.get_names() & {OOD_SCORE_NAME, FEATURE_NORM_NAME}]
    norm_ok = all(port.get_element_type() == openvino.Type.f32
                  and port.get_partial_shape() == openvino.PartialShape([-1]) for port in norms)
    if not (norm_ok and len(inputs) == 1 and inputs[0].get_element_type() == openvino.Type.u8
            and inputs[0].get_partial_shape() == want_input and len(outputs) == 1
            and outputs[0].get_element_type() == openvino.Type.f32
            and outputs[0].get_partial_shape() == openvino.PartialShape([-1, NUM_CLASSES])):
        found = ", ".join(f"{sorted(p.get_names())} {p.get_element_type()} {p.get_partial_shape()}"
                          for p in [*inputs, *model.outputs])
        raise RuntimeLoadError(f"{source} does not match the contract ({INPUT_NAME}: uint8 [?,32,32,3] -> "
                               f"{OUTPUT_NAME}: float32 [?,10]; found {found})")


def compile_config(precision: str, threads: int | None) -> dict[str, Any]:
    """One stream on ``threads`` threads (None: OpenVINO's default)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                              "INFERENCE_PRECISION_HINT": PRECISION_HINTS.get(precision, "f32")}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


@dataclass(frozen=True)
class Request:
    """An infer request and the output ports of the compiled model it belongs to."""

    infer_request: Any
    output: Any
    ood_output: Any | None  # the model's own OOD output; None: the model was exported without one
    ood_is_feature_norm: bool  # versions 5-9: a feature norm, which core.ood turns into the score


def own_ood_output(outputs: Any) -> str | None:
    """The name of the model's own "none of these" output among ``outputs`` (ports): ``ood_score``, else a
    version 5-9 ``feature_norm``; None for a model exported without one."""
    names = {name for port in outputs for name in port.get_names()}
    return next((name for name in (OOD_SCORE_NAME, FEATURE_NORM_NAME) if name in names), None)


def request_pool(compiled: Any, size: int) -> queue.SimpleQueue:
    own = own_ood_output(compiled.outputs)
    pool: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(size):
        pool.put(Request(compiled.create_infer_request(), compiled.output(OUTPUT_NAME),
                         compiled.output(own) if own else None, own == FEATURE_NORM_NAME))
    return pool


def chunk_size(views: int) -> int:
    """Images per model call at a level of ``views`` views: a power of two, at most MAX_VIEWS_PER_CALL views."""
    return 1 << (max(1, MAX_VIEWS_PER_CALL // views).bit_length() - 1)


def padded_size(count: int) -> int:
    """The size a chunk of ``count`` images is padded to: 1 or 2 as they are, else the next multiple of 4 (at
    most 3 blank images per call, and at most MAX_VIEWS_PER_CALL / 4 + 2 shapes per level)."""
    return count if count <= 2 else -(-count // PAD_MULTIPLE) * PAD_MULTIPLE


class CompiledLevel:
    """One level compiled, with a pool of infer requests: one per batch that may run at once."""

    def __init__(self, compiled: Any, concurrency: int, precision_hint: str, description: str, views: int) -> None:
        self.chunk = chunk_size(views)
        self.precision_hint = precision_hint  # as asked: a CPU without bf16 computes f32 whatever was asked
        self.description = description
        self._requests = request_pool(compiled, max(1, concurrency))

    def run(self, images: np.ndarray) -> np.ndarray:
        """core.versions.LoadedModel.predict's rows: the ten probabilities, then the model's OOD score (core.ood)
        where it has one; computed in chunks of at most ``self.chunk`` images."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        request = self._requests.get()  # blocks only if more callers than concurrency: they take turns
        try:
            rows = [run_chunk(request, images[start:start + self.chunk])
                    for start in range(0, len(images), self.chunk)]
        finally:
            self._requests.put(request)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)


def run_chunk(request: Request, images: np.ndarray) -> np.ndarray:
    """One model call on ``images``, padded with blank images to padded_size; the padding's rows dropped."""
    count = len(images)
    padded = padded_size(count)
    if padded > count:
        images = np.concatenate([images, np.zeros((padded - count, *images.shape[1:]), dtype=np.uint8)])
    # share_inputs: the chunk is read in place; outputs are copied, so the request can be reused. Every call on a
    # compiled model must share: after a shared call, OpenVINO 2026.4's CPU plugin copies a later unshared call's
    # input into the array the shared call read (the export's timing overwrote validation images so).
    results = request.infer_request.infer([images], share_inputs=True)
    probabilities = np.asarray(results[request.output][:count], dtype=np.float32)
    if request.ood_output is None:
        return probabilities
    own = np.asarray(results[request.ood_output][:count], dtype=np.float32)
    if request.ood_is_feature_norm:
        own = ood.feature_norm_score(own).astype(np.float32)
    return np.concatenate([probabilities, own[:, np.newaxis]], axis=1)


class OpenVinoModel:
    """A version folder compiled for OpenVINO: :class:`core.runtime.ModelRuntime`."""

    def __init__(self, compiled: dict[str, CompiledLevel], threads: int | None, concurrency: int) -> None:
        self._compiled = compiled
        self.threads = threads
        self.concurrency = concurrency

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(self._compiled)

    def describe(self) -> str:
        import openvino

        threads = self.threads if self.threads is not None else "default"
        batches = f", {self.concurrency} batches at once" if self.concurrency > 1 else ""
        return (f"OpenVINO {openvino.get_version().split('-')[0]}, {threads} threads{batches}: "
                + "; ".join(f"{name} {level.description}" for name, level in self._compiled.items()))

    def precision_hint(self, level: str) -> str:
        """The INFERENCE_PRECISION_HINT ``level`` was compiled with (f32 or bf16)."""
        return self._compiled[level].precision_hint

    def run(self, images: np.ndarray, level: str) -> np.ndarray:
        return self._compiled[level].run(images)

    def call_size(self, level: str) -> int:
        return self._compiled[level].chunk


def load_openvino(version_dir: Path, levels: LevelTable, options: RuntimeOptions) -> OpenVinoModel:
    """Read (or convert) and compile every level of ``version_dir``; raises :class:`RuntimeLoadError`."""
    compiled: dict[str, CompiledLevel] = {}
    for level in levels.names:
        signature, precision = levels.signature(level), levels.precision(level)
        try:
            model, source = read_level(version_dir, level, signature, precision)
        except RuntimeLoadError:
            raise
        except Exception as error:  # OpenVINO raises RuntimeError (and others) for files it cannot read
            raise RuntimeLoadError(f"level {level}: {first_line(error)}") from None
        check_io(model, f"level {level} ({source})")
        config = compile_config(precision, options.threads)
        try:
            level_model = openvino_core().compile_model(model, DEVICE, config)
        except Exception as error:
            raise RuntimeLoadError(f"level {level} ({source}) does not compile: {first_line(error)}") from None
        compiled[level] = CompiledLevel(level_model, options.concurrency, config["INFERENCE_PRECISION_HINT"],
                                        f"{source}, {precision}", level_named(level).views)
        logger.debug("level %s: %s, %s", level, source, precision)
    return OpenVinoModel(compiled, options.threads, options.concurrency)


# Lines of OpenVINO's errors that say where in its own sources it failed, not what failed.
OPENVINO_SOURCE_LINE = re.compile(r"^(Exception from src/|Check '.*' failed at )")


def first_line(error: Exception) -> str:
    """OpenVINO's and TensorFlow's errors run to pages: their first line that says what failed, shortened, fits
    a log line (OpenVINO's own first line is always where in its sources it was raised)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    telling = [line for line in lines if not OPENVINO_SOURCE_LINE.match(line)]
    return (telling or lines or [type(error).__name__])[0][:200]
