"""OpenVINO against TensorFlow on a shipped model: every level's float32 probabilities on the same images.

    python bench/runtime_parity.py --model models/cifar10/4 [--images 200] [--json PATH]

Loads the version folder with the service's runtime (OpenVINO: the export's IR per level, or each level
converted from its signature when the folder has none) with bfloat16 off, runs the same CIFAR-10 JPEGs
(decoded as the service decodes uploads; random pixels when the shared archive is absent) through each
level's SavedModel signature in TensorFlow, and prints the largest probability difference per level and
whether the argmax ever differs. Exit status 1 if any level differs by more than --tolerance.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.arguments import at_least_one  # noqa: E402
from bench.paths import json_output  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/cifar10"),
                        help="a version folder, or a model folder for its highest version (default: the shipped model)")
    parser.add_argument("--images", type=at_least_one, default=200, help="how many JPEGs of the shared archive")
    parser.add_argument("--archive", type=Path, default=None, help="ImageFolder archive (default: the shared one)")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=json_output, default=None)
    args = parser.parse_args()
    from bench.version_split import VersionSplitError, version_folder

    try:
        model_dir = version_folder(args.model)
    except VersionSplitError as error:
        parser.error(str(error))

    import numpy as np

    from bench.serve import ArchiveError, load_jpegs
    from core.contract import NUM_CLASSES
    from core.level_table import FLOAT32_LEVELS
    from core.preprocessing import image_bytes_to_array
    from core.runtime import RuntimeOptions
    from core.tensorflow_runtime import import_tensorflow
    from core.versions import load_version

    try:
        jpegs, source = load_jpegs(args.archive, args.images)
    except ArchiveError as error:
        parser.error(f"{'--archive ' if args.archive else ''}{error}")
    images = np.stack([image_bytes_to_array(data) for data in jpegs])
    started = time.perf_counter()
    model = load_version(model_dir, int(model_dir.name), RuntimeOptions(threads=args.threads),
                         FLOAT32_LEVELS)
    load_s = time.perf_counter() - started
    tf = import_tensorflow()
    saved = tf.saved_model.load(str(model_dir))
    levels = {}
    for level in model.level_names:
        # The runtime's rows carry the feature norm after the ten probabilities (core.ood scores it).
        openvino = model.predict(images, level)[:, :NUM_CLASSES]
        signature = saved.signatures[model.level_table.signature(level)]
        tensorflow = signature(images=tf.constant(images))["probabilities"].numpy()
        levels[level] = {"max_abs_difference": float(np.abs(openvino - tensorflow).max()),
                         "argmax_disagreements": int(np.sum(openvino.argmax(1) != tensorflow.argmax(1)))}
    result = {"model": str(model_dir), "images": len(images), "image_source": source,
              "runtime": model.runtime.describe(), "openvino_load_s": round(load_s, 2), "tolerance": args.tolerance,
              "levels": levels, "within_tolerance": all(v["max_abs_difference"] <= args.tolerance
                                                        for v in levels.values())}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
