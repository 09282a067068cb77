"""How good a teacher would an ensemble be? Each model's and their average's validation accuracy per level.

A distilled student rarely beats its teacher at the teacher's own level (docs/training.md), so a
stronger teacher comes first. This measures the candidates on the training command's validation
split (each model's own, from its metadata.json), before any student is trained from them:

    .venv/bin/python bench/ensemble_teacher.py --data ../shared/data/cifar10-train-jpeg.tar.gz \\
        --teacher models/cifar10/4 --teacher runs/distill-from-4/model
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tensorflow as tf

from bench.paths import recorded_path
from bench.version_split import VersionSplitError, shared_split
from core.contract import LEVELS
from training.calibration import expected_calibration_error
from training.data import default_cache_dir
from training.signatures import predict_saved_model


def level_probabilities(version_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    saved = tf.saved_model.load(str(version_dir))
    return {level.name: predict_saved_model(saved.signatures[level.name], images) for level in LEVELS}


def row(name: str, probabilities: dict[str, np.ndarray], labels: np.ndarray) -> str:
    figures = [f"{np.mean(p.argmax(axis=1) == labels):.2%} (ECE {expected_calibration_error(p, labels):.2%})"
               for p in probabilities.values()]
    return " | ".join([name, *figures])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ImageFolder directory or archive trained on")
    parser.add_argument("--teacher", type=Path, action="append", required=True,
                        help="a model version folder; give it once per member of the ensemble")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow's threads (default 2)")
    parser.add_argument("--val-limit", type=int, default=None,
                        help="the first N validation images only (a quick check)")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    try:  # an average means something only over the same images, so the teachers must share their split
        _, val = shared_split(args.data, args.teacher, default_cache_dir())
    except VersionSplitError as error:
        parser.error(str(error))
    images, labels = val.images[:args.val_limit], val.labels[:args.val_limit]
    members = {recorded_path(teacher): level_probabilities(teacher, images) for teacher in args.teacher}
    average = {level.name: np.mean([m[level.name] for m in members.values()], axis=0) for level in LEVELS}
    print(f"validation accuracy (ECE) on {len(labels)} images | " + " | ".join(level.name for level in LEVELS))
    for name, probabilities in members.items():
        print(row(name, probabilities, labels))
    print(row(f"average of {len(members)}", average, labels))


if __name__ == "__main__":
    main()
