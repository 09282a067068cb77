"""The SavedModel's signatures: test-time views and temperature inside the graph (core.contract's export contract).

One signature per accuracy level and precision, traced from one float32 Keras model; :func:`write_saved_model`
writes them, :func:`predict_saved_model` runs one as the service will.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from core.contract import (
    BFLOAT16,
    FLOAT32,
    IMAGE_SIZE,
    INPUT_NAME,
    INPUT_SHAPE,
    LEVELS,
    NUM_CLASSES,
    OOD_SCORE_NAME,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    TTA_NAMES,
    level_signature,
)
from training import ood_export

# The contract's three sets of views, in LEVELS order: the image alone, it and its mirror, and that pair
# shifted too. Unpacked, so a change to LEVELS that this graph code does not handle fails at import.
ALONE, MIRRORED, SHIFTED = TTA_NAMES
# Images per call when a whole split is run through a model after training (validation, test,
# temperature fitting): large enough to keep the cores busy, small enough for the six TTA views' memory.
EVALUATION_BATCH_SIZE = 500


# Each view's weight in the average, in the order test_views stacks them: airbench's TTA levels 0-2.
VIEW_WEIGHTS = {ALONE: (1.0,), MIRRORED: (0.5, 0.5), SHIFTED: (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)}


def test_views(pixels: tf.Tensor, tta: str) -> tf.Tensor:
    """The views of float32 RGB ``pixels`` stacked on the batch axis, the images themselves first.

    MIRRORED: the image and its mirror. SHIFTED: that pair, then the same pair shifted one pixel up-left and
    one pixel down-right (reflect-padded). Stacked, the views go through the network as one batch: the graph
    holds the network once, whatever the level, which OpenVINO compiles in a sixth of the time six copies took.
    """
    if tta not in VIEW_WEIGHTS:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_NAMES}")
    pairs = [pixels]
    if tta == SHIFTED:
        padded = tf.pad(pixels, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        pairs += [padded[:, :IMAGE_SIZE, :IMAGE_SIZE], padded[:, 2:, 2:]]
    mirrored = tta != ALONE
    return tf.concat([view for images in pairs for view in ((images, tf.reverse(images, axis=[2])) if mirrored
                                                            else (images,))], axis=0)


def average_views(view_logits: tf.Tensor, tta: str) -> tf.Tensor:
    """``(views * n, 10)`` logits as test_views stacked them -> ``(n, 10)``, each view at its weight."""
    weights = tf.constant(VIEW_WEIGHTS[tta], tf.float32, shape=[len(VIEW_WEIGHTS[tta]), 1, 1])
    by_view = tf.reshape(tf.cast(view_logits, tf.float32), [len(VIEW_WEIGHTS[tta]), -1, NUM_CLASSES])
    # A weighted sum, not a matrix product: int8 export quantizes matrix products, and this one must stay exact.
    return tf.reduce_sum(weights * by_view, axis=0)


def tta_logits(model: keras.Model, pixels: tf.Tensor, tta: str) -> tf.Tensor:
    """Logits averaged over the test-time views of float32 RGB ``pixels``."""
    return average_views(model(test_views(pixels, tta), training=False), tta)


def serving_function(model: keras.Model, tta: str, temperature: float,
                     ood_score: ood_export.LayerStatisticsScore | None = None) -> Callable:
    """uint8 RGB images -> softmax probabilities, with TTA and temperature inside the graph, and with
    ``ood_score`` the "none of these" score of the image itself (OOD_SCORE_NAME, for core.ood) from the same
    forward pass."""
    spec = tf.TensorSpec(INPUT_SHAPE, tf.uint8, name=INPUT_NAME)
    heads = ood_export.ood_heads(model) if ood_score is not None else None

    @tf.function(input_signature=[spec])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)
        if heads is None or ood_score is None:
            return {OUTPUT_NAME: tf.nn.softmax(tta_logits(model, pixels, tta) / temperature, axis=-1)}
        *maps, features, view_logits = heads(test_views(pixels, tta), training=False)
        if tta != ALONE:  # the images themselves come first among the views; alone, they are all of them, and
            # a slice would still cost OpenVINO a copy of each map in every infer request
            count = tf.shape(images)[0]
            maps, features = [m[:count] for m in maps], features[:count]
        return {OUTPUT_NAME: tf.nn.softmax(average_views(view_logits, tta) / temperature, axis=-1),
                OOD_SCORE_NAME: ood_score(maps, features)}

    return serve


def logits_with_tta(model: keras.Model, images: np.ndarray, tta: str,
                    batch_size: int = EVALUATION_BATCH_SIZE) -> np.ndarray:
    """The logits the exported graph softmaxes, for fitting its temperature: the same views, uncalibrated."""
    spec = tf.TensorSpec(INPUT_SHAPE, tf.uint8)
    compute = tf.function(lambda batch: tta_logits(model, tf.cast(batch, tf.float32), tta), input_signature=[spec])
    outputs = [compute(tf.constant(images[start : start + batch_size])).numpy()
               for start in range(0, len(images), batch_size)]
    return np.concatenate(outputs).astype("float64")


@contextmanager
def compute_policies(model: keras.Model, policies: list[str] | None) -> Iterator[None]:
    """Run ``model``'s layers under ``policies`` (one dtype policy name per layer) for a while.

    Tracing a signature inside this block computes in those dtypes with the model's own float32
    variables, so float32 and bfloat16 signatures share one set of weights in the SavedModel."""
    if policies is None:
        yield
        return
    original = [layer.dtype_policy for layer in model.layers]
    try:
        for layer, policy in zip(model.layers, policies, strict=True):
            layer.dtype_policy = policy
        yield
    finally:
        for layer, policy in zip(model.layers, original, strict=True):
            layer.dtype_policy = policy


def mixed_bfloat16_policies(build: Callable[[], keras.Model]) -> list[str]:
    """The dtype policy of each layer when ``build`` runs under mixed_bfloat16: the layers a recipe
    keeps in float32 (a whitening stem, the logits) stay float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        return [layer.dtype_policy.name for layer in build().layers]
    finally:
        keras.config.set_dtype_policy(previous)


def level_signatures(model: keras.Model, temperatures: dict[str, float], default_level: str,
                     bfloat16_policies: list[str] | None,
                     ood_score: ood_export.LayerStatisticsScore | None = None) -> dict[str, Callable]:
    """Signature name -> traced serving function: every level in float32 (``serving_default`` is
    ``default_level``'s), and in bfloat16 when ``bfloat16_policies`` is given; each with ``ood_score``."""
    signatures: dict[str, Callable] = {}
    for precision, policies in ((FLOAT32, None), (BFLOAT16, bfloat16_policies)):
        if precision == BFLOAT16 and policies is None:
            continue
        with compute_policies(model, policies):
            for level in LEVELS:
                function = serving_function(model, level.tta, temperatures[level.name], ood_score)
                function.get_concrete_function()  # traced now, under this block's dtype policies
                signatures[level_signature(level.name, precision)] = function
    signatures[SIGNATURE_NAME] = signatures[default_level]
    return signatures


def write_saved_model(directory: Path, model: keras.Model, signatures: dict[str, Callable]) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in signatures.items():
        archive.add_endpoint(name=name, fn=function)
    archive.write_out(str(directory), verbose=False)


def predict_saved_model(signature: Callable, images: np.ndarray,
                        batch_size: int = EVALUATION_BATCH_SIZE) -> np.ndarray:
    """Probabilities from the exported signature, exactly as the service will get them."""
    outputs = [
        signature(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})[OUTPUT_NAME].numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, NUM_CLASSES), dtype="float32")
