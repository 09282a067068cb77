"""The training run, top to bottom: data, model, fit, calibrate, export, report."""

import datetime as dt
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from app.contract import CLASS_NAMES, IMAGE_SIZE, METADATA_FILE, NUM_CLASSES, input_contract
from training import calibration, export, reports
from training.architectures import CIFAR10_MEAN
from training.data import (
    KERAS_SOURCE,
    Dataset,
    DatasetError,
    Split,
    default_val_size,
    load_image_folder,
    load_keras_cifar10,
    stratified_split,
)
from training.recipes import RECIPES, Lookahead, Recipe


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    data: Path | None  # None: keras.datasets.cifar10
    out: Path  # models/<name>: the version directory is created inside
    epochs: int | None  # None: the recipe's
    batch_size: int | None
    seed: int
    val_size: int | None  # None: 5,000 or 10% of a smaller dataset
    threads: int
    cache_dir: Path | None
    run_dir: Path  # checkpoints and the epoch log, for --resume
    resume: bool
    verbose: int = 1


def configure_tensorflow(threads: int) -> None:
    """Size TensorFlow's pools to the CPUs we may use: oversubscribed pools thrash on small machines."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def load_dataset(config: TrainConfig) -> Dataset:
    if config.data is None:
        return load_keras_cifar10()
    return load_image_folder(config.data, config.cache_dir)


def make_pipeline(split: Split, recipe: Recipe, batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
    """tf.data: uint8 images -> augmented float32 batches with one-hot labels."""
    pad, cutout = recipe.translate_pixels, recipe.cutout_pixels
    mean_colour = tf.constant(np.round(np.asarray(CIFAR10_MEAN) * 255), tf.uint8)

    def cut_out(image: tf.Tensor) -> tf.Tensor:
        # The square's centre is anywhere in the image, so it may hang over the edge (DeVries & Taylor).
        top, left = tf.unstack(tf.random.uniform([2], 0, IMAGE_SIZE, dtype=tf.int32) - cutout // 2)
        index = tf.range(IMAGE_SIZE)
        rows = (index >= top) & (index < top + cutout)
        cols = (index >= left) & (index < left + cutout)
        inside = (rows[:, None] & cols[None, :])[:, :, None]
        return tf.where(inside, mean_colour, image)

    def augment(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if recipe.random_flip:
            image = tf.image.random_flip_left_right(image)
        if pad:
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            image = tf.image.random_crop(padded, tf.shape(image))
        if cutout:
            image = cut_out(image)
        return image, label

    def to_model_input(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(image, tf.float32), tf.one_hot(label, NUM_CLASSES)

    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if training:
        dataset = dataset.shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
        if recipe.random_flip or pad or cutout:
            dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(to_model_input).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train(config: TrainConfig) -> Path:
    """Train, calibrate and export one model; returns the published version directory."""
    configure_tensorflow(config.threads)
    recipe = RECIPES[config.arch]
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    keras.utils.set_random_seed(config.seed)

    dataset = load_dataset(config)
    if dataset.class_names != CLASS_NAMES and len(dataset.class_names) != NUM_CLASSES:
        raise DatasetError(f"{dataset.source}: found {len(dataset.class_names)} classes "
                           f"{list(dataset.class_names)}; the export contract needs {NUM_CLASSES}.")
    val_size = config.val_size or default_val_size(len(dataset.train.labels))
    train_split, val_split = stratified_split(dataset.train, val_size, config.seed)
    print(f"data: {dataset.source} ({len(train_split.labels)} train, {len(val_split.labels)} validation"
          f"{f', {len(dataset.test.labels)} test' if dataset.test else ''})", flush=True)

    keras.config.set_dtype_policy("mixed_bfloat16" if recipe.mixed_bfloat16 else "float32")
    model = recipe.build()
    if recipe.data_init is not None:
        recipe.data_init(model, train_split.images, config.seed)
    steps_per_epoch = int(np.ceil(len(train_split.labels) / batch_size))
    model.compile(
        optimizer=recipe.make_optimizer(steps_per_epoch * epochs),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )

    backup_dir = config.run_dir / "backup"
    history_csv = config.run_dir / "history.csv"
    if not config.resume:
        shutil.rmtree(backup_dir, ignore_errors=True)
        history_csv.unlink(missing_ok=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    model.fit(
        make_pipeline(train_split, recipe, batch_size, training=True, seed=config.seed),
        validation_data=make_pipeline(val_split, recipe, 500, training=False, seed=config.seed),
        epochs=epochs,
        shuffle=False,  # the pipeline shuffles, reproducibly from the seed
        verbose=config.verbose,
        callbacks=[
            # Lookahead first: it puts the averaged weights in place before the epoch's checkpoint.
            *([Lookahead(recipe.lookahead, steps_per_epoch * epochs)] if recipe.lookahead else []),
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
            EpochTimer(len(train_split.labels)),  # adds its figures to the logs before CSVLogger writes them
            keras.callbacks.CSVLogger(str(history_csv), append=True),
        ],
    )
    history = reports.read_history(history_csv)

    # Serving runs in float32 on any CPU; only the training arithmetic was bfloat16.
    keras.config.set_dtype_policy("float32")
    serving_model = recipe.build()
    serving_model.set_weights(model.get_weights())

    val_logits = export.logits_with_tta(serving_model, val_split.images, recipe.tta)
    temperature = calibration.fit_temperature(val_logits, val_split.labels)
    ece_before = calibration.expected_calibration_error(calibration.softmax(val_logits), val_split.labels)

    with export.staged_version_dir(config.out) as (staging, publish):
        export.write_saved_model(serving_model, staging, recipe.tta, temperature)
        signature = export.load_signature(staging)
        val_probabilities = export.predict_saved_model(signature, val_split.images)
        val_predicted = val_probabilities.argmax(axis=1)
        val_accuracy = float(np.mean(val_predicted == val_split.labels))
        test_accuracy = None
        if dataset.test is not None:
            test_probabilities = export.predict_saved_model(signature, dataset.test.images)
            test_accuracy = float(np.mean(test_probabilities.argmax(axis=1) == dataset.test.labels))
        ece_after = calibration.expected_calibration_error(val_probabilities, val_split.labels)

        reports.write_report(staging / reports.REPORT_DIR, history, val_split.images, val_split.labels,
                             val_probabilities, dataset.class_names, model, config.seed)

        metadata = {
            "name": config.out.name,
            "class_names": list(dataset.class_names),
            "input_contract": input_contract(),
            "architecture": config.arch,
            "description": recipe.description,
            "params": int(serving_model.count_params()),
            "epochs": epochs,
            "epochs_completed": len(history.get("epoch", [])),
            "batch_size": batch_size,
            "seed": config.seed,
            "train_images": len(train_split.labels),
            "val_images": len(val_split.labels),
            "val_accuracy": round(val_accuracy, 4),
            "test_accuracy": None if test_accuracy is None else round(test_accuracy, 4),
            "tta": recipe.tta,
            "temperature": round(temperature, 4),
            "val_ece_before_temperature": round(ece_before, 4),
            "val_ece": round(ece_after, 4),
            "train_seconds": round(sum(history.get("epoch_seconds", [])), 1),
            "seconds_per_epoch": [round(s, 1) for s in history.get("epoch_seconds", [])],
            "train_images_per_second": round(float(np.mean(history["images_per_second"])), 1)
            if history.get("images_per_second") else None,
            "history": {k: [round(v, 4) for v in vs] for k, vs in history.items() if k != "epoch"},
            "data": {"source": dataset.source if dataset.source == KERAS_SOURCE else Path(dataset.source).name,
                     "sha256": dataset.sha256},
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "git_commit": git_commit(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "threads": config.threads,
        }
        export.write_metadata(staging, metadata)
        version_dir = publish()
    print(json.dumps({"model": str(version_dir), "val_accuracy": metadata["val_accuracy"],
                      "test_accuracy": metadata["test_accuracy"], "val_ece": metadata["val_ece"],
                      "train_seconds": metadata["train_seconds"]}), flush=True)
    print(f"wrote {version_dir} ({METADATA_FILE}, {reports.REPORT_DIR}/)", flush=True)
    return version_dir


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` and ``images_per_second`` to each epoch's logs (before CSVLogger)."""

    def __init__(self, train_images: int) -> None:
        super().__init__()
        self.train_images = train_images
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.train_images / seconds
        print(f"epoch {epoch + 1}: {seconds:.1f} s, {self.train_images / seconds:.0f} images/s", flush=True)
