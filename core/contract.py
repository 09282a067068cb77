"""The export contract shared by the training command and the service.

A model directory is laid out as TensorFlow Serving expects:
``models/<name>/<integer version>/`` holding ``saved_model.pb``, ``variables/`` and
``metadata.json``. Its ``serving_default`` signature takes ``images`` (uint8, RGB,
``[None, 32, 32, 3]``) and returns ``probabilities`` (float32, ``[None, 10]``, softmax in
CIFAR-10 class order). Scaling, normalisation, test-time augmentation and temperature all
live inside the graph, so a client only ever sends raw pixels.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

# CIFAR-10 label order: index i of every probability vector is CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32
CHANNELS = 3

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
INPUT_DTYPE = "uint8"
OUTPUT_NAME = "probabilities"
OUTPUT_DTYPE = "float32"
INPUT_SHAPE: tuple[int | None, ...] = (None, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
OUTPUT_SHAPE: tuple[int | None, ...] = (None, NUM_CLASSES)
# An extra output of every level's signature in today's exports: float32 [None], the "none of these" score of the
# image itself, in (0, 1) (core.ood, training.ood_export).
OOD_SCORE_NAME = "ood_score"
# The extra output of the exports before it (versions 5-9): float32 [None], the L2 norm of the image's penultimate
# features, which core.ood turns into a score. Older models have neither.
FEATURE_NORM_NAME = "feature_norm"

# Accuracy levels: the same weights with 1, 2 or 6 test-time views, each a named signature of the
# SavedModel beside ``serving_default`` (the recipe's default level). A level's views are averaged as
# logits, then divided by that level's own fitted temperature. The ``<level>_bfloat16`` twins compute
# the network in bfloat16 (logits and softmax stay float32); the service uses them only at the batch
# sizes where metadata.json says they are faster and the CPU has bfloat16 instructions.
@dataclass(frozen=True)
class Level:
    name: str
    views: int
    tta: str  # the training code's name for its test-time augmentation
    description: str


LEVELS: tuple[Level, ...] = (
    Level("fast", 1, "none", "the image alone, once through the network"),
    Level("balanced", 2, "flip", "the image and its mirror image"),
    Level("accurate", 6, "flip-translate", "the image and its mirror, each also shifted one pixel up-left and "
          "one pixel down-right"),
)
# The names as a type, for settings and the query parameter (OpenAPI lists them); the same names as LEVELS.
LevelName = Literal["fast", "balanced", "accurate"]
LEVEL_NAMES: tuple[str, ...] = get_args(LevelName)
assert LEVEL_NAMES == tuple(level.name for level in LEVELS)
DEFAULT_LEVEL = "accurate"
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
INT8 = "int8"  # OpenVINO only: post-training quantized IR (training/openvino_export.py); no SavedModel signature


# The training code's names for the levels' views ("none", "flip", "flip-translate"), spelled only in LEVELS.
TTA_NAMES: tuple[str, ...] = tuple(level.tta for level in LEVELS)


def level_named(name: str) -> Level:
    """The entry of LEVELS called ``name`` (a KeyError naming the levels if there is none)."""
    for level in LEVELS:
        if level.name == name:
            return level
    raise KeyError(f"unknown level {name!r}; the levels are {', '.join(LEVEL_NAMES)}")


def level_for_tta(tta: str) -> str:
    """The level whose views are the training code's test-time augmentation ``tta``."""
    return next(level.name for level in LEVELS if level.tta == tta)


def level_signature(level: str, precision: str = FLOAT32) -> str:
    """The signature computing ``level`` at ``precision``: ``accurate``, ``accurate_bfloat16``, ..."""
    return level if precision == FLOAT32 else f"{level}_{precision}"


METADATA_FILE = "metadata.json"
SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_INDEX = "variables/variables.index"
# What a version folder must hold before anything may load it: a folder still being written lacks one.
VERSION_FILES = (SAVED_MODEL_FILE, VARIABLES_INDEX, METADATA_FILE)


def export_contract() -> dict[str, object]:
    """The whole contract (signature name, its input and output, class names), as metadata.json records it
    under ``input_contract`` and /metadata serves it."""
    return {
        "signature": SIGNATURE_NAME,
        "inputs": {INPUT_NAME: {"dtype": INPUT_DTYPE, "shape": list(INPUT_SHAPE), "color": "RGB"}},
        "outputs": {OUTPUT_NAME: {"dtype": OUTPUT_DTYPE, "shape": list(OUTPUT_SHAPE)}},
        "class_names": list(CLASS_NAMES),
    }


def version_dirs(model_root: Path) -> list[tuple[int, Path]]:
    """Integer-named version directories under ``model_root``, oldest first."""
    if not model_root.is_dir():
        return []
    versions = [(int(p.name), p) for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(versions)


def next_version(model_root: Path) -> int:
    """The version number a new export under ``model_root`` should take."""
    versions = version_dirs(model_root)
    return versions[-1][0] + 1 if versions else 1


def metadata_number(value: Any) -> float | None:
    """``value`` as a float where metadata.json holds a number there, else None (JSON's true and false load as
    bools, which Python counts as ints)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def file_sha256(path: Path) -> str:
    """The sha256 metadata.json records of a file: the data a model was trained on, each IR file of a level."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def missing_files(version_dir: Path) -> list[str]:
    """The files of VERSION_FILES that ``version_dir`` lacks (empty for a complete version)."""
    return [name for name in VERSION_FILES if not (version_dir / name).is_file()]
