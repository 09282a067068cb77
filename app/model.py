"""Loading the SavedModel and checking it keeps the export contract.

Serving needs TensorFlow and the SavedModel alone: nothing from ``training`` is imported.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.contract import (
    CLASS_NAMES,
    IMAGE_SIZE,
    INPUT_NAME,
    METADATA_FILE,
    NUM_CLASSES,
    OUTPUT_NAME,
    SAVED_MODEL_FILE,
    SIGNATURE_NAME,
    version_dirs,
)

logger = logging.getLogger("app.model")
HOW_TO_MAKE_ONE = "Train one with `python -m training` (see README) or set MODEL_DIR to a model directory."


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message names the path and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    path: Path
    metadata: dict[str, Any]
    signature: Any  # the concrete serving_default function

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``uint8 (n, 32, 32, 3)`` -> ``float32 (n, 10)`` probabilities, through the signature."""
        import tensorflow as tf

        outputs = self.signature(**{INPUT_NAME: tf.constant(images, dtype=tf.uint8)})
        return outputs[OUTPUT_NAME].numpy()


# Importing TensorFlow takes seconds: configure_tensorflow only records the thread count and
# load_model applies it after its file checks, so a missing or incomplete model directory fails at once.
_tensorflow_threads: int | None = None


def configure_tensorflow(threads: int) -> None:
    global _tensorflow_threads
    _tensorflow_threads = threads


def _apply_tensorflow_threads() -> None:
    import tensorflow as tf

    if _tensorflow_threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(_tensorflow_threads)
        tf.config.threading.set_inter_op_parallelism_threads(_tensorflow_threads)
    except RuntimeError:
        # Already initialised in this process (a second app in the same test run): keep the pools.
        logger.debug("TensorFlow thread pools already configured")


def resolve_version_dir(model_dir: Path) -> tuple[int, Path]:
    """The directory to serve: ``model_dir`` itself if it is a version, else its highest version."""
    if not model_dir.exists():
        raise ModelLoadError(f"model directory {model_dir} does not exist. {HOW_TO_MAKE_ONE}")
    if (model_dir / SAVED_MODEL_FILE).is_file() and model_dir.name.isdigit():
        return int(model_dir.name), model_dir
    versions = version_dirs(model_dir)
    if not versions:
        raise ModelLoadError(f"model directory {model_dir} has no version folders (<name>/<integer>/"
                             f"{SAVED_MODEL_FILE}). {HOW_TO_MAKE_ONE}")
    return versions[-1]


def load_model(model_dir: Path) -> LoadedModel:
    version, path = resolve_version_dir(model_dir)
    if not (path / SAVED_MODEL_FILE).is_file():
        raise ModelLoadError(f"{path} has no {SAVED_MODEL_FILE}. {HOW_TO_MAKE_ONE}")
    metadata_path = path / METADATA_FILE
    try:
        metadata = json.loads(metadata_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{metadata_path} is missing; the export writes it beside "
                             f"{SAVED_MODEL_FILE}. {HOW_TO_MAKE_ONE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ModelLoadError(f"{metadata_path} is not valid JSON ({error}). Re-export the model.") from None
    if not isinstance(metadata, dict) or metadata.get("class_names") != list(CLASS_NAMES):
        raise ModelLoadError(f"{metadata_path}: class_names must be the ten CIFAR-10 classes in order "
                             f"{list(CLASS_NAMES)}. Re-export the model.")
    check_wire_format(path)

    import tensorflow as tf

    _apply_tensorflow_threads()
    try:
        saved = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many types for a corrupt file
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelLoadError(f"{path} is not a loadable SavedModel ({first_line}). {HOW_TO_MAKE_ONE}") from None
    signature = saved.signatures.get(SIGNATURE_NAME) if hasattr(saved, "signatures") else None
    if signature is None:
        raise ModelLoadError(f"{path} has no '{SIGNATURE_NAME}' signature. Re-export with `python -m training`.")
    check_signature(signature, path)
    # Keep the loaded object alive: the concrete function only holds weak references to it.
    signature._cifar10_owner = saved
    name = str(metadata.get("name") or path.parent.name)
    return LoadedModel(name=name, version=version, path=path, metadata=metadata, signature=signature)


def check_wire_format(path: Path) -> None:
    """Parse saved_model.pb as a message with no known fields: that checks the protocol-buffer wire format
    in milliseconds, so a corrupt or truncated file fails before the multi-second TensorFlow import."""
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError

    try:
        empty_pb2.Empty.FromString((path / SAVED_MODEL_FILE).read_bytes())
    except DecodeError as error:
        raise ModelLoadError(f"{path} is not a loadable SavedModel ({SAVED_MODEL_FILE} is not a valid protocol "
                             f"buffer: {error}). {HOW_TO_MAKE_ONE}") from None


def check_signature(signature: Any, path: Path) -> None:
    import tensorflow as tf

    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    spec = inputs.get(INPUT_NAME) if isinstance(inputs, dict) else None
    expected = (f"{INPUT_NAME}: uint8 [None, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] -> "
                f"{OUTPUT_NAME}: float32 [None, {NUM_CLASSES}]")
    ok = (
        spec is not None
        and len(inputs) == 1
        and spec.dtype == tf.uint8
        and spec.shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
        and isinstance(outputs, dict)
        and OUTPUT_NAME in outputs
        and outputs[OUTPUT_NAME].dtype == tf.float32
        and outputs[OUTPUT_NAME].shape.as_list() == [None, NUM_CLASSES]
    )
    if not ok:
        raise ModelLoadError(f"{path}: signature '{SIGNATURE_NAME}' does not match the contract ({expected}). "
                             "Re-export with `python -m training`.")
