"""Small SavedModels the lifecycle tests make for themselves in a second, without training.

Each keeps the export contract (``images`` uint8 ``[None, 32, 32, 3]`` -> ``probabilities`` float32
``[None, 10]``) with random weights, and writes a ``metadata.json`` as the training command would, so the
service and ``python -m training promote`` treat it like any export. The faulty variants break exactly
one thing each.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.contract import CLASS_NAMES, IMAGE_SIZE, METADATA_FILE, SAVED_MODEL_FILE, export_contract

PIXELS = IMAGE_SIZE * IMAGE_SIZE * 3


class TinyClassifier(tf.Module):
    """Pixels -> one hidden layer -> softmax. ``hidden`` sets its size: 1024 makes a ~12 MB model."""

    def __init__(self, seed: int, hidden: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.hidden = tf.Variable(rng.normal(0, 0.02, (PIXELS, hidden)).astype("float32"))
        self.output = tf.Variable(rng.normal(0, 0.5, (hidden, len(CLASS_NAMES))).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, PIXELS])
        return {"probabilities": tf.nn.softmax(tf.nn.relu(pixels @ self.hidden) @ self.output)}


class WrongSignature(tf.Module):
    """A real SavedModel for another problem: float32 28x28x1 images (an MNIST-shaped model)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": tf.nn.softmax(tf.reshape(images, [-1, 784])[:, :10])}


class NotProbabilities(tf.Module):
    """Keeps the signature but answers NaN: only running it shows the fault."""

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        rows = tf.shape(images)[0]
        return {"probabilities": tf.fill([rows, len(CLASS_NAMES)], float("nan"))}


def metadata(val_accuracy: float, **extra: object) -> dict[str, object]:
    return {"name": "cifar10", "class_names": list(CLASS_NAMES), "input_contract": export_contract(),
            "architecture": "tiny-test", "val_accuracy": val_accuracy, "data": {"sha256": "0" * 64}, **extra}


def write_model(directory: Path, module: tf.Module | None = None, val_accuracy: float = 0.5, seed: int = 0,
                hidden: int = 64) -> Path:
    """A complete export in ``directory`` (created): SavedModel plus metadata.json."""
    module = module or TinyClassifier(seed, hidden)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    (directory / METADATA_FILE).write_text(json.dumps(metadata(val_accuracy), indent=2))
    return directory


def publish_copy(source: Path, model_root: Path, version: int) -> Path:
    """Copy an export into ``model_root/<version>`` the way an operator should: staged under a hidden
    name, then renamed, so the service never sees it half-copied."""
    staging = model_root / f".copying-{version}"
    shutil.copytree(source, staging)
    target = model_root / str(version)
    staging.rename(target)
    return target


def corrupt_saved_model(directory: Path) -> None:
    (directory / SAVED_MODEL_FILE).write_bytes(b"\x08\x01\x12\xff" + bytes(range(256)) * 8)


def forget_ir_sha256(directory: Path) -> None:
    """Drops metadata.json's record of the IR files' sha256s, as exports before 7 December 2026 wrote it: the
    service then reads whatever IR is there, and the tests that damage an IR reach OpenVINO's own checks."""
    path = directory / METADATA_FILE
    metadata = json.loads(path.read_text())
    del metadata["openvino"]["sha256"]
    path.write_text(json.dumps(metadata))


def drop_metadata(directory: Path) -> None:
    (directory / METADATA_FILE).unlink()


class LevelsClassifier(TinyClassifier):
    """A TinyClassifier with the three accuracy levels as signatures: the same network, each level's logits
    divided by its own temperature (as the real export does), so the levels answer differently."""

    def __init__(self, seed: int, hidden: int) -> None:
        super().__init__(seed, hidden)
        spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")
        self.levels = {name: tf.function(lambda images, t=temperature: self.at(images, t), input_signature=[spec])
                       for name, temperature in LEVEL_TEMPERATURES.items()}

    def at(self, images: tf.Tensor, temperature: float) -> dict[str, tf.Tensor]:
        pixels = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, PIXELS])
        return {"probabilities": tf.nn.softmax(tf.nn.relu(pixels @ self.hidden) @ self.output / temperature)}


LEVEL_TEMPERATURES = {"fast": 2.0, "balanced": 1.0, "accurate": 0.5}


def write_levels_model(directory: Path, seed: int = 0, default_level: str = "accurate") -> Path:
    """A complete export with levels, as training.reexport writes one: ``serving_default`` is the default
    level, and metadata.json lists the levels (float32 only)."""
    module = LevelsClassifier(seed, 64)
    signatures = {name: function for name, function in module.levels.items()}
    signatures["serving_default"] = module.levels[default_level]
    tf.saved_model.save(module, str(directory), signatures=signatures)
    levels = {name: {"signature": name, "views": 1, "val_accuracy": 0.5} for name in LEVEL_TEMPERATURES}
    (directory / METADATA_FILE).write_text(json.dumps(metadata(0.5, default_level=default_level, levels=levels)))
    return directory
