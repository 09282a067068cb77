"""The export's "none of these" score (training.ood_export): which feature maps it reads, and its fitted
constants, checked against the statistics of the images it was fitted on."""

import keras
import numpy as np
import tensorflow as tf

from tests.synthetic import shape_arrays
from training import ood_export
from training.recipes import RECIPES


def statistics_of(heads: keras.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    *maps, features, _ = heads(images.astype("float32"), training=False)
    return (ood_export.layer_statistics(maps).numpy().astype("float64"),
            ood_export.feature_shortness(features).numpy().astype("float64"), np.asarray(features))


def test_airbench_is_read_at_its_last_four_feature_maps_and_its_logits_features() -> None:
    keras.config.set_dtype_policy("float32")
    heads = ood_export.ood_heads(RECIPES["airbench"].build())
    assert heads is not None
    *maps, features, logits = heads.outputs
    # Conv groups 2 and 3, two GELU outputs each: 7x7 after the second pooling, 3x3 after the third.
    assert [tuple(m.shape[1:3]) for m in maps] == [(7, 7), (7, 7), (3, 3), (3, 3)]
    assert features.shape[-1] == maps[-1].shape[-1] and logits.shape[-1] == 10


def test_each_map_gives_the_log_norms_of_its_max_and_mean_pooled_channels() -> None:
    # Two channels over a 2x2 map: maxima (4, 3), means (2.5, 1.5).
    activation = np.array([[[1, 0], [2, 1]], [[3, 2], [4, 3]]], dtype="float32")[np.newaxis]
    statistics = ood_export.layer_statistics([tf.constant(activation), tf.constant(2 * activation)]).numpy()
    expected = np.log([5.0, np.hypot(2.5, 1.5), 10.0, 2 * np.hypot(2.5, 1.5)])
    np.testing.assert_allclose(statistics[0], expected, rtol=1e-5)


def test_the_fitted_score_standardises_the_images_it_was_fitted_on() -> None:
    keras.config.set_dtype_policy("float32")
    model = RECIPES["tutorial-rgb"].build()
    images, _ = shape_arrays(per_class=12, seed=2)
    score = ood_export.fit_layer_statistics(model, images, batch_size=50)
    assert score is not None and score.images == 120 and score.metadata()["feature_maps"] == 1
    statistics, shortness, features = statistics_of(ood_export.ood_heads(model), images)
    # Whitened, the statistics of the fitting images have mean 0 and identity covariance.
    white = (statistics - score.mean) @ score.whitening
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(statistics.shape[1]), atol=1e-3)
    # Each of the two terms is standardised on them, so the score's logit averages 0 over them.
    log_distance = score.log_distance(tf.constant(statistics, tf.float32)).numpy()
    assert abs((log_distance.mean() - score.distance[0]) / score.distance[1]) < 1e-3
    assert abs((shortness.mean() - score.shortness[0]) / score.shortness[1]) < 1e-3
    *maps, _, _ = ood_export.ood_heads(model)(images.astype("float32"), training=False)
    scores = score(maps, features).numpy().astype("float64")
    assert np.all((scores > 0) & (scores < 1))
    assert abs(np.mean(np.log(scores / (1 - scores)))) < 1e-3
    # The benches' way, statistics read in batches then scored as arrays, gives the graph's scores.
    read = ood_export.statistics_reader(ood_export.ood_heads(model), batch_size=50)
    np.testing.assert_allclose(score.score_arrays(*read(images)), scores, rtol=1e-5)


def test_images_unlike_the_fitting_ones_score_higher() -> None:
    keras.config.set_dtype_policy("float32")
    model = RECIPES["tutorial-rgb"].build()
    images, _ = shape_arrays(per_class=12, seed=2)
    score = ood_export.fit_layer_statistics(model, images, batch_size=50)
    heads = ood_export.ood_heads(model)
    blank = np.zeros((8, 32, 32, 3), dtype="float32")  # nothing at all: no activation to speak of
    fresh, _ = shape_arrays(per_class=1, seed=5)
    *blank_maps, blank_features, _ = heads(blank, training=False)
    *fresh_maps, fresh_features, _ = heads(fresh.astype("float32"), training=False)
    assert score(blank_maps, blank_features).numpy().min() > score(fresh_maps, fresh_features).numpy().max()
