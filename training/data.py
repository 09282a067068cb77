"""Datasets: keras.datasets.cifar10, or an ImageFolder directory or archive, decoded once and cached.

An ImageFolder is ``train/<class>/*`` and optionally ``test/<class>/*``. Every file is decoded
with the service's own :func:`core.preprocessing.image_bytes_to_array`. An unreadable or
non-image file is fatal, named in the error: a silently smaller dataset would make every
reported figure quietly wrong.
"""

import hashlib
import os
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

import numpy as np

from core.contract import CLASS_NAMES, file_sha256
from core.preprocessing import ImageError, image_bytes_to_array
from training.errors import TrainingError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
KERAS_SOURCE = "keras.datasets.cifar10"
CACHE_FORMAT = 1  # bump when the decoded arrays would differ, so old caches are not reused


class DatasetError(TrainingError):
    """A dataset problem a user can fix; the message names the file and what to do."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (n, 32, 32, 3), RGB
    labels: np.ndarray  # int64 (n,)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split | None
    class_names: tuple[str, ...]
    source: str
    sha256: str | None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar10-service"


def load_keras_cifar10() -> Dataset:
    """The standard CIFAR-10 download (train 50,000 and test 10,000), through Keras."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # Keras raises a bare Exception for a failed download, whatever the cause
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise DatasetError(f"could not download CIFAR-10 through keras.datasets.cifar10 ({reason}). "
                           "Connect to the internet and run the command again, or pass --data with an ImageFolder "
                           "directory or .tar.gz/.tar/.zip archive.") from None
    keras_home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    download = keras_home / "datasets" / "cifar-10-batches-py.tar.gz"
    return Dataset(
        train=Split(x_train, y_train.reshape(-1).astype("int64")),
        test=Split(x_test, y_test.reshape(-1).astype("int64")),
        class_names=CLASS_NAMES,
        source=KERAS_SOURCE,
        sha256=file_sha256(download) if download.is_file() else None,
    )


def load_image_folder(path: Path, cache_dir: Path | None) -> Dataset:
    """Load an ImageFolder directory or archive, from the cache when it has been decoded before."""
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory. Pass --data with an ImageFolder "
                           "directory or .tar.gz/.tar/.zip archive, or omit --data to download CIFAR-10.")
    digest = file_sha256(path) if path.is_file() else directory_fingerprint(path)
    cache_file = cache_dir / f"imagefolder-v{CACHE_FORMAT}-{digest[:16]}.npz" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        return _read_cache(cache_file, path, digest)
    print(f"reading {path}", flush=True)
    members, class_folders = _list_members(path)
    dataset = _decode(members, class_folders, path, digest)
    if cache_file is not None:
        _write_cache(cache_file, dataset)
    return dataset


def load_trained_on(data: Path | None, metadata: dict, metadata_path: Path, cache_dir: Path | None) -> Dataset:
    """The dataset a model was trained on, as its metadata.json records it: Keras' download for a model trained
    without --data, else the ImageFolder ``data``; either must have the sha256 recorded there, if any (else its
    validation split would be other images, and re-measured figures would vouch for them)."""
    recorded = metadata.get("data") or {}
    source = recorded.get("source")
    if source == KERAS_SOURCE:
        if data is not None:
            raise DatasetError(f"{metadata_path}: the model was trained on {KERAS_SOURCE}; omit --data, and its "
                               "download is used.")
        dataset = load_keras_cifar10()
    elif data is None:
        raise DatasetError(f"{metadata_path}: the model was trained on {source or 'an ImageFolder dataset'}; pass "
                           "that dataset with --data.")
    else:
        dataset = load_image_folder(data, cache_dir)
    before, now = recorded.get("sha256"), dataset.sha256
    if before and now and before != now:  # Keras' download may not be where it is looked for: now is None
        if data is None:
            fix = ("Keras' download is not the one the model was trained on; delete it (~/.keras/datasets) so that "
                   "it is fetched again.")
        elif data.is_file():
            fix = "pass that archive with --data."
        else:
            fix = ("pass that folder with --data, as it was (its fingerprint is its files' names, sizes and times, "
                   "so a copy differs; an archive of it is another file).")
        raise DatasetError(f"{data or dataset.source}: sha256 {now} is not the {before} that {metadata_path} records "
                           f"for the data the model was trained on; {fix}")
    return dataset


def directory_fingerprint(root: Path) -> str:
    """A cache key for a directory: every file's path, size and modification time."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --- reading members -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Member:
    split: str  # "train" or "test"
    class_name: str
    name: str  # path shown in errors
    read: "object"  # () -> bytes


def _list_members(path: Path) -> tuple[list[_Member], set[str]]:
    """Image files, and the names of all train/<class>/ folders (so an empty one is noticed)."""
    if path.is_dir():
        folders = {d.name for d in path.rglob("*") if d.is_dir() and d.parent.name == "train"}
        return list(_directory_members(path)), folders
    name = path.name.lower()
    folders: set[str] = set()
    if name.endswith(".zip"):
        return list(_zip_members(path, folders)), folders
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return list(_tar_members(path, folders)), folders
    raise DatasetError(f"{path}: not a directory or a .tar.gz/.tgz/.tar/.zip archive. "
                       "Pass an ImageFolder directory or one of those archives.")


def _classify(relative: PurePosixPath) -> tuple[str, str] | None:
    """(split, class) for ``[prefix/]train|test/<class>/<file>``, else None."""
    parts = relative.parts
    for index, part in enumerate(parts[:-2]):
        if part in ("train", "test") and len(parts) - index == 3:
            return part, parts[index + 1]
    return None


def _directory_members(root: Path) -> Iterator[_Member]:
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        where = _classify(PurePosixPath(file.relative_to(root).as_posix()))
        if where and not file.name.startswith("."):
            yield _Member(where[0], where[1], str(file), file.read_bytes)


def _tar_members(path: Path, folders: set[str]) -> Iterator[_Member]:
    try:
        with tarfile.open(path) as archive:
            for info in archive:
                if info.isdir() and PurePosixPath(info.name).parent.name == "train":
                    folders.add(PurePosixPath(info.name).name)
                where = _classify(PurePosixPath(info.name))
                if info.isfile() and where and not PurePosixPath(info.name).name.startswith("."):
                    data = archive.extractfile(info).read()  # type: ignore[union-attr]
                    yield _Member(where[0], where[1], f"{path}:{info.name}", lambda data=data: data)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetError(f"{path}: unreadable archive ({error}). Download or copy it again.") from None


def _zip_members(path: Path, folders: set[str]) -> Iterator[_Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() and PurePosixPath(info.filename).parent.name == "train":
                    folders.add(PurePosixPath(info.filename).name)
                where = _classify(PurePosixPath(info.filename))
                if not info.is_dir() and where and not PurePosixPath(info.filename).name.startswith("."):
                    data = archive.read(info)
                    yield _Member(where[0], where[1], f"{path}:{info.filename}", lambda data=data: data)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DatasetError(f"{path}: unreadable archive ({error}). Download or copy it again.") from None


def _class_order(names: set[str]) -> tuple[str, ...]:
    """CIFAR-10's label order when the folders are its ten classes, otherwise sorted."""
    return CLASS_NAMES if names == set(CLASS_NAMES) else tuple(sorted(names))


def _decode(members: list[_Member], class_folders: set[str], path: Path, digest: str) -> Dataset:
    train_members = [m for m in members if m.split == "train"]
    if not train_members:
        raise DatasetError(f"{path}: no train/<class>/<image> files found. An ImageFolder dataset "
                           "needs a train/ folder with one sub-folder of images per class.")
    class_names = _class_order({m.class_name for m in train_members} | class_folders)
    splits = {}
    for split in ("train", "test"):
        chosen = [m for m in members if m.split == split]
        if chosen:
            splits[split] = _decode_split(chosen, class_names, path, split)
    return Dataset(splits["train"], splits.get("test"), class_names, str(path), digest)


def _decode_split(members: list[_Member], class_names: tuple[str, ...], path: Path, split: str) -> Split:
    index = {name: i for i, name in enumerate(class_names)}
    images, labels = [], []
    progress = DecodeProgress(f"{split} images from {path.name}", len(members))
    for member in members:
        if member.class_name not in index:
            raise DatasetError(f"{member.name}: class '{member.class_name}' is not among the train "
                               f"classes {list(class_names)}. Rename or remove that {split}/ folder.")
        try:
            images.append(image_bytes_to_array(member.read()))
        except ImageError as error:
            raise DatasetError(f"{member.name}: {error.message} Remove or replace this file; "
                               "unreadable files are not skipped.") from None
        labels.append(index[member.class_name])
        progress.advance()
    progress.finish()
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        raise DatasetError(f"{path}: {split}/{empty[0]}/ has no images. Add images or remove the folder.")
    return Split(np.stack(images), np.asarray(labels, dtype="int64"))


class DecodeProgress:
    """Says how far decoding has got, since 50,000 images take a while: a count updated in place on a
    terminal (at most a few times a second), a line per quarter otherwise (a log file stays short)."""

    REDRAW_SECONDS = 0.25
    QUARTERS = 4

    def __init__(self, what: str, total: int, stream: TextIO | None = None) -> None:
        self.what, self.total, self.done = what, total, 0
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.started = self.drawn = time.monotonic()
        self.quarter = 0
        self._write(f"decoding {total:,} {what}" + ("" if self.interactive else "\n"))

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.interactive and now - self.drawn >= self.REDRAW_SECONDS:
            self.drawn = now
            self._write(f"\rdecoding {self.total:,} {self.what}: {self.done:,} ({self.done / self.total:.0%})")
            return
        quarter = self.done * self.QUARTERS // self.total  # 1, 2, 3 once past 25%, 50%, 75%; finish() says 100%
        if not self.interactive and self.quarter < quarter < self.QUARTERS:
            self.quarter = quarter
            self._write(f"decoding {self.total:,} {self.what}: {self.done:,} ({self.done / self.total:.0%})\n")

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        self._write(("\r" if self.interactive else "") + f"decoded {self.done:,} {self.what} in {seconds:.1f} s"
                    + (" " * 20 if self.interactive else "") + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _read_cache(cache_file: Path, path: Path, digest: str) -> Dataset:
    with np.load(cache_file) as saved:
        test = Split(saved["test_images"], saved["test_labels"]) if "test_images" in saved else None
        return Dataset(
            Split(saved["train_images"], saved["train_labels"]),
            test,
            tuple(str(n) for n in saved["class_names"]),
            str(path),
            digest,
        )


def _write_cache(cache_file: Path, dataset: Dataset) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": dataset.train.images,
        "train_labels": dataset.train.labels,
        "class_names": np.asarray(dataset.class_names),
    }
    if dataset.test is not None:
        arrays |= {"test_images": dataset.test.images, "test_labels": dataset.test.labels}
    partial = cache_file.with_suffix(f".{os.getpid()}.partial.npz")
    np.savez(partial, **arrays)
    partial.replace(cache_file)


# --- splitting -------------------------------------------------------------------------------

def default_val_size(num_train: int) -> int:
    """5,000 images, or 10% of a smaller dataset."""
    return min(5000, max(1, round(num_train * 0.1)))


def model_split(train: Split, metadata: dict) -> tuple[Split, Split]:
    """The train/validation split an exported model was trained on, rebuilt from its metadata.json: its
    ``val_images`` held out with its ``split_seed`` (its ``seed`` in exports made before --split-seed)."""
    return stratified_split(train, int(metadata["val_images"]), int(metadata.get("split_seed", metadata["seed"])))


def stratified_split(split: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``val_size`` images with every class in proportion, reproducibly for ``seed``."""
    if not 0 < val_size < len(split.labels):
        raise DatasetError(f"--val-size {val_size} must be between 1 and {len(split.labels) - 1}.")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(split.labels, return_counts=True)
    quotas = np.floor(counts / counts.sum() * val_size).astype(int)
    # Hand the rounding remainder to the largest fractional parts, so the total is exact.
    remainder = val_size - quotas.sum()
    fractions = counts / counts.sum() * val_size - quotas
    quotas[np.argsort(-fractions, kind="stable")[:remainder]] += 1
    val_index = []
    for label, quota in zip(classes, quotas, strict=True):
        members = np.flatnonzero(split.labels == label)
        val_index.append(rng.permutation(members)[:quota])
    val_mask = np.zeros(len(split.labels), dtype=bool)
    val_mask[np.concatenate(val_index)] = True
    return (
        Split(split.images[~val_mask], split.labels[~val_mask]),
        Split(split.images[val_mask], split.labels[val_mask]),
    )
