"""The export's part of the "none of these" score (core.ood): the ``ood_score`` output of every signature, from
statistics of the network's deepest feature maps fitted on training images, and the threshold fitted on the
validation split for metadata.json's ``ood``.

The score (core.ood.LAYER_STATISTICS) adds two terms, each standardised on the training images it was fitted on:

- how unusual the image's activation statistics are: for each of the DEEPEST_MAPS last feature maps, the log of
  the L2 norm of its channels pooled each of the POOLINGS ways; their Mahalanobis distance (log) from the training
  images' mean under their covariance. Images of something else excite the deep layers too little (flat colours,
  digits) or in the wrong proportions (noise, text).
- how short the image's penultimate features are (``-log`` of their norm, the older exports' score).

``sigmoid`` of the sum, so the score lies in (0, 1) like the others. bench/ood.py measures it (docs/ood.md).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core import ood
from core.contract import INPUT_NAME, LEVELS, OOD_SCORE_NAME, level_signature

EVALUATION_BATCH_SIZE = 500
# The feature maps the statistics read: conv groups 2 and 3 of airbench (its last four). The first group's
# statistics also flagged brightened or sharpened validation images (docs/ood.md), so they are left out.
DEEPEST_MAPS = 4
# How each map's channels are pooled over space (reductions taking ``axis``) before their norm is taken. Version
# 10's export also pooled by RMS: four more reductions, for little better separation (docs/ood.md, "Fewer
# reductions").
POOLINGS: dict[str, Callable[..., tf.Tensor]] = {"max": tf.reduce_max, "mean": tf.reduce_mean}
# Training images the statistics' mean and covariance are fitted on (fewer when training has fewer), drawn
# at random with this seed: a training split read from class folders is in class order.
FIT_IMAGES = 5000
FIT_SEED = 0
# Keeps the logs finite for an all-zero activation (a blank image through ReLU).
EPSILON = 1e-6


def ood_heads(model: keras.Model) -> keras.Model | None:
    """``model`` with outputs [the deepest feature maps..., the input of its last Dense layer (the features the
    logits come from), its logits], sharing its layers and weights; None for a model without a Dense layer or
    without a feature map after a non-linearity."""
    dense = next((layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense)), None)
    maps = [layer.output for layer in model.layers if len(layer.output.shape) == 4 and (
        isinstance(layer, keras.layers.Activation)
        or (isinstance(layer, keras.layers.Conv2D) and layer.activation is not keras.activations.linear))]
    if dense is None or not maps:
        return None
    return keras.Model(model.inputs, [*maps[-DEEPEST_MAPS:], dense.input, model.output])


def layer_statistics(maps: list[tf.Tensor],
                     poolings: dict[str, Callable[..., tf.Tensor]] = POOLINGS) -> tf.Tensor:
    """float32 ``[None, len(poolings) * len(maps)]``: per map, the log L2 norm of its channels pooled each of
    the ``poolings`` ways (reductions taking ``axis``)."""
    columns = []
    for activation in maps:
        activation = tf.cast(activation, tf.float32)
        for pool in poolings.values():
            columns.append(tf.math.log(tf.norm(pool(activation, axis=[1, 2]), axis=-1) + EPSILON))
    return tf.stack(columns, axis=-1)


def feature_shortness(features: tf.Tensor) -> tf.Tensor:
    """float32 ``[None]``: ``-log`` of the L2 norm of each image's (flattened) penultimate features."""
    flat = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
    return -tf.math.log(tf.norm(flat, axis=-1) + EPSILON)


@dataclass(frozen=True)
class LayerStatisticsScore:
    """The fitted constants of the score, and the score as graph ops."""

    mean: np.ndarray  # (d,) the statistics' mean over the fitting images
    whitening: np.ndarray  # (d, d) maps centred statistics to ones with identity covariance
    distance: tuple[float, float]  # mean and standard deviation of the log distance on the fitting images
    shortness: tuple[float, float]  # the same for feature_shortness
    images: int

    def log_distance(self, statistics: tf.Tensor) -> tf.Tensor:
        centred = statistics - tf.constant(self.mean, tf.float32)
        # A broadcast product and a sum, not a matrix product: int8 export quantizes matrix products.
        white = tf.reduce_sum(centred[:, :, tf.newaxis] * tf.constant(self.whitening, tf.float32), axis=1)
        return tf.math.log(tf.reduce_sum(tf.square(white), axis=-1) + EPSILON)

    def __call__(self, maps: list[tf.Tensor], features: tf.Tensor) -> tf.Tensor:
        """float32 ``[None]`` in (0, 1): higher for images less like the fitting images."""
        return self.from_statistics(layer_statistics(maps), feature_shortness(features))

    def from_statistics(self, statistics: tf.Tensor, shortness: tf.Tensor) -> tf.Tensor:
        """The score of images whose layer statistics and feature shortness are computed already."""
        distance = (self.log_distance(statistics) - self.distance[0]) / self.distance[1]
        return tf.sigmoid(distance + (shortness - self.shortness[0]) / self.shortness[1])

    def score_arrays(self, statistics: np.ndarray, shortness: np.ndarray) -> np.ndarray:
        """float64 scores of images whose statistics a :func:`statistics_reader` read, as the graph computes them
        (in float32)."""
        return self.from_statistics(tf.constant(statistics, tf.float32),
                                    tf.constant(shortness, tf.float32)).numpy().astype("float64")

    def metadata(self) -> dict[str, Any]:
        return {"feature_maps": self.mean.size // len(POOLINGS), "poolings": list(POOLINGS),
                "fitted_on_training_images": self.images}


def fit_layer_statistics(model: keras.Model, train_images: np.ndarray, count: int = FIT_IMAGES,
                         batch_size: int = EVALUATION_BATCH_SIZE) -> LayerStatisticsScore | None:
    """The score's constants from ``count`` training images drawn at random; None for a model :func:`ood_heads`
    cannot read."""
    heads = ood_heads(model)
    if heads is None:
        return None
    return fit_constants(*statistics_reader(heads, batch_size)(fitting_images(train_images, count)))


def statistics_reader(heads: keras.Model, batch_size: int = EVALUATION_BATCH_SIZE,
                      poolings: dict[str, Callable[..., tf.Tensor]] = POOLINGS,
                      ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A function from images to their float64 layer statistics ``(n, len(poolings) * maps)`` and feature
    shortness ``(n,)``, read through :func:`ood_heads`' model ``heads`` ``batch_size`` images at a time. One
    reader serves every image set, so its graph is traced once a batch shape, not again for each set."""

    @tf.function
    def compute(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        *maps, features, _ = heads(tf.cast(batch, tf.float32), training=False)
        return layer_statistics(maps, poolings), feature_shortness(features)

    def read(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [compute(tf.constant(images[start : start + batch_size]))
                 for start in range(0, len(images), batch_size)]
        return (np.concatenate([s.numpy() for s, _ in parts]).astype("float64"),
                np.concatenate([s.numpy() for _, s in parts]).astype("float64"))

    return read


def fitting_images(train_images: np.ndarray, count: int = FIT_IMAGES) -> np.ndarray:
    """``count`` training images drawn at random with FIT_SEED (all of them when there are fewer)."""
    count = min(count, len(train_images))
    return train_images[np.sort(np.random.default_rng(FIT_SEED).choice(len(train_images), count, replace=False))]


def fit_constants(statistics: np.ndarray, shortness: np.ndarray) -> LayerStatisticsScore:
    """The score's constants from the fitting images' layer statistics ``(n, d)`` and feature shortness ``(n,)``."""
    mean = statistics.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(statistics, rowvar=False))
    # Directions with (almost) no variance would divide by zero: they are dropped, as a pseudo-inverse does.
    kept = values > values.max() * 1e-9
    whitening = np.zeros_like(vectors)
    whitening[:, kept] = vectors[:, kept] / np.sqrt(values[kept])
    log_distance = np.log(np.sum(np.square((statistics - mean) @ whitening), axis=1) + EPSILON)
    return LayerStatisticsScore(mean.astype("float32"), whitening.astype("float32"),
                                (float(log_distance.mean()), float(log_distance.std() or 1.0)),
                                (float(shortness.mean()), float(shortness.std() or 1.0)), len(statistics))


def fit_ood(saved_model_dir: Path, images: np.ndarray, level_probabilities: dict[str, np.ndarray],
            score: LayerStatisticsScore | None, served_scores: dict[str, dict[str, np.ndarray]] | None = None,
            batch_size: int = EVALUATION_BATCH_SIZE) -> dict[str, Any]:
    """metadata.json's ``ood`` block: the score the written SavedModel supports and, per level, the threshold
    that keeps core.ood.KEEP_IN_DISTRIBUTION of the validation ``images`` "in" (``level_probabilities``:
    each level's validation probabilities, already computed by the export's evaluation). ``served_scores``
    (precision -> level -> validation scores): the levels served in int8 or bfloat16, whose scores move with
    the precision (an int8 level kept 93% "in" at the float32 threshold), get thresholds of their own."""
    saved = tf.saved_model.load(str(saved_model_dir))
    first = saved.signatures[level_signature(LEVELS[0].name)]
    if OOD_SCORE_NAME not in first.structured_outputs or score is None:
        return ood.threshold_metadata(ood.MAX_PROBABILITY, {
            level: ood.max_probability_score(probabilities) for level, probabilities in level_probabilities.items()})
    # The score comes from the image itself, whatever the level's views: one pass at the cheapest level.
    scores = np.concatenate([
        first(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})[OOD_SCORE_NAME].numpy()
        for start in range(0, len(images), batch_size)])
    block = {**ood.threshold_metadata(ood.LAYER_STATISTICS, dict.fromkeys(level_probabilities, scores)),
             **score.metadata()}
    if served_scores:
        block[ood.PRECISION_THRESHOLDS_KEY] = {
            precision: ood.threshold_metadata(ood.LAYER_STATISTICS, by_level)["thresholds"]
            for precision, by_level in served_scores.items()}
    return block
