"""bench/version_split.py: benchmarks measure model versions on the validation images each one held out, and refuse
to compare versions that held out different ones."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.version_split import VersionSplitError, shared_split, version_folder, version_metadata
from tests.synthetic import write_image_folder
from training.data import load_image_folder, stratified_split

REPO = Path(__file__).resolve().parent.parent
VAL_IMAGES = 20


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), train_per_class=8, seed=5)


def model_folder(root: Path, name: str, metadata: object) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_versions_with_one_split_seed_share_its_images_whatever_their_seeds(data: Path, tmp_path: Path) -> None:
    seed_0 = model_folder(tmp_path, "seed-0", {"val_images": VAL_IMAGES, "seed": 0})
    seed_1 = model_folder(tmp_path, "seed-1", {"val_images": VAL_IMAGES, "seed": 1, "split_seed": 0})
    train, val = shared_split(data, [seed_0, seed_1], cache_dir=None)
    expected_train, expected_val = stratified_split(load_image_folder(data, None).train, VAL_IMAGES, seed=0)
    np.testing.assert_array_equal(val.images, expected_val.images)
    np.testing.assert_array_equal(val.labels, expected_val.labels)
    np.testing.assert_array_equal(train.images, expected_train.images)
    # One version alone: its own split seed, not seed 0 by default.
    _, own = shared_split(data, [model_folder(tmp_path, "split-2", {"val_images": VAL_IMAGES, "seed": 2})], None)
    assert not np.array_equal(own.images, val.images)


@pytest.mark.parametrize("other", [{"val_images": VAL_IMAGES, "seed": 0, "split_seed": 1},
                                   {"val_images": VAL_IMAGES + 10, "seed": 0}], ids=["split-seed", "val-size"])
def test_versions_that_held_out_other_images_are_refused_naming_the_folder(data: Path, tmp_path: Path,
                                                                            other: dict) -> None:
    first = model_folder(tmp_path, "first", {"val_images": VAL_IMAGES, "seed": 0})
    second = model_folder(tmp_path, "second", other)
    with pytest.raises(VersionSplitError, match=re.escape(f"{second} held out other validation images than {first}")):
        shared_split(data, [first, second], None)


@pytest.mark.parametrize(("content", "expected"), [
    (None, "No such file"), ("{not json", "Expecting property name"), ('["a list"]', "does not record"),
    ('{"seed": 0}', "does not record its validation split")])
def test_a_folder_without_a_versions_metadata_is_one_line_naming_the_file(tmp_path: Path, content: str | None,
                                                                          expected: str) -> None:
    if content is not None:
        (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(VersionSplitError, match=expected) as refused:
        version_metadata(tmp_path)
    assert str(tmp_path / "metadata.json") in str(refused.value)
    assert "python -m training" in str(refused.value) and "\n" not in str(refused.value)


def test_data_that_does_not_load_is_one_line_naming_it(tmp_path: Path) -> None:
    version = model_folder(tmp_path, "version", {"val_images": VAL_IMAGES, "seed": 0})
    with pytest.raises(VersionSplitError, match=r"missing\.tar\.gz: no such file or directory") as refused:
        shared_split(tmp_path / "missing.tar.gz", [version], None)
    assert "the models were trained on" in str(refused.value) and "download" not in str(refused.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VersionSplitError, match="empty") as refused:
        shared_split(tmp_path / "empty", [version], None)
    assert "\n" not in str(refused.value)


def test_the_ensemble_benchmark_refuses_teachers_with_other_splits_before_loading_a_model(data: Path,
                                                                                           tmp_path: Path) -> None:
    # The folders hold no SavedModel: the refusal has to come from the split check, before any model loads.
    first = model_folder(tmp_path, "first", {"val_images": VAL_IMAGES, "seed": 0})
    second = model_folder(tmp_path, "second", {"val_images": VAL_IMAGES, "seed": 0, "split_seed": 3})
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ensemble_teacher.py"), "--data", str(data),
         "--teacher", str(first), "--teacher", str(second)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr
    assert f"{second} held out other validation images than {first}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_folder_means_its_highest_version_and_an_export_itself(tmp_path: Path) -> None:
    for version in (2, 10, 9):  # numerically highest, not by name
        (tmp_path / "cifar10" / str(version)).mkdir(parents=True)
        (tmp_path / "cifar10" / str(version) / "saved_model.pb").write_bytes(b"")
    assert version_folder(tmp_path / "cifar10") == tmp_path / "cifar10" / "10"
    assert version_folder(tmp_path / "cifar10" / "9") == tmp_path / "cifar10" / "9"
    export = tmp_path / "runs" / "distill" / "model"  # a run's export: a SavedModel in a folder not named by number
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    assert version_folder(export) == export
    with pytest.raises(VersionSplitError, match=r"holds neither saved_model\.pb nor version folders"):
        version_folder(tmp_path / "runs")
