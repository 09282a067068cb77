"""A version folder damaged the way a copy or a hand edit damages it: each is a ModelLoadError that names the
file and the fix (so start-up falls back to an older version and the model watcher skips it), never a traceback,
and never a model taken into service that answers wrong."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.metrics import Metrics
from app.model_watcher import ModelWatcher
from core.contract import METADATA_FILE, version_dirs
from core.openvino_runtime import first_line
from core.versions import ModelLoadError, check_answers, load_model, load_version
from tests.model_versions import forget_ir_sha256


def copy_of(trained_model_dir: Path, root: Path, version: int) -> Path:
    """The trained test model as ``root/<version>``, to damage."""
    target = root / str(version)
    shutil.copytree(version_dirs(trained_model_dir)[-1][1], target)
    return target


def test_an_ir_other_than_the_exports_is_refused_before_it_is_read(trained_model_dir: Path, tmp_path: Path) -> None:
    """Another graph's IR in a level's place (here: balanced's two-view float32 IR copied over fast's served one)
    loaded, and answered with scores the version's thresholds and figures were not measured on. The sha256s the
    export recorded refuse it; a version exported before they were recorded serves it."""
    version = copy_of(trained_model_dir, tmp_path, 2)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    before = load_version(version, 2).predict(images, "fast")
    served = version / json.loads((version / METADATA_FILE).read_text())["openvino"]["ir"]["fast"]
    for suffix in (".xml", ".bin"):
        shutil.copyfile((version / "openvino" / "balanced").with_suffix(suffix), served.with_suffix(suffix))
    with pytest.raises(ModelLoadError) as raised:
        load_version(version, 2)
    message = str(raised.value)
    assert f"{served} is not the file metadata.json records for level fast" in message, message
    assert "another export's IR" in message and "Copy the version again, whole" in message
    assert raised.value.reason == "unloadable"
    forget_ir_sha256(version)
    assert not np.allclose(load_version(version, 2).predict(images, "fast"), before)


def test_an_ir_cut_short_is_refused_by_its_recorded_sha256(trained_model_dir: Path, tmp_path: Path) -> None:
    version = copy_of(trained_model_dir, tmp_path, 2)
    served = version / json.loads((version / METADATA_FILE).read_text())["openvino"]["ir"]["accurate"]
    weights = served.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(weights))} is not the file metadata.json records "
                       r"for level accurate \(sha256 [0-9a-f]{64}\): a copy cut short"):
        load_version(version, 2)


def test_a_truncated_ir_names_its_file_and_openvinos_reason(trained_model_dir: Path, tmp_path: Path) -> None:
    version = copy_of(trained_model_dir, tmp_path, 2)
    forget_ir_sha256(version)  # else the recorded sha256 refuses it before OpenVINO reads it (above)
    for weights in (version / "openvino").glob("*.bin"):
        weights.write_bytes(weights.read_bytes()[:1000])  # as a copy cut short leaves it
    with pytest.raises(ModelLoadError) as raised:
        load_version(version, 2)
    message = str(raised.value)
    # OpenVINO's own first line only said where in its sources it failed ("Exception from src/...").
    assert "(or its .bin) cannot be read: Incorrect weights in bin file" in message, message
    assert "Exception from src/" not in message and "copy it again" in message


def test_first_line_skips_the_lines_that_only_say_where_openvino_failed() -> None:
    error = RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\nException from src/frontends/ir/x.cpp:1:"
                         "\nCheck 'a' failed at src/core/y.cpp:5:\nIncorrect weights in bin file!\n")
    assert first_line(error) == "Incorrect weights in bin file!"
    assert first_line(RuntimeError("Exception from src/only.cpp:1:")) == "Exception from src/only.cpp:1:"
    assert first_line(ValueError()) == "ValueError"


def test_a_nan_ood_score_is_refused_as_bad_output(trained_model_dir: Path, tmp_path: Path) -> None:
    """The OOD column was not checked: such a version was swapped in, and every answer said in_distribution
    false, with /readyz 200."""
    version = copy_of(trained_model_dir, tmp_path, 2)
    forget_ir_sha256(version)
    for graph in (version / "openvino").glob("*.xml"):  # the OOD head's sigmoid: acos is NaN past 1
        text = graph.read_text()
        assert text.count('type="Sigmoid"') == 1, graph
        graph.write_text(re.sub(r'type="Sigmoid" version="opset\d+"', 'type="Acos" version="opset1"', text))
    model = load_version(version, 2)
    rows = model.predict(np.full((4, 32, 32, 3), 128, np.uint8))
    assert rows.shape[1] == 11 and np.isnan(rows[:, 10]).any(), rows[:, 10]  # the damage took
    with pytest.raises(ModelLoadError, match="out-of-distribution score that is not a number") as raised:
        check_answers(model, [4])
    assert raised.value.reason == "bad_output"


def test_a_file_that_cannot_be_read_is_one_line_and_start_up_falls_back(trained_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    good = copy_of(trained_model_dir, tmp_path, 1)
    broken = copy_of(trained_model_dir, tmp_path, 2)
    (broken / METADATA_FILE).unlink()
    (broken / METADATA_FILE).mkdir()  # any OSError but a missing file: was "not valid JSON", or a traceback
    with pytest.raises(ModelLoadError) as raised:
        load_version(broken, 2)
    assert str(raised.value) == (f"{broken / METADATA_FILE} cannot be read (Is a directory). Copy the version again "
                                 "(into a temporary name, then rename it into place), or re-export it.")
    watcher = ModelWatcher(tmp_path, poll_s=0, warm_up_sizes=[1], metrics=Metrics())
    assert watcher.load_first().current.path == good


def test_model_dir_naming_a_version_with_model_version_says_so(trained_model_dir: Path, tmp_path: Path) -> None:
    """It said '.../11/11 does not exist (versions there: none)', which hides that MODEL_DIR went one too deep."""
    version = copy_of(trained_model_dir, tmp_path, 11)
    with pytest.raises(ModelLoadError) as raised:
        load_model(version, 11)
    assert str(raised.value) == (f"MODEL_VERSION=11, but MODEL_DIR {version} is itself a version folder. Set MODEL_DIR "
                                 f"to the folder that holds the versions ({tmp_path}), or unset MODEL_VERSION.")
    assert raised.value.reason == "missing"
