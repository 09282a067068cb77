"""'None of these': the out-of-distribution score on every answer, its threshold from the export or
OOD_THRESHOLD, and a model without a threshold (no verdict)."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from app.settings import Settings
from core import ood
from core.contract import (
    FEATURE_NORM_NAME,
    INPUT_NAME,
    LEVEL_NAMES,
    METADATA_FILE,
    OOD_SCORE_NAME,
    OUTPUT_NAME,
    version_dirs,
)
from core.preprocessing import image_bytes_to_array
from tests.model_versions import PIXELS, TinyClassifier, metadata, write_model
from tests.servers import ready_test_client
from tests.synthetic import shape_image


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def shapes(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [png(np.asarray(shape_image(i % 10, rng))) for i in range(count)]


def noise(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def settings(model_dir: Path, **overrides: object) -> Settings:
    """float32 at every level (BFLOAT16=false, INT8=false), so answers compare with the SavedModel's signatures
    whatever precision the export chose for a level by timing it."""
    return Settings(model_dir=model_dir, inference_threads=2, decode_threads=2, max_batch_files=32, bfloat16=False,
                    int8=False, **overrides)


def batch(client, uploads: list[bytes], level: str | None = None) -> list[dict]:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]
    response = client.post("/predict/batch", files=files, params={"level": level} if level else None)
    assert response.status_code == 200, response.text
    return response.json()["results"]


# ---- The maths (core/ood.py) ---------------------------------------------------------------------

def test_fitted_threshold_keeps_95_percent_of_the_scores_it_was_fitted_on() -> None:
    scores = np.random.default_rng(0).exponential(size=1000)
    threshold = ood.fit_threshold(scores)
    assert np.mean(scores <= threshold) == pytest.approx(0.95, abs=0.002)
    assert ood.is_in_distribution(threshold, threshold) is True
    assert ood.is_in_distribution(threshold + 1e-9, threshold) is False
    assert ood.is_in_distribution(0.5, None) is None


def test_the_models_own_score_is_served_when_it_computes_one_else_the_top_probability() -> None:
    probabilities = np.array([[0.7, 0.3] + [0.0] * 8, [0.1] * 10])
    np.testing.assert_allclose(ood.ood_scores(probabilities), [0.3, 0.9])
    rows = np.concatenate([probabilities, [[0.25], [0.875]]], axis=1)  # the model's own scores
    np.testing.assert_allclose(ood.ood_scores(rows), [0.25, 0.875])
    assert ood.served_score(rows) == ood.MODEL_OWN and ood.served_score(probabilities) == ood.MAX_PROBABILITY
    np.testing.assert_allclose(ood.feature_norm_score(np.array([3.0, 0.0])), [0.25, 1.0])  # versions 5-9's


def test_a_threshold_fitted_for_another_score_is_not_used() -> None:
    metadata = {"ood": ood.threshold_metadata(ood.MAX_PROBABILITY, {"fast": np.array([0.1, 0.2])})}
    assert ood.model_threshold(metadata, ood.MAX_PROBABILITY, "fast") == 0.2
    assert ood.model_threshold(metadata, ood.MODEL_OWN, "fast") is None
    assert ood.model_threshold(metadata, ood.MAX_PROBABILITY, "accurate") is None
    assert ood.model_threshold({}, ood.MAX_PROBABILITY, "fast") is None
    # A model's own score is judged by the threshold its export fitted, whichever of the two it computes.
    for own in ood.MODEL_SCORES:
        fitted = {"ood": ood.threshold_metadata(own, {"fast": np.array([0.1, 0.4])})}
        assert ood.model_threshold(fitted, ood.MODEL_OWN, "fast") == 0.4
        assert ood.model_threshold(fitted, ood.MAX_PROBABILITY, "fast") is None


def test_a_level_served_in_int8_or_bfloat16_has_its_own_threshold_where_the_export_fitted_one() -> None:
    fitted = {"ood": {**ood.threshold_metadata(ood.LAYER_STATISTICS, {"fast": np.array([0.2]),
                                                                        "accurate": np.array([0.3])}),
                      ood.PRECISION_THRESHOLDS_KEY: {"int8": {"fast": 0.25}}}}
    assert ood.model_threshold(fitted, ood.MODEL_OWN, "fast", "int8") == 0.25
    assert ood.model_threshold(fitted, ood.MODEL_OWN, "fast") == 0.2  # float32, and INT8=false
    # None fitted in that precision (bfloat16 where the export's CPU could not run it): the float32 one.
    assert ood.model_threshold(fitted, ood.MODEL_OWN, "accurate", "bfloat16") == 0.3
    assert ood.model_threshold(fitted, ood.MODEL_OWN, "accurate", "int8") == 0.3
    assert ood.model_threshold(fitted, ood.MAX_PROBABILITY, "fast", "int8") is None


# ---- Served: a model exported by the training code (its own score and fitted threshold) ----------

def test_every_answer_carries_the_exported_models_own_score(trained_model_dir: Path) -> None:
    version_dir = version_dirs(trained_model_dir)[-1][1]
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    threshold = metadata["ood"]["thresholds"]["fast"]
    uploads = shapes(16, seed=3) + noise(16, seed=4)  # MAX_BATCH_FILES is 32
    signature = tf.saved_model.load(str(version_dir)).signatures["fast"]
    outputs = signature(**{INPUT_NAME: tf.constant(np.stack([image_bytes_to_array(u) for u in uploads]))})
    expected = outputs[OOD_SCORE_NAME].numpy().astype("float64")
    with ready_test_client(settings(trained_model_dir)) as client:
        results = batch(client, uploads, "fast")
        single = client.post("/predict", files={"file": ("a.png", uploads[0], "image/png")},
                             params={"level": "fast"}).json()
    scores = np.array([result["ood_score"] for result in results])
    # OpenVINO computes the score's logs and roots a little differently from TensorFlow.
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert [result["in_distribution"] for result in results] == [bool(s <= threshold) for s in scores]
    assert single["ood_score"] == pytest.approx(results[0]["ood_score"], rel=1e-6)
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in results], outputs[OUTPUT_NAME].numpy(),
                               atol=1e-6)
    # New images of the kind the model was trained on stay in, about as the validation split did.
    inside = np.mean([result["in_distribution"] for result in results[:16]])
    assert inside >= 0.75, f"only {inside:.0%} of in-distribution shapes kept"


def test_ood_threshold_overrides_the_models_own(trained_model_dir: Path) -> None:
    uploads = shapes(6, seed=5)
    with ready_test_client(settings(trained_model_dir, ood_threshold=0.0)) as client:
        assert [r["in_distribution"] for r in batch(client, uploads)] == [False] * 6  # every score is above 0
    with ready_test_client(settings(trained_model_dir, ood_threshold=1.0)) as client:
        assert [r["in_distribution"] for r in batch(client, uploads)] == [True] * 6  # and at most 1


def test_a_level_is_judged_by_the_threshold_fitted_in_the_precision_it_runs_in(trained_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    source = version_dirs(trained_model_dir)[-1][1]
    copy = tmp_path / "models" / "1"
    shutil.copytree(source, copy)
    metadata = json.loads((copy / METADATA_FILE).read_text())
    # INT8=false serves fast in float32: the float32 entry counts, the int8 one not.
    metadata["ood"][ood.PRECISION_THRESHOLDS_KEY] = {"float32": {"fast": 0.0}, "int8": {"fast": 1.0}}
    (copy / METADATA_FILE).write_text(json.dumps(metadata))
    uploads = shapes(6, seed=5)
    with ready_test_client(settings(copy.parent)) as client:
        fast = batch(client, uploads, "fast")
        balanced = batch(client, uploads, "balanced")
    assert [r["in_distribution"] for r in fast] == [False] * 6  # every score is above 0
    threshold = metadata["ood"]["thresholds"]["balanced"]
    assert [r["in_distribution"] for r in balanced] == [r["ood_score"] <= threshold for r in balanced]


# ---- Versions 5-9: a feature-norm output, which the service turns into the score -----------------

class FeatureNormClassifier(TinyClassifier):
    """A TinyClassifier that also outputs the norm of its hidden layer as ``feature_norm``, as versions 5-9
    output their penultimate features' norm."""

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        hidden = tf.nn.relu(tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, PIXELS]) @ self.hidden)
        return {OUTPUT_NAME: tf.nn.softmax(hidden @ self.output), FEATURE_NORM_NAME: tf.norm(hidden, axis=-1)}


def test_a_feature_norm_model_answers_one_over_one_plus_its_norm(tmp_path: Path) -> None:
    module = FeatureNormClassifier(seed=0, hidden=64)
    version = tmp_path / "cifar10" / "1"
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.serve})
    uploads = shapes(4, seed=8)
    norms = module.serve(tf.constant(np.stack([image_bytes_to_array(u) for u in uploads])))[FEATURE_NORM_NAME]
    expected = 1.0 / (1.0 + norms.numpy().astype("float64"))
    threshold = float(np.median(expected))  # half of them in, half out
    block = ood.threshold_metadata(ood.FEATURE_NORM, dict.fromkeys(LEVEL_NAMES, np.array([threshold])))
    (version / METADATA_FILE).write_text(json.dumps(metadata(0.5, ood=block)))
    with ready_test_client(settings(version.parent)) as client:
        results = batch(client, uploads)
    np.testing.assert_allclose([r["ood_score"] for r in results], expected, rtol=1e-5)
    assert [r["in_distribution"] for r in results] == [bool(s <= threshold) for s in expected]


# ---- A model whose export fitted no threshold and has no score output of its own -----------------

@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    write_model(root / "1")
    return root


def test_without_a_threshold_the_score_is_given_and_no_verdict(plain_model: Path) -> None:
    uploads = shapes(4, seed=6)
    with ready_test_client(settings(plain_model)) as client:
        results = batch(client, uploads)
        single = client.post("/predict", files={"file": ("a.png", uploads[0], "image/png")}).json()
    for result in [*results, single]:
        assert result["ood_score"] == pytest.approx(1.0 - result["confidence"], abs=1e-6)
        assert result["in_distribution"] is None
    with ready_test_client(settings(plain_model, ood_threshold=0.5)) as client:
        results = batch(client, uploads)
    assert [r["in_distribution"] for r in results] == [r["ood_score"] <= 0.5 for r in results]
