"""Loading a version folder and checking it keeps the export contract.

The checks read the files alone (metadata.json, saved_model.pb's SignatureDefs through
core.saved_model_proto) and fail in milliseconds; only then does the runtime load the model. Serving's
runtime is OpenVINO (core.openvino_runtime): neither TensorFlow nor anything from ``training`` is imported.
"""

import errno
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.contract import (
    CHANNELS,
    CLASS_NAMES,
    IMAGE_SIZE,
    INPUT_NAME,
    METADATA_FILE,
    NUM_CLASSES,
    OUTPUT_NAME,
    SAVED_MODEL_FILE,
    SIGNATURE_NAME,
    file_sha256,
    version_dirs,
)
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import (
    IR_SHA256_KEY,
    MODEL_LEVELS,
    OPENVINO_SECTION,
    LevelSettings,
    LevelTable,
    LevelTableError,
    UnknownLevelError,
    level_table,
)
from core.openvino_runtime import RuntimeLoadError, first_line, ir_path, load_openvino
from core.runtime import DEFAULT_OPTIONS, ModelRuntime, RuntimeLoader, RuntimeOptions
from core.saved_model_proto import DT_FLOAT, DT_UINT8, parse_saved_model, signature_defs

logger = logging.getLogger("core.versions")
HOW_TO_MAKE_ONE = "Train one with `python -m training train` (see README) or set MODEL_DIR to a model directory."
# What loads a checked folder. bench/tensorflow_app.py sets TensorFlow's here to measure the old path beside
# the new one; the service and training always use OpenVINO's.
runtime_loader: RuntimeLoader = load_openvino


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message names the path and the fix.

    ``reason`` sorts the fault for the rejected-versions metric: ``missing``, ``incomplete``, ``unloadable``
    (not a readable SavedModel), ``contract`` (signature or class names off the export contract) or
    ``bad_output`` (it loads but does not answer probabilities)."""

    def __init__(self, message: str, reason: str = "unloadable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    level_table: LevelTable  # the accuracy levels it offers, and the precision each runs in
    runtime: ModelRuntime  # what computes them (core.runtime)

    @property
    def default_level(self) -> str:
        return self.level_table.default

    @property
    def level_names(self) -> tuple[str, ...]:
        return self.level_table.names

    def predict(self, images: np.ndarray, level: str | None = None) -> np.ndarray:
        """``uint8 (n, 32, 32, 3)`` -> ``float32 (n, 10)`` probabilities at ``level`` (None: the default level);
        ``(n, 11)`` when the model also computes its OOD score (core.ood, the runtime's last column): one row
        per image, so batches split by rows."""
        return self.runtime.run(images, self.level_table.resolve(level))


def resolve_version_dir(model_dir: Path) -> tuple[int, Path]:
    """The directory to serve: ``model_dir`` itself if it is a version, else its highest version."""
    if not model_dir.exists():
        raise ModelLoadError(f"model directory {model_dir} does not exist. {HOW_TO_MAKE_ONE}", reason="missing")
    if (model_dir / SAVED_MODEL_FILE).is_file() and model_dir.name.isdigit():
        return int(model_dir.name), model_dir
    versions = version_dirs(model_dir)
    if not versions:
        raise ModelLoadError(f"model directory {model_dir} has no version folders (<name>/<integer>/"
                             f"{SAVED_MODEL_FILE}). {HOW_TO_MAKE_ONE}", reason="missing")
    return versions[-1]


def pinned_version_dir(model_dir: Path, version: int) -> tuple[int, Path]:
    """``model_dir/<version>``, which MODEL_VERSION names: it must exist."""
    path = model_dir / str(version)
    if not path.is_dir() and (model_dir / SAVED_MODEL_FILE).is_file():
        raise ModelLoadError(f"MODEL_VERSION={version}, but MODEL_DIR {model_dir} is itself a version folder. Set "
                             f"MODEL_DIR to the folder that holds the versions ({model_dir.parent}), or unset "
                             "MODEL_VERSION.", reason="missing")
    if not path.is_dir():
        present = ", ".join(str(number) for number, _ in version_dirs(model_dir)) or "none"
        raise ModelLoadError(f"MODEL_VERSION={version}, but {path} does not exist (versions there: {present}). "
                             "Unset MODEL_VERSION to serve the highest version.", reason="missing")
    return version, path


def load_model(model_dir: Path, version: int | None = None, options: RuntimeOptions = DEFAULT_OPTIONS,
               level_settings: LevelSettings = MODEL_LEVELS) -> LoadedModel:
    """The version ``model_dir`` names: ``version`` if given, else itself or its highest version."""
    number, path = resolve_version_dir(model_dir) if version is None else pinned_version_dir(model_dir, version)
    return load_version(path, number, options, level_settings)


def load_version(path: Path, version: int, options: RuntimeOptions = DEFAULT_OPTIONS,
                 level_settings: LevelSettings = MODEL_LEVELS) -> LoadedModel:
    """Check one version folder against the export contract, then load it with ``options`` (threads, batches
    at once); ``level_settings`` picks the default level and allows bfloat16 and int8.

    Converting and compiling takes seconds, so the file checks come first: a missing, incomplete or
    off-contract model directory fails at once. A file the process may not read is a ModelLoadError too, so
    that start-up falls back to an older version and the watcher skips it."""
    try:
        return _load_version(path, version, options, level_settings)
    except OSError as error:
        raise unreadable(path, error) from None


def unreadable(path: Path, error: OSError) -> ModelLoadError:
    """The error for a version whose files the process cannot read, naming the file and the fix: chmod when it
    may not, else a new copy (a folder where a file goes, an I/O error)."""
    fix = (f"Make the version readable by the service (uid {os.getuid()}), e.g. chmod -R a+rX {path}."
           if error.errno in (errno.EACCES, errno.EPERM) else
           "Copy the version again (into a temporary name, then rename it into place), or re-export it.")
    return ModelLoadError(f"{error.filename or path} cannot be read ({error.strerror or error}). {fix}")


def as_load_error(path: Path, error: Exception) -> ModelLoadError:
    """``error`` from loading or checking the version at ``path``, as the ModelLoadError it is or stands for: a
    broken model can raise anything, and is skipped all the same."""
    return error if isinstance(error, ModelLoadError) else ModelLoadError(
        f"{path} could not be loaded ({first_line(error)})")


def _load_version(path: Path, version: int, options: RuntimeOptions, level_settings: LevelSettings) -> LoadedModel:
    if not (path / SAVED_MODEL_FILE).is_file():
        raise ModelLoadError(f"{path} has no {SAVED_MODEL_FILE}. {HOW_TO_MAKE_ONE}", reason="incomplete")
    metadata_path = path / METADATA_FILE
    try:
        metadata = json.loads(metadata_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{metadata_path} is missing; the export writes it beside "
                             f"{SAVED_MODEL_FILE}. {HOW_TO_MAKE_ONE}", reason="incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # other OSErrors: load_version's message
        raise ModelLoadError(f"{metadata_path} is not valid JSON ({error}). Re-export the model.",
                             reason="contract") from None
    if not isinstance(metadata, dict) or metadata.get("class_names") != list(CLASS_NAMES):
        raise ModelLoadError(f"{metadata_path}: class_names must be the ten CIFAR-10 classes in order "
                             f"{list(CLASS_NAMES)}. Re-export the model.", reason="contract")
    table = served_levels(path, metadata, level_settings)
    check_wire_format(path)
    # The signatures are read from saved_model.pb itself: a model off the contract fails in
    # milliseconds instead of after converting and compiling it.
    check_signature_def(path, [SIGNATURE_NAME, *sorted(table.signatures() - {SIGNATURE_NAME})])
    check_ir_files(path, metadata, table)
    try:
        runtime = runtime_loader(path, table, options)
    except RuntimeLoadError as error:
        off_contract = "does not match the contract" in str(error)  # copying it again would not help
        fix = ("Re-export it with `python -m training reexport`." if off_contract else
               "If it was copied, copy it again (into a temporary name, then rename it into place); else re-export "
               "it with `python -m training reexport`.")
        raise ModelLoadError(f"{path} is not a loadable model ({error}). {fix}",
                             reason="contract" if off_contract else "unloadable") from None
    except Exception as error:  # a runtime raises many types for a corrupt file
        raise ModelLoadError(f"{path} is not a loadable SavedModel ({first_line(error)}). {HOW_TO_MAKE_ONE}") from None
    name = str(metadata.get("name") or path.parent.name)
    return LoadedModel(name=name, version=version, path=path, metadata=metadata, level_table=table, runtime=runtime)


def served_levels(path: Path, metadata: dict[str, Any], settings: LevelSettings) -> LevelTable:
    """The model's level table under these settings; bfloat16 only on a CPU with bfloat16 instructions."""
    flags = cpu_flags() if settings.cpu_flags is None else settings.cpu_flags
    try:
        return level_table(metadata, settings.allow_bfloat16 and has_bfloat16(flags), settings.allow_int8,
                           settings.default_level)
    except LevelTableError as error:
        raise ModelLoadError(f"{path / METADATA_FILE}: {error}. Re-export the model.", reason="contract") from None
    except UnknownLevelError as error:
        raise ModelLoadError(f"DEFAULT_LEVEL={settings.default_level}: {path} offers {', '.join(error.offered)}. "
                             "Set DEFAULT_LEVEL to one of them, or unset it for the model's own default.",
                             reason="contract") from None


def check_ir_files(path: Path, metadata: dict[str, Any], table: LevelTable) -> None:
    """Each IR file the levels will read is the one the export wrote beside this metadata.json, where it recorded
    their sha256s: the thresholds and figures there were measured on those files, and another export's IR (a
    version's ``openvino/`` copied over another's) loads, and answers with scores they do not fit. A file that
    is absent is left to the runtime: a float32 level is then converted from the SavedModel, and a missing int8
    IR is named there."""
    recorded = (metadata.get(OPENVINO_SECTION) or {}).get(IR_SHA256_KEY)
    if recorded is None:  # exported before the sha256s were recorded
        return
    for level in table.names:
        graph = ir_path(path, level, table.precision(level))
        for file in (graph, graph.with_suffix(".bin")):
            name = file.relative_to(path).as_posix()
            if file.is_file() and recorded.get(name) != file_sha256(file):
                raise ModelLoadError(
                    f"{file} is not the file {METADATA_FILE} records for level {level} (sha256 "
                    f"{recorded.get(name) or 'none'}): a copy cut short or changed, or another export's IR. Copy the "
                    "version again, whole (into a temporary name, then rename it into place), or re-export it with "
                    "`python -m training reexport`.")


def check_wire_format(path: Path) -> None:
    """Parse saved_model.pb as a message with no known fields: that checks the protocol-buffer wire format
    in milliseconds, so a corrupt or truncated file fails before the runtime is imported."""
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError

    try:
        empty_pb2.Empty.FromString((path / SAVED_MODEL_FILE).read_bytes())
    except DecodeError as error:
        raise ModelLoadError(f"{path} is not a loadable SavedModel ({SAVED_MODEL_FILE} is not a valid protocol "
                             f"buffer: {error}). {HOW_TO_MAKE_ONE}") from None


def check_signature_def(path: Path, names: list[str] | None = None) -> None:
    """Each named SignatureDef in saved_model.pb (default: ``serving_default``) must be the export contract
    exactly: a model with levels is checked for every signature its metadata.json says it serves."""
    expected = (f"{INPUT_NAME}: uint8 [None, {IMAGE_SIZE}, {IMAGE_SIZE}, {CHANNELS}] -> "
                f"{OUTPUT_NAME}: float32 [None, {NUM_CLASSES}]")
    try:
        saved_model = parse_saved_model((path / SAVED_MODEL_FILE).read_bytes())
    except Exception as error:  # DecodeError, or a message with fields of the wrong types
        raise ModelLoadError(f"{path} is not a loadable SavedModel ({error}). {HOW_TO_MAKE_ONE}") from None

    def matches(tensors: Any, name: str, dtype: int, shape: list[int]) -> bool:
        info = tensors.get(name)
        return (info is not None and info.dtype == dtype and not info.tensor_shape.unknown_rank
                and [dim.size for dim in info.tensor_shape.dim] == shape)

    found = signature_defs(saved_model)
    for name in names or [SIGNATURE_NAME]:
        signature = found.get(name)
        if signature is None:
            raise ModelLoadError(f"{path} has no '{name}' signature. Re-export with `python -m training reexport`.",
                                 reason="contract")
        # One input, as the service feeds only the images; further outputs would be harmless.
        if not (len(signature.inputs) == 1
                and matches(signature.inputs, INPUT_NAME, DT_UINT8, [-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS])
                and matches(signature.outputs, OUTPUT_NAME, DT_FLOAT, [-1, NUM_CLASSES])):
            raise ModelLoadError(f"{path}: signature '{name}' does not match the contract ({expected}). "
                                 "Re-export with `python -m training reexport`.", reason="contract")


def check_answers(model: LoadedModel, batch_sizes: Iterable[int]) -> None:
    """Run ``model`` at every level on a batch of each size (which also warms it up): every row must be ten
    finite probabilities summing to 1. A graph can load and keep the signature yet answer NaN or garbage."""
    rng = np.random.default_rng(0)
    for level in model.level_names:
        call_size = model.runtime.call_size(level)
        # A batch larger than one model call runs as calls of that size: the largest call is the one to warm.
        for size in sorted({size if call_size is None else min(size, call_size) for size in batch_sizes}):
            check_batch(model, level, size, rng)


def check_batch(model: LoadedModel, level: str, size: int, rng: np.random.Generator) -> None:
    """One batch of ``size`` random images at ``level``: ModelLoadError unless ten probabilities per row."""
    images = rng.integers(0, 256, (size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    try:
        rows = np.asarray(model.predict(images, level))
    except Exception as error:  # a runtime raises many types for a graph that cannot run
        raise ModelLoadError(f"{model.path} failed on a batch of {size} ({first_line(error)}). "
                             "Re-export the model.", reason="bad_output") from None
    probabilities = rows[:, :NUM_CLASSES] if rows.ndim == 2 else rows  # an OOD score may follow them
    if rows.ndim == 2 and rows.shape[1] > NUM_CLASSES and not np.all(np.isfinite(rows[:, NUM_CLASSES:])):
        raise ModelLoadError(f"{model.path} answers an out-of-distribution score that is not a number at level "
                             f"{level}: every answer's in_distribution would be wrong. Re-export the model.",
                             reason="bad_output")
    if (probabilities.shape != (size, NUM_CLASSES) or not np.all(np.isfinite(probabilities))
            or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)):
        raise ModelLoadError(f"{model.path} does not answer probabilities: on a batch of {size} it gave shape "
                             f"{probabilities.shape}, row sums {np.round(probabilities.sum(axis=-1)[:3], 4)}"
                             f"... (want ({size}, {NUM_CLASSES}), each summing to 1). Re-export the model.",
                             reason="bad_output")
