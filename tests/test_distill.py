"""Distillation and batch augmentation: a student learns what its teacher says, and each augmentation
does to a batch what it claims."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from core.contract import CLASS_NAMES, IMAGE_SIZE, METADATA_FILE
from tests.conftest import TEST_THREADS
from tests.model_versions import metadata
from training.augment import Augmentation, augment_batch
from training.distill import TeacherError, ensemble_probabilities, soft_targets, teacher_probabilities
from training.train import TrainConfig, train

TEACHER_CLASS = CLASS_NAMES.index("horse")


class OneClassTeacher(tf.Module):
    """Says ``class_index`` to every image, at every level it offers."""

    def __init__(self, class_index: int) -> None:
        super().__init__()
        self.answer = tf.constant(np.eye(len(CLASS_NAMES), dtype="float32")[[class_index]] * 0.99 + 0.001)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": tf.tile(self.answer, [tf.shape(images)[0], 1])}


def one_class_teacher(directory: Path, class_name: str) -> Path:
    module = OneClassTeacher(CLASS_NAMES.index(class_name))
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve, "accurate": module.serve})
    (directory / METADATA_FILE).write_text(json.dumps(metadata(0.1, levels={"accurate": {"views": 6}})))
    return directory


@pytest.fixture(scope="module")
def horse_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_class_teacher(tmp_path_factory.mktemp("teacher") / "1", "horse")


@pytest.fixture(scope="module")
def cat_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_class_teacher(tmp_path_factory.mktemp("teacher") / "2", "cat")


def run_config(data: Path, run_dir: Path, **changes: object) -> TrainConfig:
    config = TrainConfig(recipe="tutorial-rgb", data=data, out=None, epochs=4, batch_size=32, seed=0, val_size=None,
                         threads=TEST_THREADS, cache_dir=None, run_dir=run_dir, resume=False, verbose=0,
                         timing_seconds=0.05)
    return dataclasses.replace(config, **changes)


def test_a_student_learns_its_teachers_answers(shapes_dataset: Path, trained_model_dir: Path,
                                               horse_teacher: Path, tmp_path: Path) -> None:
    # The teacher's word alone (weight 1): the student says "horse" to the shapes the same recipe learns
    # without a teacher (trained_model_dir).
    export = train(run_config(shapes_dataset, tmp_path / "run", teachers=(horse_teacher,),
                              recipe_changes={"distill_weight": 1.0, "distill_temperature": 1.0,
                                              "label_smoothing": 0.3}))
    student = json.loads((export / METADATA_FILE).read_text())
    alone = json.loads((trained_model_dir / "1" / METADATA_FILE).read_text())
    assert alone["val_accuracy"] >= 0.5
    assert student["val_accuracy"] <= 0.2  # one class in ten is right
    assert student["distillation"] == {"teachers": [horse_teacher.as_posix()], "level": "accurate", "weight": 1.0,
                                       "temperature": 1.0}
    assert student["label_smoothing"] == 0.3 and alone["label_smoothing"] == 0.0  # tutorial-rgb's own
    assert list((tmp_path / "run").glob("teacher-accurate-*.npy")), "the teacher's answers are kept for a rerun"


def test_a_run_keeps_its_teachers_answers_with_the_data_cache(shapes_dataset: Path, horse_teacher: Path,
                                                              tmp_path: Path) -> None:
    train(run_config(shapes_dataset, tmp_path / "run", teachers=(horse_teacher,), epochs=1,
                     cache_dir=tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("teacher-accurate-*.npy"))) == 1, "where the next run will look"
    assert not list((tmp_path / "run").glob("teacher-*.npy"))


def test_the_teacher_is_asked_once_for_the_same_images(horse_teacher: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    first = teacher_probabilities(horse_teacher, images, "accurate", tmp_path)
    again = teacher_probabilities(horse_teacher, images, "accurate", tmp_path)
    other = teacher_probabilities(horse_teacher, images[:4], "accurate", tmp_path)
    assert capsys.readouterr().out.count(f"teacher: {horse_teacher} at level accurate") == 2, "others are asked"
    assert np.array_equal(first, again) and first.shape == (5, len(CLASS_NAMES)) and len(other) == 4
    assert first.argmax(axis=1).tolist() == [TEACHER_CLASS] * 5


def test_an_ensemble_teaches_its_average_asking_each_teacher_once(horse_teacher: Path, cat_teacher: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    horse = teacher_probabilities(horse_teacher, images, "accurate", tmp_path)
    both = ensemble_probabilities((horse_teacher, cat_teacher), images, "accurate", tmp_path)
    assert np.allclose(both, (horse + teacher_probabilities(cat_teacher, images, "accurate", tmp_path)) / 2)
    # Each says its class at 0.991 and the other at 0.001.
    assert np.allclose(both[:, [TEACHER_CLASS, CLASS_NAMES.index("cat")]], 0.496) and np.allclose(both.sum(1), 1)
    asked = capsys.readouterr().out
    assert asked.count(f"teacher: {horse_teacher} ") == 1 and asked.count(f"teacher: {cat_teacher} ") == 1


def test_a_teacher_without_the_level_is_refused_by_name(shapes_dataset: Path, tmp_path: Path) -> None:
    folder = tmp_path / "3"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / METADATA_FILE).write_text(json.dumps(metadata(0.5)))
    with pytest.raises(TeacherError, match=r"--teacher .*3 has no level 'accurate'"):
        train(run_config(shapes_dataset, tmp_path / "run", teachers=(folder,)))
    assert not (tmp_path / "run").exists()  # refused before the data loads: no run folder left to clear away


def test_a_distilling_change_without_a_teacher_is_refused(shapes_dataset: Path, tmp_path: Path) -> None:
    # run_config's recipe (tutorial-rgb) does not distill by itself: the message names the option that needs one.
    with pytest.raises(TeacherError, match=r"^--distill-weight set how a student learns from a teacher: pass"):
        train(run_config(shapes_dataset, tmp_path / "run", recipe_changes={"distill_weight": 0.5}))


def test_soft_targets_soften_and_sharpen_without_moving_the_answer() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1] + [0.0] * 7], dtype="float32")
    assert np.allclose(soft_targets(probabilities, 1.0), probabilities, atol=1e-6)
    softer, sharper = soft_targets(probabilities, 2.0), soft_targets(probabilities, 0.5)
    assert softer[0, 0] < 0.7 < sharper[0, 0]
    assert softer.argmax() == sharper.argmax() == 0
    assert np.allclose(softer.sum(axis=1), 1.0) and np.allclose(sharper.sum(axis=1), 1.0)


def asymmetric_images(count: int) -> np.ndarray:
    """Images whose left half differs from their right, each with its own brightness."""
    images = np.zeros((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    images[:, :, : IMAGE_SIZE // 2] = (np.arange(count) + 1)[:, None, None, None]
    return images


def augment(images: np.ndarray, augmentation: Augmentation, epoch: int, first_flips: np.ndarray) -> np.ndarray:
    return augment_batch(tf.constant(images), tf.range(len(images), dtype=tf.int64), augmentation,
                         tf.constant(epoch, tf.int64), tf.constant(first_flips), tf.constant([9, 9, 9], tf.uint8)
                         ).numpy()


def mirrored(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, -1, 0] != 0  # the left half's colour now on the right


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_epochs() -> None:
    images = asymmetric_images(64)
    first_flips = np.random.default_rng(0).random(64) < 0.5
    alternating = Augmentation(flip="alternating")
    even, odd = (mirrored(augment(images, alternating, epoch, first_flips)) for epoch in (4, 5))
    assert np.array_equal(even, first_flips)
    assert np.array_equal(odd, ~first_flips)


def test_random_flip_mirrors_about_half() -> None:
    flips = mirrored(augment(asymmetric_images(1000), Augmentation(flip="random"), 0, np.zeros(1000, bool)))
    assert 400 < flips.sum() < 600


def test_translate_crops_the_reflect_padded_image_within_its_margin() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (32, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    shifted = augment(images, Augmentation(translate_pixels=2), 0, np.zeros(32, bool))
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    offsets = set()
    for index in range(len(images)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[index, dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE], shifted[index])]
        assert found, f"image {index} is no crop of its padded self"
        offsets.update(found)
    assert len(offsets) > 5  # the shifts vary between images


def test_cutout_fills_one_square_of_at_most_its_side() -> None:
    images = np.zeros((200, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    cut = augment(images, Augmentation(cutout_pixels=8), 0, np.zeros(200, bool))[..., 0] == 9
    areas = cut.sum(axis=(1, 2))
    assert areas.max() == 64 and areas.min() > 0
    for mask in cut:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert mask.sum() == len(rows) * len(cols)  # one rectangle
