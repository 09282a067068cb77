"""The export contract shared by the training command and the service.

A model directory is laid out as TensorFlow Serving expects:
``models/<name>/<integer version>/`` holding ``saved_model.pb``, ``variables/`` and
``metadata.json``. Its ``serving_default`` signature takes ``images`` (uint8, RGB,
``[None, 32, 32, 3]``) and returns ``probabilities`` (float32, ``[None, 10]``, softmax in
CIFAR-10 class order). Scaling, normalisation, test-time augmentation and temperature all
live inside the graph, so a client only ever sends raw pixels.
"""

from pathlib import Path

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


def missing_files(version_dir: Path) -> list[str]:
    """The files of VERSION_FILES that ``version_dir`` lacks (empty for a complete version)."""
    return [name for name in VERSION_FILES if not (version_dir / name).is_file()]
