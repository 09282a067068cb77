"""Is one model more accurate than another, or is the gap noise? Both measured on the same validation images.
Two models answer most images alike, so the error of their difference is far smaller than the ±0.42 points of one
accuracy on 5,000 images: it comes from the images only one of them gets right (McNemar's test). Per level:
    .venv/bin/python bench/paired_accuracy.py --data ../shared/data/cifar10-train-jpeg.tar.gz \\
        --model models/cifar10/10 --model runs/distill-wide-e30-seed1/model
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.ensemble_teacher import level_probabilities
from bench.paths import recorded_path
from bench.version_split import VersionSplitError, shared_split
from training.data import default_cache_dir


@dataclass(frozen=True)
class PairedDifference:
    only_first: int  # images the first model gets right and the second wrong
    only_second: int
    images: int
    difference: float  # second's accuracy minus first's
    standard_error: float  # of that difference, over the images
    p_value: float  # McNemar's exact two-sided test: the chance of a split this uneven if neither is better


def paired_difference(first_correct: np.ndarray, second_correct: np.ndarray) -> PairedDifference:
    only_first = int(np.sum(first_correct & ~second_correct))
    only_second = int(np.sum(second_correct & ~first_correct))
    images, discordant = len(first_correct), only_first + only_second
    difference = (only_second - only_first) / images
    standard_error = math.sqrt(max(discordant / images - difference**2, 0.0) / images)
    tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1)) / 2**discordant
    return PairedDifference(only_first, only_second, images, difference, standard_error, min(1.0, 2 * tail))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the ImageFolder directory or archive trained on")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="a model version folder; give it twice, the baseline first")
    args = parser.parse_args()
    if len(args.model) != 2:
        parser.error(f"give --model exactly twice (got {len(args.model)})")
    # Each model's own validation split, from its metadata.json: a difference means anything only on the same images.
    try:
        _, val = shared_split(args.data, args.model, default_cache_dir())
    except VersionSplitError as error:
        parser.error(str(error))
    first, second = (level_probabilities(model, val.images) for model in args.model)
    print(f"{recorded_path(args.model[1])} against {recorded_path(args.model[0])}, {len(val.labels)} validation "
          "images (float32, the SavedModel's signatures)")
    print("level | first | second | difference ± standard error | only first right | only second right | p")
    for level in first:
        right_first, right_second = (p[level].argmax(axis=1) == val.labels for p in (first, second))
        paired = paired_difference(right_first, right_second)
        print(f"{level} | {right_first.mean():.2%} | {right_second.mean():.2%} | {paired.difference:+.2%} ± "
              f"{paired.standard_error:.2%} | {paired.only_first} | {paired.only_second} | {paired.p_value:.2f}")


if __name__ == "__main__":
    main()
