"""Distillation: a student learns from a served model's probabilities as well as from the labels.

The teacher is a version folder of the export contract (``models/cifar10/N``), or several, averaged.
Its probabilities at one accuracy level (``accurate``: six views averaged, what no single forward pass
of the student gives) are computed once per training image and kept with the decoded data (in the run folder without a
cache), so runs on the same split share them and a student epoch costs no teacher pass at all. They are
the teacher's answer for the whole image and its views, which the random flip and shift of training
approximate; cutout is the one augmentation the teacher never saw.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from core.contract import BFLOAT16, METADATA_FILE, NUM_CLASSES, SAVED_MODEL_FILE, level_signature
from core.cpus import cpu_flags, has_bfloat16
from training.errors import TrainingError
from training.signatures import predict_saved_model

TEACHER_BATCH_SIZE = 256


class TeacherError(TrainingError):
    """The teacher cannot be used; the message names the folder and the fix."""


@dataclass(frozen=True)
class Distillation:
    weight: float  # the teacher's share of each target; the label has the rest
    temperature: float  # teacher probabilities p become p ** (1 / temperature), renormalised: > 1 softens
    teacher_level: str  # the teacher's accuracy level whose probabilities are learnt


def soft_targets(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``probabilities`` sharpened (temperature < 1) or softened (> 1), each row summing to 1."""
    logits = np.log(np.clip(probabilities.astype("float64"), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype("float32")


def mixed_targets(one_hot: tf.Tensor, teacher: tf.Tensor, weight: float) -> tf.Tensor:
    return (1.0 - weight) * one_hot + weight * teacher


def ensemble_probabilities(teacher_dirs: tuple[Path, ...], images: np.ndarray, level: str,
                           cache_dir: Path) -> np.ndarray:
    """The teachers' probabilities at ``level`` averaged per image: an ensemble of differently trained models
    is a stronger teacher than any one of them (docs/training.md). Each teacher's answers are cached apart,
    so a run with a new ensemble asks only the teachers not asked before."""
    return np.mean([teacher_probabilities(teacher_dir, images, level, cache_dir) for teacher_dir in teacher_dirs],
                   axis=0, dtype="float32")


def teacher_probabilities(teacher_dir: Path, images: np.ndarray, level: str, cache_dir: Path) -> np.ndarray:
    """The teacher's probabilities at ``level`` for every image, from ``cache_dir`` when computed before
    for the same teacher and images."""
    metadata = _teacher_metadata(teacher_dir, level)
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode() + level.encode() + images.tobytes())
    # The graph and the weights too: two teachers can share a metadata.json (a copy re-trained with the same
    # options, or written by hand) and must not share their answers.
    for path in sorted([teacher_dir / SAVED_MODEL_FILE, *(teacher_dir / "variables").glob("*")]):
        key.update(path.read_bytes())
    cache_file = cache_dir / f"teacher-{level}-{key.hexdigest()[:16]}.npy"
    if cache_file.is_file():
        return np.load(cache_file)
    saved = tf.saved_model.load(str(teacher_dir))  # held: its signatures keep only weak references to it
    bfloat16 = level_signature(level, BFLOAT16)
    name = bfloat16 if has_bfloat16(cpu_flags()) and bfloat16 in saved.signatures else level
    signature = saved.signatures[name]
    print(f"teacher: {teacher_dir} at level {level} ({name}) over {len(images)} images", flush=True)
    probabilities = predict_saved_model(signature, images, TEACHER_BATCH_SIZE).astype("float32")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, probabilities)
    return probabilities


def check_teachers(teachers: tuple[Path, ...], level: str) -> None:
    """Refuses a teacher that is not a model version offering ``level``, before any data is loaded."""
    for teacher_dir in teachers:
        _teacher_metadata(teacher_dir, level)


def _teacher_metadata(teacher_dir: Path, level: str) -> dict:
    if not (teacher_dir / SAVED_MODEL_FILE).is_file():
        raise TeacherError(f"--teacher {teacher_dir}: no {SAVED_MODEL_FILE} there. Pass a model version folder, "
                           "e.g. models/cifar10/4.")
    try:
        metadata = json.loads((teacher_dir / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TeacherError(f"--teacher {teacher_dir}: {METADATA_FILE} is unreadable ({error}). Pass a model "
                           "version folder written by `python -m training`.") from None
    levels = metadata.get("levels") or {}
    if level not in levels:
        raise TeacherError(f"--teacher {teacher_dir} has no level {level!r} (it offers {', '.join(levels) or 'none'})."
                           " Pass a model exported with accuracy levels.")
    if len(metadata.get("class_names", [])) != NUM_CLASSES:
        raise TeacherError(f"--teacher {teacher_dir}: {METADATA_FILE} does not list {NUM_CLASSES} classes.")
    return metadata
