"""The train/validation split a model version was selected on, rebuilt from its metadata.json.

A benchmark that measures a model on other images than its own validation split measures something else:
images it trained on, or a split another model held out. Every script that compares models, or measures one
on validation, takes the split from here.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.contract import METADATA_FILE, SAVED_MODEL_FILE, version_dirs
from training.data import DatasetError, Split, load_image_folder, model_split


class VersionSplitError(ValueError):
    """Unreadable data, a folder that is no model version or has no readable metadata, or versions that held out
    different images: one line, with the fix."""


def version_folder(model_dir: Path) -> Path:
    """``model_dir`` itself if it holds a SavedModel (a version, or a run's export), else its highest version: so
    ``models/cifar10``, a benchmark's default, measures the shipped model as the service picks it."""
    if (model_dir / SAVED_MODEL_FILE).is_file():
        return model_dir
    versions = version_dirs(model_dir)
    if not versions:
        raise VersionSplitError(f"{model_dir} holds neither {SAVED_MODEL_FILE} nor version folders: pass a model "
                                "version folder (models/cifar10/10) or a model folder (models/cifar10)")
    return versions[-1][1]


def version_metadata(model_dir: Path) -> dict:
    metadata_path = model_dir / METADATA_FILE
    how_to = "pass model version folders written by python -m training, e.g. models/cifar10/10"
    try:
        metadata = json.loads(metadata_path.read_text())
    except OSError as error:
        raise VersionSplitError(f"{metadata_path}: {error.strerror or error}: {how_to}") from None
    except ValueError as error:
        raise VersionSplitError(f"{metadata_path} is not JSON ({error}): {how_to}") from None
    if not isinstance(metadata, dict) or not {"val_images", "seed"} <= metadata.keys():
        raise VersionSplitError(f"{metadata_path} does not record its validation split (val_images, seed): {how_to}")
    return metadata


def shared_split(data: Path, model_dirs: Sequence[Path], cache_dir: Path | None) -> tuple[Split, Split]:
    """The (train, validation) split every one of ``model_dirs`` was trained and selected on, from the archive
    or ImageFolder ``data`` (its decoded arrays cached in ``cache_dir``, if given)."""
    metadatas = [version_metadata(model_dir) for model_dir in model_dirs]  # all, before a minute of decoding
    if not data.exists():  # the loader's own message offers a download, which a model's split cannot come from
        raise VersionSplitError(f"{data}: no such file or directory. Pass --data with the ImageFolder directory or "
                                ".tar.gz/.tar/.zip archive the models were trained on")
    try:
        dataset = load_image_folder(data, cache_dir)
    except DatasetError as error:  # already one line naming the file and the fix
        raise VersionSplitError(str(error)) from None
    first, *others = (model_split(dataset.train, metadata) for metadata in metadatas)
    for model_dir, (_, val) in zip(model_dirs[1:], others, strict=True):
        if not np.array_equal(val.images, first[1].images):
            raise VersionSplitError(f"{model_dir} held out other validation images than {model_dirs[0]} (their "
                                    "--split-seed or --val-size differ): measure them one at a time")
    return first
