"""The dataset loaders, the cache, the stratified split and their error paths."""

import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.contract import CLASS_NAMES
from tests.synthetic import write_image_folder
from training.data import (
    DatasetError,
    Split,
    default_val_size,
    load_image_folder,
    load_trained_on,
    model_split,
    stratified_split,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"), train_per_class=6, test_per_class=2, seed=3)


def make_tar(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        archive.add(folder / "train", arcname="train")
        archive.add(folder / "test", arcname="test")
    return target


def make_zip(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(folder).as_posix())
    return target


def test_directory_tar_and_zip_give_the_same_arrays(folder: Path, tmp_path: Path) -> None:
    from_dir = load_image_folder(folder, cache_dir=None)
    from_tar = load_image_folder(make_tar(folder, tmp_path / "data.tar.gz"), cache_dir=None)
    from_zip = load_image_folder(make_zip(folder, tmp_path / "data.zip", prefix="cifar/"), cache_dir=None)
    assert from_dir.class_names == CLASS_NAMES
    assert from_dir.train.images.shape == (60, 32, 32, 3) and from_dir.train.images.dtype == np.uint8
    assert from_dir.test is not None and from_dir.test.images.shape == (20, 32, 32, 3)
    for other in (from_tar, from_zip):
        assert other.class_names == from_dir.class_names
        np.testing.assert_array_equal(other.train.images, from_dir.train.images)
        np.testing.assert_array_equal(other.train.labels, from_dir.train.labels)
        np.testing.assert_array_equal(other.test.images, from_dir.test.images)
    assert np.bincount(from_dir.train.labels).tolist() == [6] * 10


def test_the_data_a_model_was_trained_on_must_have_its_recorded_sha256(folder: Path, tmp_path: Path) -> None:
    """reexport and report re-measure a version on the validation split of these images: other images would be
    another split, and figures vouching for it. The fix names what kind of --data was given."""
    archive = make_tar(folder, tmp_path / "data.tar.gz")
    recorded = tmp_path / "metadata.json"
    for data, fix in ((archive, "pass that archive with --data."),
                      (folder, "pass that folder with --data, as it was")):
        dataset = load_trained_on(data, {"data": {"source": str(data)}}, recorded, None)  # none recorded: taken
        metadata = {"data": {"source": str(data), "sha256": dataset.sha256}}
        assert load_trained_on(data, metadata, recorded, None).sha256 == dataset.sha256
        wrong = {"data": {"source": str(data), "sha256": "0" * 64}}
        with pytest.raises(DatasetError) as raised:
            load_trained_on(data, wrong, recorded, None)
        assert str(raised.value).startswith(f"{data}: sha256 {dataset.sha256} is not the {'0' * 64} that {recorded} "
                                            "records for the data the model was trained on; "), raised.value
        assert fix in str(raised.value)


def test_other_class_names_are_sorted(tmp_path: Path) -> None:
    for name in ("zebra", "apple", "mango"):
        (tmp_path / "train" / name).mkdir(parents=True)
        shutil.copy(Path(__file__).parent / "synthetic.py", tmp_path / "x")  # not an image, outside train/
    from PIL import Image

    for name in ("zebra", "apple", "mango"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "train" / name / "0.png")
    dataset = load_image_folder(tmp_path, cache_dir=None)
    assert dataset.class_names == ("apple", "mango", "zebra")
    assert dataset.test is None


def test_cache_is_written_once_and_read_back(folder: Path, tmp_path: Path) -> None:
    archive = make_tar(folder, tmp_path / "data.tar.gz")
    cache = tmp_path / "cache"
    first = load_image_folder(archive, cache_dir=cache)
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1
    # Prove the second load comes from the cache: alter the cached pixels and see them come back.
    with np.load(cached[0]) as saved:
        arrays = dict(saved)
    arrays["train_images"] = np.full_like(arrays["train_images"], 7)
    np.savez(cached[0], **arrays)
    second = load_image_folder(archive, cache_dir=cache)
    assert (second.train.images == 7).all()
    assert second.sha256 == first.sha256 and len(second.sha256) == 64


def test_stratified_split_is_exact_proportional_and_seeded() -> None:
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50])
    split = Split(np.arange(len(labels))[:, None], labels)
    train, val = stratified_split(split, 150, seed=1)
    assert len(val.labels) == 150 and len(train.labels) == len(labels) - 150
    assert np.bincount(val.labels).tolist() == [20] * 5 + [10] * 5
    assert not set(train.images[:, 0]) & set(val.images[:, 0])
    again, _ = stratified_split(split, 150, seed=1)
    other, _ = stratified_split(split, 150, seed=2)
    np.testing.assert_array_equal(again.images, train.images)
    assert not np.array_equal(other.images, train.images)


def test_a_model_split_is_rebuilt_with_its_split_seed_else_its_seed() -> None:
    labels = np.repeat(np.arange(10), 30)
    split = Split(np.arange(len(labels))[:, None], labels)
    _, seed_1 = stratified_split(split, 50, seed=1)
    _, seed_0 = stratified_split(split, 50, seed=0)
    # Exported before --split-seed: the run's seed made the split.
    np.testing.assert_array_equal(model_split(split, {"val_images": 50, "seed": 1})[1].images, seed_1.images)
    # Another initialisation on seed 0's validation images.
    np.testing.assert_array_equal(model_split(split, {"val_images": 50, "seed": 1, "split_seed": 0})[1].images,
                                  seed_0.images)


def test_default_val_size() -> None:
    assert default_val_size(50_000) == 5000
    assert default_val_size(600) == 60


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", "no such file or directory"),
        ("no-train", "no train/<class>/<image> files"),
        ("not-an-image", "is not an image in a format the service takes"),
        ("empty-class", "has no images"),
        ("truncated-archive", "unreadable archive"),
        ("wrong-suffix", "not a directory or a .tar.gz"),
    ],
)
def test_bad_datasets_name_the_file_and_the_fix(tmp_path: Path, layout: str, expected: str) -> None:
    from PIL import Image

    target = tmp_path / "data"
    if layout == "no-train":
        (target / "images" / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(target / "images" / "cat" / "0.png")
    elif layout == "not-an-image":
        (target / "train" / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(target / "train" / "cat" / "0.png")
        (target / "train" / "cat" / "notes.jpg").write_text("not a picture")
    elif layout == "empty-class":
        write_image_folder(target, train_per_class=1)
        (target / "train" / "extra").mkdir()
    elif layout == "truncated-archive":
        archive = make_tar(write_image_folder(tmp_path / "src", 1, 1), tmp_path / "full.tar.gz")
        target = tmp_path / "broken.tar.gz"
        target.write_bytes(archive.read_bytes()[:300])
    elif layout == "wrong-suffix":
        target = tmp_path / "data.rar"
        target.write_bytes(b"Rar!")
    with pytest.raises(DatasetError) as raised:
        load_image_folder(target, cache_dir=None)
    message = str(raised.value)
    assert expected in message
    assert str(target) in message or "extra" in message
    if layout == "not-an-image":
        assert "notes.jpg" in message and "Remove or replace" in message
