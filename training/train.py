"""The training run, top to bottom: data, fit, a float32 copy, then the export path (training.export).

:func:`train` reads as that list; each stage is the function of the same name below it.
"""

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.contract import CLASS_NAMES, METADATA_FILE, NUM_CLASSES
from core.cpus import cpu_flags, has_bfloat16
from core.tensorflow_runtime import set_tensorflow_threads
from training import distill, evaluation, export, reports, signatures
from training.augment import EpochCounter
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
from training.errors import TrainingError
from training.optimizers import Lookahead
from training.pipeline import make_pipeline
from training.publish import DEFAULT_MODEL_ROOT, RUN_EXPORT_DIR, publish_next_version, publish_replacing, staging_dir
from training.recipes import DEFAULT_DISTILLATION, RECIPES, Recipe, network_widths, with_widths

# The options a resumed run must share with the run it continues (those that decide what trains; not --epochs,
# which may extend it), kept in its run folder.
RUN_OPTIONS_FILE = "options.json"
RUN_DATA_KEY = "data-sha256"  # beside the options: not an option, but as binding on a resumed run
BACKUP_DIR = "backup"  # the last epoch's checkpoint, which --resume continues from


@dataclass(frozen=True)
class TrainConfig:
    recipe: str  # a name in training.recipes.RECIPES
    data: Path | None  # None: keras.datasets.cifar10
    out: Path | None  # models/<name>: export to its next integer version; None: to run_dir/model, for promote
    epochs: int | None  # None: the recipe's
    batch_size: int | None
    seed: int
    val_size: int | None  # None: 5,000 or 10% of a smaller dataset
    threads: int
    cache_dir: Path | None  # decoded ImageFolder arrays and a teacher's answers; None: the latter in run_dir
    run_dir: Path  # checkpoints, the epoch log (for --resume) and, without ``out``, the export
    resume: bool
    verbose: int = 1
    teachers: tuple[Path, ...] = ()  # model versions whose probabilities, averaged, a distilling recipe learns from
    recipe_changes: dict[str, Any] = field(default_factory=dict)  # one-off changes (--widths, --flip, ...)
    timing_seconds: float = evaluation.TIMING_SECONDS  # per level, precision and batch size, for metadata.json
    split_seed: int | None = None  # the validation split's seed; None: ``seed`` (--split-seed)

    @property
    def validation_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


@dataclass(frozen=True)
class Splits:
    dataset: Dataset  # where the images came from, its class names and its test split, if any
    train: Split
    val: Split


@dataclass(frozen=True)
class Fitted:
    model: keras.Model  # as trained (bfloat16 arithmetic under a mixed recipe)
    history: dict[str, list[float]]  # per epoch, from the run's history.csv (resumed epochs included)
    epochs: int
    batch_size: int
    precision: str  # the Keras dtype policy it trained under
    images_per_cpu_second: float | None  # the median epoch's, of the epochs this process trained


def train(config: TrainConfig) -> Path:
    """Train, calibrate and export one model; returns the export directory (``run_dir/model``, or the
    new version in ``out``)."""
    set_tensorflow_threads(config.threads)
    recipe = changed_recipe(RECIPES[config.recipe], config)
    interrupted = check_run_options(config)
    if recipe.distillation is not None:
        distill.check_teachers(config.teachers, recipe.distillation.teacher_level)
    keras.utils.set_random_seed(config.seed)
    splits = load_splits(config)
    check_run_data(config, interrupted, splits.dataset)
    # Only once the data has loaded: a command refused for its data leaves no run folder behind.
    keep_run_options(config, splits.dataset)
    fitted = fit(config, recipe, splits)
    trained = export.Trained(float32_copy(recipe, fitted.model), recipe, recipe.default_level, fitted.history,
                             config.seed, describe_training(config, recipe, splits, fitted))
    with staging_dir(config.out or config.run_dir) as staging:
        name = (config.out or DEFAULT_MODEL_ROOT).name
        metadata = export.export(staging, trained, splits.train.images, splits.val, splits.dataset.test, name,
                                 config.threads, config.timing_seconds).metadata
        # An experiment never lands in the served folder by itself: promote checks and publishes it.
        export_dir = (publish_next_version(staging, config.out) if config.out
                      else publish_replacing(staging, config.run_dir / RUN_EXPORT_DIR))
    print(json.dumps({"model": str(export_dir), "val_accuracy": metadata["val_accuracy"],
                      "test_accuracy": metadata["test_accuracy"], "val_ece": metadata["val_ece"],
                      "train_seconds": metadata["train_seconds"]}), flush=True)
    print(f"wrote {export_dir} ({METADATA_FILE}, {reports.REPORT_DIR}/): validation accuracy "
          f"{metadata['val_accuracy']:.2%}", flush=True)
    if config.out is None:
        print(f"to serve it: python -m training promote {config.run_dir}", flush=True)
    return export_dir


def load_splits(config: TrainConfig) -> Splits:
    """The dataset, and its train part split into train and a stratified validation set."""
    dataset = load_dataset(config)
    if dataset.class_names != CLASS_NAMES:  # the service and promote refuse any other: refuse before training
        raise DatasetError(f"{dataset.source}: found {len(dataset.class_names)} classes "
                           f"{list(dataset.class_names)}; the export contract needs CIFAR-10's {NUM_CLASSES}, "
                           f"one train/<class>/ folder each: {', '.join(CLASS_NAMES)}.")
    val_size = config.val_size or default_val_size(len(dataset.train.labels))
    train_split, val_split = stratified_split(dataset.train, val_size, config.validation_seed)
    print(f"data: {dataset.source} ({len(train_split.labels)} train, {len(val_split.labels)} validation"
          f"{f', {len(dataset.test.labels)} test' if dataset.test else ''})", flush=True)
    return Splits(dataset, train_split, val_split)


def load_dataset(config: TrainConfig) -> Dataset:
    if config.data is None:
        return load_keras_cifar10()
    return load_image_folder(config.data, config.cache_dir)


def fit(config: TrainConfig, recipe: Recipe, splits: Splits) -> Fitted:
    """The recipe's model trained on the train split, checkpointed each epoch in ``config.run_dir``."""
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    teacher = None
    if recipe.distillation is not None:
        # Kept with the decoded data when there is a cache (keyed by teacher and images, so every run on the
        # same split reuses them: ~10 minutes of teacher passes on 2 CPUs), else in the run folder.
        probabilities = distill.ensemble_probabilities(config.teachers, splits.train.images,
                                                       recipe.distillation.teacher_level,
                                                       config.cache_dir or config.run_dir)
        agreement = float(np.mean(probabilities.argmax(axis=1) == splits.train.labels))
        print(f"teacher: {agreement:.2%} of the training split's labels", flush=True)
        teacher = distill.soft_targets(probabilities, recipe.distillation.temperature)
    precision = training_precision(recipe)
    print(f"training precision: {precision}", flush=True)
    keras.config.set_dtype_policy(precision)
    model = recipe.build()
    if recipe.data_init is not None:
        recipe.data_init(model, splits.train.images, config.seed)
    steps_per_epoch = int(np.ceil(len(splits.train.labels) / batch_size))
    model.compile(
        optimizer=recipe.make_optimizer(steps_per_epoch * epochs),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )

    backup_dir = config.run_dir / BACKUP_DIR
    history_csv = config.run_dir / "history.csv"
    if not config.resume:
        shutil.rmtree(backup_dir, ignore_errors=True)
        history_csv.unlink(missing_ok=True)
        # An earlier run's export too: were this run interrupted, promote would publish that one as this one.
        shutil.rmtree(config.run_dir / RUN_EXPORT_DIR, ignore_errors=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    epoch_counter, timer = EpochCounter(), EpochTimer(len(splits.train.labels))
    model.fit(
        make_pipeline(splits.train, batch_size, config.seed, recipe.augmentation, epoch_counter.epoch, teacher,
                      recipe.distillation.weight if recipe.distillation else 0.0),
        validation_data=make_pipeline(splits.val, signatures.EVALUATION_BATCH_SIZE, config.seed),
        epochs=epochs,
        shuffle=False,  # the pipeline shuffles, reproducibly from the seed
        verbose=config.verbose,
        callbacks=[
            epoch_counter,
            # Lookahead first: it puts the averaged weights in place before the epoch's checkpoint.
            *([Lookahead(recipe.lookahead, steps_per_epoch * epochs)] if recipe.lookahead else []),
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
            # Keras would append its progress bar last: here it ends the epoch's bar line before EpochTimer
            # prints, so the timing gets a line of its own.
            keras.callbacks.ProgbarLogger(),
            timer,  # adds its figures to the logs before CSVLogger writes them
            keras.callbacks.CSVLogger(str(history_csv), append=True),
        ],
    )
    return Fitted(model, reports.read_history(history_csv), epochs, batch_size, precision,
                  _median(timer.images_per_cpu_second))


def training_precision(recipe: Recipe, flags: frozenset[str] | None = None) -> str:
    """``mixed_bfloat16`` where the recipe asks for it and the CPU has bfloat16 instructions, else ``float32``:
    without them TensorFlow emulates bfloat16 ten times slower than float32 (docs/training.md)."""
    usable = has_bfloat16(cpu_flags() if flags is None else flags)
    return "mixed_bfloat16" if recipe.mixed_bfloat16 and usable else "float32"


def changed_recipe(recipe: Recipe, config: TrainConfig) -> Recipe:
    """The recipe as this run trains it: distilling exactly when ``--teacher`` is given (with the recipe's
    distillation, else DEFAULT_DISTILLATION), with the run's one-off changes (``widths``, ``flip``, ``label_smoothing``,
    ``distill_weight``, ``distill_temperature``: the ablation's rows in docs/training.md)."""
    changes = config.recipe_changes
    if "widths" in changes:
        recipe = with_widths(recipe, changes["widths"])
    if "flip" in changes:
        recipe = replace(recipe, augmentation=replace(recipe.augmentation, flip=changes["flip"]))
    if "label_smoothing" in changes:
        recipe = replace(recipe, label_smoothing=changes["label_smoothing"])
    if not config.teachers:
        if recipe.distillation is not None:
            raise distill.TeacherError(f"recipe {config.recipe} distills: pass --teacher with a model version "
                                       "folder, e.g. --teacher models/cifar10/4.")
        if given := [f"--{name.replace('_', '-')}" for name in ("distill_weight", "distill_temperature")
                     if name in changes]:
            raise distill.TeacherError(f"{' and '.join(given)} set how a student learns from a teacher: pass "
                                       "--teacher with a model version folder, e.g. --teacher models/cifar10/4.")
        return recipe
    distillation = recipe.distillation or DEFAULT_DISTILLATION
    return replace(recipe, distillation=replace(
        distillation, weight=changes.get("distill_weight", distillation.weight),
        temperature=changes.get("distill_temperature", distillation.temperature)))


def run_options(config: TrainConfig) -> dict[str, Any]:
    """What a resumed run must share with the run it continues, by option name (as JSON keeps it: lists)."""
    return {"recipe": config.recipe, "batch-size": config.batch_size, "seed": config.seed, "val-size": config.val_size,
            "teacher": [teacher.as_posix() for teacher in config.teachers],
            # Only where given, as the one-off changes: runs interrupted before the option resume as they were.
            **({} if config.split_seed is None else {"split-seed": config.split_seed}),
            **{key.replace("_", "-"): list(value) if isinstance(value, tuple) else value
               for key, value in config.recipe_changes.items()}}


def check_run_options(config: TrainConfig) -> dict[str, Any] | None:
    """On --resume, refuses options that differ from the interrupted run's, which its checkpoint and epoch log
    would not fit (or, worse, silently would); returns the interrupted run's options (None: nothing to resume,
    or a run from before they were kept)."""
    options, path = run_options(config), config.run_dir / RUN_OPTIONS_FILE
    if not config.resume:
        return None
    if not path.exists():
        if (config.run_dir / BACKUP_DIR).is_dir():  # a run from before options.json: nothing to compare
            return None
        # A mistyped --run-dir would otherwise start over, hours later found to have thrown the run away.
        raise TrainingError(f"{config.run_dir}: no run to resume there (no {RUN_OPTIONS_FILE}, no {BACKUP_DIR}/ "
                            "checkpoint). Pass the folder the interrupted run printed, or start a new run "
                            "without --resume.")
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TrainingError(f"{path}: cannot read it ({error}); start the run again without --resume.") from None
    # A one-off change appears only in the runs that make it: compare over both runs' options, in order.
    changed = [f"--{name} {_shown(before.get(name))} (this command: {_shown(options.get(name))})"
               for name in dict.fromkeys([*options, *before]) if name != RUN_DATA_KEY
               and _compared(name, before.get(name)) != _compared(name, options.get(name))]
    if changed:
        raise TrainingError(f"{path}: the interrupted run trained with {'; '.join(changed)}. Resume it with "
                            "its own options, or start a new run without --resume.")
    return before


def check_run_data(config: TrainConfig, interrupted: dict[str, Any] | None, dataset: Dataset) -> None:
    """On --resume, refuses data other than the interrupted run's (by its sha256 in ``interrupted``, its options
    as check_run_options read them, where both are known): the checkpoint would go on learning other images,
    and metadata.json would vouch for the new ones."""
    before, now = (interrupted or {}).get(RUN_DATA_KEY), data_sha256(dataset)
    if before and now and before != now:
        raise TrainingError(f"{config.run_dir / RUN_OPTIONS_FILE}: the interrupted run trained on data of sha256 "
                            f"{before[:12]}..., and {dataset.source} is {now[:12]}.... Resume it with its own --data, "
                            "or start a new run without --resume.")


def data_sha256(dataset: Dataset) -> str | None:
    """The sha256 of an archive or of Keras' download; None for a directory, whose fingerprint holds its files'
    times, which a copy of the same images changes."""
    return dataset.sha256 if dataset.source == KERAS_SOURCE or Path(dataset.source).is_file() else None


def keep_run_options(config: TrainConfig, dataset: Dataset | None = None) -> None:
    """Writes the run's options (and its data's sha256) into its folder, for check_run_options and
    check_run_data when it is resumed."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    sha256 = data_sha256(dataset) if dataset is not None else None
    data = {RUN_DATA_KEY: sha256} if sha256 else {}
    (config.run_dir / RUN_OPTIONS_FILE).write_text(json.dumps({**run_options(config), **data}, indent=1) + "\n")


def _compared(name: str, value: Any) -> Any:
    # The same teachers may be named by other paths (absolute, through a link, with "..") or in another order:
    # the student learns their average, so compare the folders, sorted.
    if name == "teacher" and isinstance(value, list):
        return sorted(Path(teacher).resolve() for teacher in value)
    return value


def _shown(value: Any) -> str:
    if value is None or value == []:
        return "not given"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def float32_copy(recipe: Recipe, trained: keras.Model) -> keras.Model:
    """The trained weights in a float32 model: what is exported. Every level is exported in float32 and, where
    the recipe trains in bfloat16, in bfloat16 too (the service picks per batch size what metadata.json found
    faster)."""
    keras.config.set_dtype_policy("float32")
    model = recipe.build()
    model.set_weights(trained.get_weights())
    return model


def describe_training(config: TrainConfig, recipe: Recipe, splits: Splits, fitted: Fitted) -> dict[str, Any]:
    """metadata.json's entries about the training: what was trained, how and on what."""
    history, dataset = fitted.history, splits.dataset
    return {
        "class_names": list(dataset.class_names),
        "architecture": config.recipe,  # the recipe's name (the key predates recipes)
        "description": recipe.description,
        "params": int(fitted.model.count_params()),
        "widths": None if (widths := network_widths(recipe)) is None else list(widths),  # rebuilds it: trained_recipe
        "epochs": fitted.epochs,
        "epochs_completed": len(history.get("epoch", [])),
        "batch_size": fitted.batch_size,
        "seed": config.seed,
        "split_seed": config.validation_seed,
        "train_images": len(splits.train.labels),
        "val_images": len(splits.val.labels),
        "flip": recipe.augmentation.flip,
        "label_smoothing": recipe.label_smoothing,
        "distillation": None if recipe.distillation is None else {
            "teachers": [teacher.as_posix() for teacher in config.teachers],
            "level": recipe.distillation.teacher_level, "weight": recipe.distillation.weight,
            "temperature": recipe.distillation.temperature},
        "train_seconds": round(sum(history.get("epoch_seconds", [])), 1),
        "seconds_per_epoch": [round(s, 1) for s in history.get("epoch_seconds", [])],
        # The median epoch: one epoch slowed by other work on the machine (or a run paused and resumed) does not
        # move it, where the mean would.
        "train_images_per_second": _median(history.get("images_per_second")),
        "train_images_per_cpu_second": fitted.images_per_cpu_second,
        "history": {k: [round(v, 4) for v in vs] for k, vs in history.items() if k != "epoch"},
        "data": {"source": dataset.source if dataset.source == KERAS_SOURCE else Path(dataset.source).name,
                 "sha256": dataset.sha256},
        "train_precision": fitted.precision,
    }


def _median(values: list[float] | None) -> float | None:
    return round(float(np.median(values)), 1) if values else None


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` and ``images_per_second`` to each epoch's logs (before CSVLogger), and keeps
    each epoch's images per CPU-second.

    Images per CPU-second (the process's CPU time, every thread's) is the figure that compares runs: on the
    2-core VMs this project trains on, the CPU time the host gives a process varies from about 1.2 to 2
    cores over minutes, moving images/s by as much while the work per image stays put (docs/training.md).
    It stays out of the logs: a column added to history.csv would misalign a run resumed from before it.
    """

    def __init__(self, train_images: int) -> None:
        super().__init__()
        self.train_images = train_images
        self.started = self.cpu_started = 0.0
        self.images_per_cpu_second: list[float] = []
        self.epoch_seconds: list[float] = []  # this process's epochs: the pace of the ones left

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        cpu_seconds = time.process_time() - self.cpu_started
        self.images_per_cpu_second.append(self.train_images / cpu_seconds)
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.train_images / seconds
        self.epoch_seconds.append(seconds)
        # The time left, so that a run on a CPU without bfloat16 (a twelfth of the speed, measured) says so
        # after one epoch.
        left = self.params["epochs"] - (epoch + 1)
        to_go = (f"; {left} epoch{'s' if left > 1 else ''} to go, about "
                 f"{_duration(left * float(np.mean(self.epoch_seconds)))} at this pace" if left > 0 else "")
        print(f"epoch {epoch + 1}: {seconds:.1f} s, {self.train_images / seconds:.0f} images/s, "
              f"{cpu_seconds / seconds:.2f} CPUs busy, {self.train_images / cpu_seconds:.0f} images per CPU-second"
              f"{to_go}", flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"
