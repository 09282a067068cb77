"""Writes a trained Keras model as a SavedModel that keeps the export contract (app.contract)."""

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from app.contract import (
    IMAGE_SIZE,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    next_version,
)


def serving_function(model: keras.Model, flip_tta: bool, temperature: float) -> Callable:
    """uint8 RGB images -> softmax probabilities, with TTA and temperature inside the graph."""
    spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)
        logits = tf.cast(model(pixels, training=False), tf.float32)
        if flip_tta:
            mirrored = tf.cast(model(tf.reverse(pixels, axis=[2]), training=False), tf.float32)
            logits = (logits + mirrored) / 2.0
        return {OUTPUT_NAME: tf.nn.softmax(logits / temperature, axis=-1)}

    return serve


def logits_with_tta(model: keras.Model, images: np.ndarray, flip_tta: bool, batch_size: int = 500) -> np.ndarray:
    """The logits the exported graph softmaxes, computed in Keras (for temperature fitting)."""
    pixels = images.astype("float32")
    logits = model.predict(pixels, batch_size=batch_size, verbose=0).astype("float64")
    if flip_tta:
        logits = (logits + model.predict(pixels[:, :, ::-1], batch_size=batch_size, verbose=0)) / 2.0
    return logits


def write_saved_model(model: keras.Model, directory: Path, flip_tta: bool, temperature: float) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE_NAME, fn=serving_function(model, flip_tta, temperature))
    archive.write_out(str(directory), verbose=False)


def write_metadata(directory: Path, metadata: dict[str, object]) -> None:
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


@contextmanager
def staged_version_dir(model_root: Path) -> Iterator[tuple[Path, Callable[[], Path]]]:
    """A hidden staging directory, and a ``publish()`` that renames it to the next version.

    The version directory appears complete or not at all: a failure anywhere before
    ``publish()`` removes the staging directory, and the rename is atomic on one filesystem.
    """
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))
    published: list[Path] = []

    def publish() -> Path:
        version_dir = model_root / str(next_version(model_root))
        staging.rename(version_dir)
        published.append(version_dir)
        return version_dir

    try:
        yield staging, publish
    finally:
        if not published:
            shutil.rmtree(staging, ignore_errors=True)


def load_signature(version_dir: Path) -> Callable[..., dict[str, tf.Tensor]]:
    return tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_NAME]


def predict_saved_model(signature: Callable, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Probabilities from the exported signature, exactly as the service will get them."""
    outputs = [
        signature(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})[OUTPUT_NAME].numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 10), dtype="float32")
