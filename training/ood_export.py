"""The export's part of the "none of these" score (core.ood): the penultimate-feature norm output of every
signature, and the threshold fitted on the validation split for metadata.json's ``ood``."""

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core import ood
from core.contract import FEATURE_NORM_NAME, INPUT_NAME, LEVELS, level_signature

EVALUATION_BATCH_SIZE = 500


def features_and_logits(model: keras.Model) -> keras.Model | None:
    """``model`` with two outputs, the input of its last Dense layer (the features the logits are computed
    from) and its logits, sharing its layers and weights; None for a model with no Dense layer."""
    dense = next((layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense)), None)
    if dense is None:
        return None
    return keras.Model(model.inputs, [dense.input, model.output])


def feature_norm(features: tf.Tensor) -> tf.Tensor:
    """float32 ``[None]``: the L2 norm of each image's features (flattened)."""
    flat = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
    return tf.norm(flat, axis=-1)


def fit_ood(saved_model_dir: Path, images: np.ndarray, level_probabilities: dict[str, np.ndarray],
            batch_size: int = EVALUATION_BATCH_SIZE) -> dict[str, Any]:
    """metadata.json's ``ood`` block: the score the written SavedModel supports and, per level, the threshold
    that keeps core.ood.KEEP_IN_DISTRIBUTION of the validation ``images`` "in" (``level_probabilities``:
    each level's validation probabilities, already computed by the export's evaluation)."""
    saved = tf.saved_model.load(str(saved_model_dir))
    first = saved.signatures[level_signature(LEVELS[0].name)]
    if FEATURE_NORM_NAME not in first.structured_outputs:
        return ood.threshold_metadata(ood.MAX_PROBABILITY, {
            level: ood.max_probability_score(probabilities) for level, probabilities in level_probabilities.items()})
    # The norm comes from the image itself, whatever the level's views: one pass at the cheapest level.
    norms = np.concatenate([
        first(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})[FEATURE_NORM_NAME].numpy()
        for start in range(0, len(images), batch_size)])
    scores = ood.feature_norm_score(norms)
    return ood.threshold_metadata(ood.FEATURE_NORM, dict.fromkeys(level_probabilities, scores))

