"""Write the training command's exact train/validation split to an .npz outside the project.

For ``bench/airbench94_reference.py``, which runs in a PyTorch environment without TensorFlow:
both sides then train and validate on the same 45,000 / 5,000 images. The arrays are derived
from the CIFAR-10 data, so the default path is outside the repository; never commit them.

    .venv/bin/python bench/export_split.py --data ../shared/data/cifar10-train-jpeg.tar.gz
"""

import argparse
from pathlib import Path

import numpy as np

from training.data import default_val_size, load_image_folder, stratified_split

DEFAULT_OUT = Path("/tmp/cifar10-split.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder directory or archive")
    parser.add_argument("--seed", type=int, default=0, help="the training command's --seed (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default {DEFAULT_OUT})")
    args = parser.parse_args()

    dataset = load_image_folder(args.data, cache_dir=None)
    train, val = stratified_split(dataset.train, default_val_size(len(dataset.train.labels)), args.seed)
    np.savez(args.out, train_images=train.images, train_labels=train.labels,
             val_images=val.images, val_labels=val.labels)
    print(f"wrote {args.out}: {len(train.labels)} train, {len(val.labels)} validation images")


if __name__ == "__main__":
    main()
