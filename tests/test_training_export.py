"""Training end to end on synthetic shapes, and the export contract every architecture keeps."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from core import ood
from core.contract import (
    CLASS_NAMES,
    INPUT_NAME,
    LEVEL_NAMES,
    LEVELS,
    METADATA_FILE,
    OOD_SCORE_NAME,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    level_named,
    version_dirs,
)
from tests.model_versions import write_model
from tests.synthetic import shape_arrays, write_image_folder
from training import calibration, ood_export, reexport, signatures
from training.architectures import airbench_cnn, init_whitening
from training.cli import main
from training.errors import TrainingError
from training.optimizers import BiasScaledSGD
from training.publish import publish_next_version, staging_dir
from training.recipes import AIRBENCH_NETWORK, AIRBENCH_WHITENING_EPSILON, RECIPES, trained_recipe
from training.train import TrainConfig, changed_recipe


def load_signature(model_root: Path):
    _, version_dir = version_dirs(model_root)[-1]
    loaded = tf.saved_model.load(str(version_dir))
    return loaded, loaded.signatures[SIGNATURE_NAME]


def assert_contract(signature) -> None:
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == [INPUT_NAME]
    assert inputs[INPUT_NAME].dtype == tf.uint8
    assert inputs[INPUT_NAME].shape.as_list() == [None, 32, 32, 3]
    outputs = signature.structured_outputs
    assert sorted(outputs) == [OOD_SCORE_NAME, OUTPUT_NAME]  # the contract's output, and core.ood's
    assert outputs[OUTPUT_NAME].dtype == tf.float32
    assert outputs[OUTPUT_NAME].shape.as_list() == [None, 10]
    assert outputs[OOD_SCORE_NAME].dtype == tf.float32
    assert outputs[OOD_SCORE_NAME].shape.as_list() == [None]


def test_trained_model_keeps_the_contract_and_learns(trained_model_dir: Path) -> None:
    versions = version_dirs(trained_model_dir)
    assert [v for v, _ in versions] == [1]
    _, signature = load_signature(trained_model_dir)
    assert_contract(signature)
    images, labels = shape_arrays(per_class=20, seed=99)  # never seen in training
    probabilities = signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
    assert accuracy >= 0.6, f"held-out accuracy {accuracy:.2f}: chance is 0.10"


def test_metadata_and_reports(trained_model_dir: Path) -> None:
    version_dir = version_dirs(trained_model_dir)[-1][1]
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    assert metadata["class_names"] == list(CLASS_NAMES)
    assert metadata["architecture"] == "tutorial-rgb"
    assert metadata["epochs"] == 4 and metadata["epochs_completed"] == 4 and metadata["batch_size"] == 32
    assert metadata["val_images"] == 40 and metadata["train_images"] == 360
    assert metadata["seed"] == metadata["split_seed"] == 0  # the split's seed: --split-seed, else --seed
    assert 0.0 <= metadata["val_accuracy"] <= 1.0
    assert metadata["test_accuracy"] is not None  # the synthetic set has a test/ split
    assert metadata["params"] > 1_000_000
    assert metadata["input_contract"]["inputs"][INPUT_NAME]["dtype"] == "uint8"
    assert len(metadata["data"]["sha256"]) == 64
    assert metadata["tensorflow_version"] == tf.__version__ and metadata["keras_version"] == keras.__version__
    assert len(metadata["seconds_per_epoch"]) == 4 and metadata["train_seconds"] > 0
    assert metadata["train_images_per_cpu_second"] > 0  # the median of the epochs this process trained
    assert metadata["temperature"] > 0 and 0 <= metadata["val_ece"] <= 1
    # The "none of these" threshold, fitted on the validation split: 95% of its images are within it.
    # Its score's statistics: tutorial-rgb's one conv layer, fitted on every training image (fewer than 5,000).
    assert metadata["ood"]["score"] == ood.LAYER_STATISTICS and metadata["ood"]["images"] == 40
    assert metadata["ood"]["feature_maps"] == 1 and metadata["ood"]["fitted_on_training_images"] == 360
    assert set(metadata["ood"]["thresholds"]) == set(LEVEL_NAMES)
    _, signature = load_signature(trained_model_dir)
    images, _ = shape_arrays(per_class=4, seed=0)
    scores = signature(**{INPUT_NAME: tf.constant(images)})[OOD_SCORE_NAME].numpy()
    assert np.all((scores > 0) & (scores < 1))
    # Every level with its own temperature and figures; tutorial-rgb has no test-time views by default.
    assert metadata["default_level"] == "fast" and list(metadata["levels"]) == list(LEVEL_NAMES)
    for name, figures in metadata["levels"].items():
        assert figures["signature"] == name and figures["temperature"] > 0 and 0 <= figures["val_ece"] <= 1
        assert 0 <= figures["val_accuracy"] <= 1
        assert set(figures["images_per_second"]) == {"batch_1", "batch_64"}
        assert all(value > 0 for value in figures["images_per_second"].values())
    assert metadata["levels"]["fast"]["temperature"] == metadata["temperature"]
    # tutorial-rgb trains in float32: no bfloat16 signatures, so no batch size uses them.
    assert metadata["precision"]["bfloat16_batch_sizes"] == {name: [] for name in LEVEL_NAMES}
    # A level OpenVINO serves in int8 or bfloat16 gets a threshold fitted on that precision's own scores.
    assert served_thresholds(metadata) == reduced_levels(metadata)
    report = version_dir / "report"
    # model.png too: the diagram needs no Graphviz, so a default install always draws it.
    for name in ("curves.png", "confusion_matrix.png", "predictions.png", "mistakes.png", "model.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = (report / "per_class.md").read_text()
    assert all(f"| {name} |" in table for name in CLASS_NAMES)


def test_served_probabilities_apply_the_fitted_temperature(trained_model_dir: Path) -> None:
    version_dir = version_dirs(trained_model_dir)[-1][1]
    metadata = json.loads((version_dir / METADATA_FILE).read_text())
    _, signature = load_signature(trained_model_dir)
    images, _ = shape_arrays(per_class=2, seed=5)
    served = signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
    # Undo the softmax: log-probabilities times T are the logits up to a constant per row.
    logits = np.log(served.astype("float64")) * metadata["temperature"]
    np.testing.assert_allclose(calibration.softmax(logits, metadata["temperature"]), served, atol=1e-4)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_trains_a_step_and_exports_the_same_contract(name: str, tmp_path: Path) -> None:
    recipe = RECIPES[name]
    images, labels = shape_arrays(per_class=4, seed=1)
    keras.config.set_dtype_policy("float32")
    model = recipe.build()
    if recipe.data_init:
        recipe.data_init(model, images, 0)
    model.compile(optimizer=recipe.make_optimizer(2),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing))
    before = [w.copy() for w in model.get_weights()]
    model.fit(images.astype("float32"), keras.utils.to_categorical(labels, 10), batch_size=20, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    temperatures = {"fast": 1.5, "balanced": 2.0, "accurate": 0.5}
    bfloat16 = signatures.mixed_bfloat16_policies(recipe.build) if recipe.mixed_bfloat16 else None
    default = recipe.default_level
    ood_score = ood_export.fit_layer_statistics(model, images)
    signatures.write_saved_model(tmp_path / "1", model, signatures.level_signatures(model, temperatures, default,
                                                                                   bfloat16, ood_score))
    loaded, signature = load_signature(tmp_path)
    expected_names = {SIGNATURE_NAME, *LEVEL_NAMES} | ({f"{n}_bfloat16" for n in LEVEL_NAMES} if bfloat16 else set())
    assert set(loaded.signatures) == expected_names
    for name in expected_names:
        assert_contract(loaded.signatures[name])
    for level in LEVELS:
        probabilities = loaded.signatures[level.name](**{INPUT_NAME: tf.constant(images[:3])})[OUTPUT_NAME].numpy()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        logits = signatures.logits_with_tta(model, images[:3], level.tta)
        expected = calibration.softmax(logits, temperatures[level.name])
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)
        if bfloat16:
            reduced = loaded.signatures[f"{level.name}_bfloat16"](**{INPUT_NAME: tf.constant(images[:3])})
            reduced = reduced[OUTPUT_NAME].numpy()
            np.testing.assert_allclose(reduced.sum(axis=1), 1.0, atol=1e-5)
            # The same weights, computed in bfloat16: close to float32, yet not bit-identical.
            np.testing.assert_allclose(reduced, probabilities, atol=0.05)
            assert not np.array_equal(reduced, probabilities)
        # The OOD score of the image itself, whatever the level's views.
        *maps, features, _ = ood_export.ood_heads(model)(images[:3].astype("float32"), training=False)
        scores = loaded.signatures[level.name](**{INPUT_NAME: tf.constant(images[:3])})[OOD_SCORE_NAME].numpy()
        np.testing.assert_allclose(scores, ood_score(maps, features).numpy(), rtol=1e-4)
    default_answer = signature(**{INPUT_NAME: tf.constant(images[:3])})[OUTPUT_NAME].numpy()
    np.testing.assert_array_equal(
        default_answer, loaded.signatures[default](**{INPUT_NAME: tf.constant(images[:3])})[OUTPUT_NAME].numpy())


def test_gray_model_ignores_colour_but_not_brightness() -> None:
    model = RECIPES["tutorial-gray"].build()
    gray_value = np.full((1, 32, 32, 3), 0.299 * 200 + 0.587 * 10 + 0.114 * 50, dtype="float32")
    colour = np.zeros((1, 32, 32, 3), dtype="float32")
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 10, 50
    np.testing.assert_allclose(model(colour).numpy(), model(gray_value).numpy(), atol=1e-4)


def test_widths_change_the_network_and_rebuild_it_from_metadata(tmp_path: Path) -> None:
    def run(recipe: str, widths: tuple[int, int, int]) -> TrainConfig:
        return TrainConfig(recipe=recipe, data=None, out=None, epochs=1, batch_size=None, seed=0, val_size=None,
                           threads=2, cache_dir=None, run_dir=tmp_path, resume=False, teachers=(Path("teacher"),),
                           recipe_changes={"widths": widths})

    wide = RECIPES["airbench-wide-distill"]
    narrowed = changed_recipe(wide, run("airbench-wide-distill", (8, 16, 24)))
    convs = [layer.filters for layer in narrowed.build().layers
             if isinstance(layer, keras.layers.Conv2D) and layer.name != "whiten"]
    assert convs == [8, 8, 16, 16, 24, 24]
    assert "conv groups 8/16/24" in narrowed.description and "96/320/320" not in narrowed.description
    # reexport, report and bench/ood rebuild a model from its metadata.json: the widths it records, else the recipe's.
    metadata_json = Path("models/x/1/metadata.json")
    rebuilt = trained_recipe({"architecture": "airbench-wide-distill", "widths": [8, 16, 24]}, metadata_json).build()
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in narrowed.build().weights]
    assert trained_recipe({"architecture": "airbench-wide-distill"}, metadata_json) is wide
    assert trained_recipe({"architecture": "tutorial-rgb", "widths": None}, metadata_json) is RECIPES["tutorial-rgb"]
    for edited in ([8, 16], [8, 16, 0], [8, 16, 24.5], "8 16 24", [True, 16, 24]):
        with pytest.raises(TrainingError, match=r"^models/x/1/metadata.json records widths .*, not the three positive"):
            trained_recipe({"architecture": "airbench-wide-distill", "widths": edited}, metadata_json)
    with pytest.raises(TrainingError, match="this recipe trains the tutorial's CNN on RGB; drop --widths"):
        changed_recipe(RECIPES["tutorial-rgb"], run("tutorial-rgb", (8, 16, 24)))


def test_whitening_decorrelates_patches() -> None:
    images, _ = shape_arrays(per_class=10, seed=2)
    model = RECIPES["airbench"].build()
    init_whitening(model, images, AIRBENCH_WHITENING_EPSILON)
    kernel = model.get_layer("whiten").get_weights()[0]
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., :12], -kernel[..., 12:])


def test_export_is_atomic(tmp_path: Path) -> None:
    root = tmp_path / "cifar10"
    with pytest.raises(RuntimeError), staging_dir(root) as staging:
        (staging / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("training died mid-export")
    assert list(root.iterdir()) == []
    with staging_dir(root) as staging:
        (staging / "saved_model.pb").write_bytes(b"whole")
        assert version_dirs(root) == []  # invisible until published
        published = publish_next_version(staging, root)
    assert published == root / "1" and (published / "saved_model.pb").read_bytes() == b"whole"
    assert published.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in root.iterdir()] == ["1"]


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, size=(20000, 10))
    labels = np.array([rng.choice(10, p=p) for p in calibration.softmax(true_logits)])
    # The model is overconfident by a factor 2: its logits are twice the true ones.
    fitted = calibration.fit_temperature(true_logits * 2.0, labels)
    assert fitted == pytest.approx(2.0, rel=0.05)
    calibrated = calibration.softmax(true_logits * 2.0, fitted)
    assert calibration.expected_calibration_error(calibrated, labels) < 0.02
    assert calibration.expected_calibration_error(calibration.softmax(true_logits * 2.0), labels) > 0.05


def test_tta_modes_average_the_views_they_name() -> None:
    model = RECIPES["tutorial-rgb"].build()
    images, _ = shape_arrays(per_class=1, seed=4)
    alone, pair, six = (level.tta for level in LEVELS)
    plain = signatures.logits_with_tta(model, images, alone)
    mirrored = model.predict(images[:, :, ::-1].astype("float32"), verbose=0)
    np.testing.assert_allclose(signatures.logits_with_tta(model, images, pair), (plain + mirrored) / 2, atol=1e-4)
    six_views = signatures.logits_with_tta(model, images, six)
    assert six_views.shape == (10, 10) and not np.allclose(six_views, plain, atol=1e-3)
    padded = np.pad(images.astype("float32"), [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")

    def pair_of(views: np.ndarray) -> np.ndarray:
        return (model.predict(views, verbose=0) + model.predict(views[:, :, ::-1], verbose=0)) / 2

    shifted = (pair_of(padded[:, :32, :32]) + pair_of(padded[:, 2:, 2:])) / 2
    np.testing.assert_allclose(six_views, ((plain + mirrored) / 2 + shifted) / 2, atol=1e-4)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        signatures.logits_with_tta(model, images, "rotate")


def test_lookahead_keeps_the_average_not_the_latest_step() -> None:
    from training.optimizers import Lookahead, LookaheadSchedule

    images, labels = shape_arrays(per_class=4, seed=6)
    model = RECIPES["tutorial-rgb"].build()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    after_first_step: list[np.ndarray] = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch == 0:
                after_first_step.extend(self.model.get_weights())

    # decay 1.0: the average is frozen at its first snapshot, so training moves nothing after step 1.
    frozen = LookaheadSchedule(decay_base=1.0, decay_pow=0.0, every_steps=1)
    model.fit(images.astype("float32"), keras.utils.to_categorical(labels, 10), batch_size=10, epochs=1,
              verbose=0, callbacks=[Record(), Lookahead(frozen, total_steps=4)])
    for expected, actual in zip(after_first_step, model.get_weights(), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_bias_scaled_sgd_moves_batchnorm_shifts_that_many_times_further() -> None:
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype("float32")
    targets = keras.utils.to_categorical(np.arange(16) % 10, 10)
    steps = []
    for optimizer in (keras.optimizers.SGD(0.01), BiasScaledSGD(64.0, learning_rate=0.01)):
        keras.utils.set_random_seed(0)
        model = airbench_cnn(replace(AIRBENCH_NETWORK, widths=(8, 8, 8)))
        model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.train_on_batch(images, targets)
        steps.append({v.path.split("/")[-1] + str(i): np.abs(v.numpy() - b).sum()
                      for i, (v, b) in enumerate(zip(model.trainable_variables, before, strict=True))})
    plain, scaled = steps
    for name in plain:
        ratio = scaled[name] / plain[name]
        assert ratio == pytest.approx(64.0 if name.startswith("beta") else 1.0, rel=1e-3), name


def test_reexport_publishes_the_same_weights_through_the_export_path_at_another_default(
        trained_model_dir: Path, shapes_dataset: Path, tmp_path: Path) -> None:
    # One re-export checks both (each costs a whole export): the weights come through unchanged, and
    # --default-level serves another level of them by default.
    models = tmp_path / "shapes"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], models / "1")
    before = json.loads((models / "1" / METADATA_FILE).read_text())
    assert before["default_level"] == "fast"
    # --force: on the synthetic shapes, accurate may score below fast, the level served from this folder now.
    assert main(["reexport", str(models / "1"), "--data", str(shapes_dataset), "--threads", "2",
                 "--timing-seconds", "0.02", "--cache-dir", str(tmp_path / "cache"),
                 "--default-level", "accurate", "--force"]) == 0
    after = json.loads((models / "2" / METADATA_FILE).read_text())
    assert after["reexported_from"]["version"] == "1"
    # The source's accurate signature against the re-export's default: the same weights answer the same.
    assert after["reexported_from"]["max_probability_difference"] <= 1e-4
    for key in ("class_names", "architecture", "seed", "history", "data", "input_contract"):
        assert after[key] == before[key], key
    for name, figures in after["levels"].items():
        assert figures["val_accuracy"] == before["levels"][name]["val_accuracy"], name
        assert figures["temperature"] == pytest.approx(before["levels"][name]["temperature"], rel=1e-3), name
    assert (models / "2" / "report" / "per_class.md").is_file()
    assert after["default_level"] == "accurate"
    assert after["tta"] == level_named("accurate").tta
    assert after["val_accuracy"] == before["levels"]["accurate"]["val_accuracy"]
    loaded = tf.saved_model.load(str(models / "2"))
    images, _ = shape_arrays(per_class=1, seed=3)
    served, accurate = (loaded.signatures[name](**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
                        for name in (SIGNATURE_NAME, "accurate"))
    np.testing.assert_array_equal(served, accurate)


def test_reexport_below_the_served_version_is_refused_before_any_work(
        trained_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Without --out the re-export becomes the newest version of the source's own folder, which a service serves.
    models = tmp_path / "cifar10"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], models / "1")
    metadata = json.loads((models / "1" / METADATA_FILE).read_text())
    metadata["levels"]["fast"]["val_accuracy"] = 0.5  # its default level's figure is the one compared
    (models / "1" / METADATA_FILE).write_text(json.dumps(metadata))
    write_model(models / "2", val_accuracy=0.9)
    assert main(["reexport", str(models / "1"), "--data", str(tmp_path / "no-data-needed")]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error == (f"error: {models / '1'} at fast has validation accuracy 50.00%, below the 90.00% of "
                     f"{models / '2'}, which is served now; as the next version of {models} it would be served "
                     "instead. Pass --out a scratch model folder (e.g. runs/cifar10), or add --force to publish it "
                     "anyway.")
    assert sorted(path.name for path in models.iterdir()) == ["1", "2"]
    # --force goes past the check, on to the data, which comes first of the work.
    assert main(["reexport", str(models / "1"), "--data", str(tmp_path / "no-data-needed"), "--force"]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"error: {tmp_path / 'no-data-needed'}: no such file or directory"), error


def test_reexport_warns_where_this_cpu_cannot_time_the_sources_bfloat16_levels() -> None:
    source = Path("models/cifar10/9")
    metadata = {"openvino": {"precision": {"fast": "int8", "balanced": "bfloat16", "accurate": "bfloat16"}}}
    warning = reexport.precision_warning(source, metadata, bfloat16_cpu=False)
    assert warning == ("warning: models/cifar10/9 serves accurate, balanced in bfloat16, chosen by timing on a CPU "
                       "with bfloat16 instructions; this CPU has none, so the re-export times and chooses without "
                       "bfloat16, and its levels may run slower on such CPUs. Re-export on one, or add "
                       "--keep-precisions to keep them.")
    assert reexport.precision_warning(source, metadata, bfloat16_cpu=True) is None
    float32 = {"openvino": {"precision": {"fast": "int8", "balanced": "float32", "accurate": "float32"}}}
    assert reexport.precision_warning(source, float32, bfloat16_cpu=False) is None
    assert reexport.precision_warning(source, {}, bfloat16_cpu=False) is None  # exported before OpenVINO


def served_thresholds(metadata: dict) -> set[tuple[str, str]]:
    """(level, precision) of every threshold fitted in a precision other than float32."""
    return {(level, precision) for precision, levels in metadata["ood"].get(ood.PRECISION_THRESHOLDS_KEY, {}).items()
            for level in levels}


def reduced_levels(metadata: dict) -> set[tuple[str, str]]:
    """(level, precision) of every level OpenVINO serves in int8 or bfloat16, measured on this CPU."""
    return {(level, precision) for level, precision in metadata["openvino"]["precision"].items()
            if precision != "float32" and precision in metadata["openvino"]["levels"][level]}


def test_reexport_can_keep_the_precisions_its_source_chose(trained_model_dir: Path, shapes_dataset: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "shapes"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], models / "1")
    source = json.loads((models / "1" / METADATA_FILE).read_text())
    # Exported before OpenVINO: no precisions to keep, refused before any work.
    (models / "1" / METADATA_FILE).write_text(json.dumps({k: v for k, v in source.items() if k != "openvino"}))
    arguments = ["reexport", str(models / "1"), "--data", str(shapes_dataset), "--threads", "2", "--timing-seconds",
                 "0.02", "--cache-dir", str(tmp_path / "cache"), "--keep-precisions", "--force"]
    assert main(arguments) == 1
    assert "records no precision chosen per level" in capsys.readouterr().err
    (models / "1" / METADATA_FILE).write_text(json.dumps({**source, "openvino": {"precision": {"fast": "int4"}}}))
    assert main(arguments) == 1
    assert "do not name one of float32, int8, bfloat16 for each of fast, balanced, accurate" in capsys.readouterr().err
    # As if timed on another CPU: choices this one would not make.
    source["openvino"]["precision"] = {"fast": "int8", "balanced": "bfloat16", "accurate": "float32"}
    (models / "1" / METADATA_FILE).write_text(json.dumps(source))
    assert main(arguments) == 0
    assert "warning" not in capsys.readouterr().err
    after = json.loads((models / "2" / METADATA_FILE).read_text())
    section = after["openvino"]
    assert section["rule"].startswith("kept from version 1")

    def kept_unless_worse(level: str, precision: str) -> str:
        if precision not in section["levels"][level]:  # not measurable here: kept on the source's word
            return precision
        full, reduced = section["levels"][level]["float32"], section["levels"][level][precision]
        worse = (round(full["val_accuracy"] - reduced["val_accuracy"], 6) > 0.001
                 or round(reduced["val_ece"] - full["val_ece"], 6) > 0.001)
        return "float32" if worse else precision

    assert section["precision"] == {"fast": kept_unless_worse("fast", "int8"),
                                    "balanced": kept_unless_worse("balanced", "bfloat16"), "accurate": "float32"}
    assert (models / "2" / "openvino" / "fast.int8.xml").is_file() == (section["precision"]["fast"] == "int8")
    assert served_thresholds(after) == reduced_levels(after)
    assert after["precision"]["bfloat16_batch_sizes"] == {name: [] for name in LEVEL_NAMES}  # no bfloat16 signatures


def test_reexport_to_a_level_the_source_lacks_is_refused_and_writes_nothing(
        trained_model_dir: Path, shapes_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Versions exported before the levels (1-3) have serving_default alone: nothing to check "accurate" against.
    source = version_dirs(trained_model_dir)[-1][1]
    models = tmp_path / "shapes"
    loaded = tf.saved_model.load(str(source))
    tf.saved_model.save(loaded, str(models / "1"), signatures={SIGNATURE_NAME: loaded.signatures[SIGNATURE_NAME]})
    shutil.copy(source / METADATA_FILE, models / "1" / METADATA_FILE)
    assert main(["reexport", str(models / "1"), "--data", str(shapes_dataset), "--threads", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--default-level", "accurate"]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error == (f"error: {models / '1'}: it has no accurate signature to compare the re-export with; "
                     "re-export it once without --default-level, then from that version.")
    assert [path.name for path in models.iterdir()] == ["1"]


def test_reexport_from_other_data_is_refused_and_writes_nothing(trained_model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "shapes"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], models / "1")
    other = write_image_folder(tmp_path / "other", train_per_class=3, seed=1)
    assert main(["reexport", str(models / "1"), "--data", str(other), "--cache-dir", str(tmp_path / "cache")]) == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"error: {other}: sha256 ") and "pass that folder with --data, as it was" in error
    assert [path.name for path in models.iterdir()] == ["1"]
