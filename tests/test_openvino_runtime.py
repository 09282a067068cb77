"""The OpenVINO runtime against TensorFlow on the same SavedModel: every level, from the export's IR and from the
fallback conversion, within 1e-5; two batches at once; and serving that never imports TensorFlow."""

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import openvino
import pytest
import tensorflow as tf

from core.contract import (
    FEATURE_NORM_NAME,
    FLOAT32,
    INPUT_NAME,
    LEVEL_NAMES,
    METADATA_FILE,
    NUM_CLASSES,
    OOD_SCORE_NAME,
    OUTPUT_NAME,
    level_named,
    version_dirs,
)
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import FLOAT32_LEVELS
from core.openvino_runtime import (
    IR_DIR,
    MAX_VIEWS_PER_CALL,
    chunk_size,
    compile_config,
    ir_path,
    openvino_core,
    padded_size,
)
from core.runtime import RuntimeOptions
from core.versions import ModelLoadError, check_answers, load_model
from tests.model_versions import forget_ir_sha256, write_model
from tests.servers import REPO
from tests.synthetic import shape_arrays
from training.calibration import softmax
from training.openvino_export import (
    choose_precision,
    fit_temperature_factor,
    float32_layers,
    images_per_second,
    ood_only_layers,
    predict,
    quantize,
    with_temperature_factor,
)

PARITY = 1e-5  # largest difference of one probability, OpenVINO float32 against TensorFlow float32


def parity_images() -> np.ndarray:
    """Shapes like the training data, and uniform noise: both in-distribution and far from it."""
    shapes, _ = shape_arrays(per_class=3, seed=7)
    noise = np.random.default_rng(3).integers(0, 256, (17, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([shapes, noise])


def tensorflow_probabilities(version: Path, signature: str, images: np.ndarray) -> np.ndarray:
    """The signature's rows as LoadedModel.predict gives them: probabilities, then the model's OOD score if any
    (versions 5-9's feature norm turned into its score)."""
    saved = tf.saved_model.load(str(version))
    outputs = saved.signatures[signature](**{INPUT_NAME: tf.constant(images)})
    if OOD_SCORE_NAME in outputs:
        own = outputs[OOD_SCORE_NAME].numpy()
    elif FEATURE_NORM_NAME in outputs:
        own = 1.0 / (1.0 + outputs[FEATURE_NORM_NAME].numpy())
    else:
        return outputs[OUTPUT_NAME].numpy()
    return np.concatenate([outputs[OUTPUT_NAME].numpy(), own[:, None]], axis=1)


def copy_version(trained_model_dir: Path, tmp_path: Path) -> Path:
    version = tmp_path / "shapes" / "1"
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], version)
    return version


def test_the_export_writes_an_ir_per_level_and_chooses_its_precision(trained_model_dir: Path) -> None:
    version = version_dirs(trained_model_dir)[-1][1]
    section = json.loads((version / METADATA_FILE).read_text())["openvino"]
    for level in LEVEL_NAMES:
        assert ir_path(version, level).is_file() and ir_path(version, level).with_suffix(".bin").is_file()
        figures = section["levels"][level]["float32"]
        assert 0 <= figures["val_accuracy"] <= 1 and figures["images_per_second"]["batch_64"] > 0
    for level, precision in section["precision"].items():
        # Chosen by the rule from the figures recorded beside it; int8 was measured at every level, and its IR
        # kept only where chosen.
        assert precision == choose_precision(section["levels"][level])
        assert "int8" in section["levels"][level]
        assert ir_path(version, level, "int8").is_file() == (precision == "int8")
        assert section["ir"][level] == f"{IR_DIR}/{ir_path(version, level, precision).name}"
    # Every file kept in openvino/, with the sha256 the service checks it against.
    assert section["sha256"] == {f"{IR_DIR}/{file.name}": hashlib.sha256(file.read_bytes()).hexdigest()
                                 for file in (version / IR_DIR).iterdir()}
    assert len(section["sha256"]) == 2 * (len(LEVEL_NAMES) + list(section["precision"].values()).count("int8"))
    if not has_bfloat16(cpu_flags()):  # bfloat16 not even tried
        assert all(set(figures) == {"float32", "int8"} for figures in section["levels"].values())


@pytest.mark.parametrize("source", ["ir", "converted"])
def test_every_level_matches_tensorflow_within_1e5(trained_model_dir: Path, tmp_path: Path, source: str) -> None:
    version = copy_version(trained_model_dir, tmp_path)
    if source == "converted":  # a folder exported before the IR: each level converted from its signature
        shutil.rmtree(version / IR_DIR)
    model = load_model(version, level_settings=FLOAT32_LEVELS)
    assert model.level_names == LEVEL_NAMES
    described = model.runtime.describe()
    assert ("converted from signature 'accurate'" in described) == (source == "converted"), described
    images = parity_images()
    for level in LEVEL_NAMES:
        expected = tensorflow_probabilities(version, level, images)
        rows = model.predict(images, level)
        assert rows.shape == expected.shape
        difference = float(np.abs(rows[:, :NUM_CLASSES] - expected[:, :NUM_CLASSES]).max())
        assert difference <= PARITY, f"{level} ({source}): {difference:.1e}"
        if expected.shape[1] > NUM_CLASSES:  # the OOD score: OpenVINO's logs and roots differ a little
            np.testing.assert_allclose(rows[:, NUM_CLASSES], expected[:, NUM_CLASSES], atol=1e-4)


def test_an_int8_level_runs_its_quantized_ir(trained_model_dir: Path, tmp_path: Path) -> None:
    """A level the export chose int8 for is read from openvino/<level>.int8.xml, answers close to float32 (its
    dense layer's weights and inputs in int8), and runs in float32 again under FLOAT32_LEVELS (INT8=false); a
    folder whose metadata chose int8 without the file is refused, naming the file."""
    version = copy_version(trained_model_dir, tmp_path)
    images = parity_images()
    calibration, _ = shape_arrays(per_class=5, seed=11)
    quantized = quantize(openvino_core().read_model(str(ir_path(version, "fast"))), calibration)
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    # Nothing from the stem, from the logits' product to the softmax, or on the way to the OOD score alone (its
    # statistics, norms and whitening), reads a quantized input.
    kept = set(float32_layers(openvino_core().read_model(str(ir_path(version, "fast")))))
    assert any("logits" in name for name in kept)
    ood_only = set(ood_only_layers(openvino_core().read_model(str(ir_path(version, "fast")))))
    assert len(ood_only) > 10 and ood_only <= kept
    assert not [op.get_friendly_name() for op in quantized.get_ordered_ops() if op.get_friendly_name() in kept
                and any(value.get_node().get_type_name() == "FakeQuantize" for value in op.input_values())]
    openvino.save_model(quantized, str(ir_path(version, "fast", "int8")), compress_to_fp16=False)
    forget_ir_sha256(version)  # an IR made here, not by the export
    metadata = json.loads((version / METADATA_FILE).read_text())
    metadata["openvino"]["precision"]["fast"] = "int8"
    (version / METADATA_FILE).write_text(json.dumps(metadata))

    int8 = load_model(version)
    assert "fast openvino/fast.int8.xml, int8" in int8.runtime.describe()
    float32 = load_model(version, level_settings=FLOAT32_LEVELS)
    assert "fast openvino/fast.xml, float32" in float32.runtime.describe()
    reduced, full = int8.predict(images, "fast")[:, :NUM_CLASSES], float32.predict(images, "fast")[:, :NUM_CLASSES]
    assert 0 < np.abs(reduced - full).max() < 0.1
    np.testing.assert_allclose(reduced.sum(axis=1), 1.0, atol=1e-5)

    ir_path(version, "fast", "int8").unlink()
    with pytest.raises(ModelLoadError, match=r"fast\.int8\.xml") as error:
        load_model(version)
    assert error.value.reason == "unloadable"


def test_an_int8_level_gets_its_own_temperature(trained_model_dir: Path, tmp_path: Path) -> None:
    """The factor divides the softmax's input: probabilities become softmax(log p / factor). Fitted on a copy
    whose logits were made twice as sharp, it comes out twice the factor fitted on the original."""
    version = copy_version(trained_model_dir, tmp_path)
    images, labels = shape_arrays(per_class=8, seed=5)

    def probabilities(model: openvino.Model) -> np.ndarray:
        compiled = openvino_core().compile_model(model, "CPU")
        return np.asarray(compiled.create_infer_request().infer([images])[compiled.output(OUTPUT_NAME)])

    def read() -> openvino.Model:
        return openvino_core().read_model(str(ir_path(version, "fast")))

    original = probabilities(read())
    np.testing.assert_allclose(probabilities(with_temperature_factor(read(), 2.0)),
                               softmax(np.log(original), 2.0), atol=1e-5)
    fitted = fit_temperature_factor(read(), images, labels, threads=1)
    sharpened = fit_temperature_factor(with_temperature_factor(read(), 0.5), images, labels, threads=1)
    assert 0.05 < fitted < 20 and sharpened == pytest.approx(2 * fitted, rel=1e-3)


def test_measuring_a_level_leaves_the_images_it_was_measured_on_as_they_were(trained_model_dir: Path) -> None:
    """The export judges each precision on the validation images, then times it on other images: the timing
    must not write into the validation images (OpenVINO did, into the last chunk a shared call had read, when
    the timing's calls did not share their inputs too), or every later precision is judged on damaged ones."""
    version = version_dirs(trained_model_dir)[-1][1]
    images = parity_images()[:44]  # one chunk of 44, a multiple of four: read in place, not padded into a copy
    unchanged = images.copy()
    compiled = openvino_core().compile_model(openvino_core().read_model(str(ir_path(version, "fast"))), "CPU",
                                             compile_config(FLOAT32, 1))
    probabilities, _ = predict(compiled, images, batch_size=44)
    assert images_per_second(compiled, np.ascontiguousarray(images[::-1]), seconds=0.05) > 0
    np.testing.assert_array_equal(images, unchanged)
    np.testing.assert_array_equal(predict(compiled, images, batch_size=44)[0], probabilities)


def test_a_model_without_levels_serves_its_serving_default(tmp_path: Path) -> None:
    version = write_model(tmp_path / "tiny" / "1", seed=4)
    model = load_model(version)
    images = parity_images()
    assert model.level_names == ("accurate",)
    assert np.abs(model.predict(images) - tensorflow_probabilities(version, "serving_default", images)).max() <= PARITY


def test_batches_run_in_padded_chunks_that_leave_each_row_its_own(trained_model_dir: Path) -> None:
    """A level sees few input shapes (memory: core.openvino_runtime), and neither the chunking nor the blank
    images padding a chunk change any image's row: a batch gives what each image gives alone."""
    assert [chunk_size(level_named(level).views) for level in LEVEL_NAMES] == [32, 16, 4] == [
        MAX_VIEWS_PER_CALL, MAX_VIEWS_PER_CALL // 2, 4]
    assert [padded_size(count) for count in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 20, 32]
    model = load_model(trained_model_dir, level_settings=FLOAT32_LEVELS)
    images = parity_images()  # 47: chunks of 32 + 15 (padded to 16) at fast, 11 x 4 + 3 (padded to 4) at accurate
    for level in LEVEL_NAMES:
        alone = np.concatenate([model.predict(image[np.newaxis], level) for image in images])
        np.testing.assert_allclose(model.predict(images, level), alone, rtol=0, atol=1e-6, err_msg=level)


@pytest.mark.parametrize("threads", [1, 2])
def test_two_batches_at_once_each_get_their_own_answers(trained_model_dir: Path, threads: int) -> None:
    """BATCH_CONCURRENCY=2: two threads call the same level at once, each on its own infer request of the one
    compiled model, whether it runs on one inference thread or two."""
    model = load_model(trained_model_dir, options=RuntimeOptions(threads=threads, concurrency=2))
    assert f"{threads} threads, 2 batches at once" in model.runtime.describe()
    images = parity_images()
    halves = (images[:20], images[20:])
    expected = [model.predict(half, "balanced") for half in halves]  # one at a time: each alone
    wrong: list[int] = []

    def ask(index: int) -> None:
        for _ in range(30):
            if not np.allclose(model.predict(halves[index], "balanced"), expected[index], rtol=0, atol=1e-6):
                wrong.append(index)

    threads = [threading.Thread(target=ask, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


def test_an_ir_off_the_contract_is_refused_with_the_fix(trained_model_dir: Path, tmp_path: Path) -> None:
    """An IR off the contract (here: the fast level's graph answering "scores", not probabilities) fails the load,
    naming the level and its file."""
    version = copy_version(trained_model_dir, tmp_path)
    forget_ir_sha256(version)  # as exported before 7 December 2026: else refused as not the export's own file
    served = json.loads((version / METADATA_FILE).read_text())["openvino"]["ir"]["fast"]  # float32 or int8
    xml = version / served
    xml.write_text(xml.read_text().replace('names="probabilities"', 'names="scores"'))
    with pytest.raises(ModelLoadError, match=rf"level fast \({served}\) does not match the contract") as error:
        load_model(version)
    assert error.value.reason == "contract" and "Re-export" in str(error.value)


def test_a_truncated_ir_is_unloadable_not_a_crash(trained_model_dir: Path, tmp_path: Path) -> None:
    version = copy_version(trained_model_dir, tmp_path)
    forget_ir_sha256(version)  # OpenVINO's own check (the recorded sha256: test_loading_faults)
    served = json.loads((version / METADATA_FILE).read_text())["openvino"]["ir"]["accurate"]  # float32 or int8
    weights = (version / served).with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="is not a loadable model") as error:
        load_model(version)
    assert error.value.reason == "unloadable"


# Run in a fresh interpreter that cannot import TensorFlow or Keras at all (as in the serving install): the real
# app starts, loads the model, warms it up, answers every level, and TensorFlow is still not in sys.modules.
NO_TENSORFLOW = r"""
import importlib.abc, sys, time

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "tf_keras"}:
            raise ImportError(f"{name} imported while serving")
        return None

sys.meta_path.insert(0, Refuse())
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings

app = create_app(Settings(model_dir=sys.argv[1], inference_threads=1, decode_threads=1))
with TestClient(app) as client:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)
    png = open(sys.argv[2], "rb").read()
    for level in ("fast", "balanced", "accurate"):
        answer = client.post(f"/predict?level={level}", files={"file": ("a.png", png, "image/png")})
        assert answer.status_code == 200 and answer.json()["model"]["level"] == level, answer.text
print(sorted(name for name in sys.modules if name.split(".")[0] in {"tensorflow", "keras", "tf_keras"}))
"""


def test_serving_imports_no_tensorflow(trained_model_dir: Path, shapes_dataset: Path) -> None:
    png = next((shapes_dataset / "test").rglob("*.png"))
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(trained_model_dir), str(png)], cwd=REPO,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_check_answers_runs_every_level_of_the_loaded_model(trained_model_dir: Path) -> None:
    model = load_model(trained_model_dir, options=RuntimeOptions(threads=1, concurrency=1))
    check_answers(model, [1, 3])


TELEMETRY = """
import sys
if sys.argv[1]:
    __import__(sys.argv[1])
import openvino.tools.ovc.convert_impl as converter
from nncf.telemetry import wrapper
print(converter.tm.__name__, type(wrapper.telemetry).__name__)
"""


def telemetry_after(module: str) -> str:
    """Which telemetry OpenVINO's converter and NNCF load in a fresh process that first imports ``module``."""
    result = subprocess.run([sys.executable, "-c", TELEMETRY, module], cwd=REPO, capture_output=True, text=True,
                            timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("\n")[-2]


@pytest.mark.parametrize("first", ["core.openvino_runtime", "app.main", "training.openvino_export"])
def test_openvino_and_nncf_send_no_telemetry_once_the_project_is_imported(first: str) -> None:
    # Their own no-op stand-ins (NNCF's is a MagicMock), as where openvino_telemetry is not installed.
    assert telemetry_after(first) == "openvino.tools.ovc.telemetry_stub MagicMock"


def test_on_their_own_openvino_and_nncf_load_their_telemetry() -> None:
    # What the project turns off: installed with OpenVINO, it sends unless the user has opted out.
    assert telemetry_after("") == "openvino_telemetry NNCFTelemetry"
