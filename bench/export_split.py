"""Write the training command's exact train/validation split to an .npz outside the project.

For ``bench/airbench94_reference.py``, which runs in a PyTorch environment without TensorFlow:
both sides then train and validate on the same 45,000 / 5,000 images. The arrays are derived
from the CIFAR-10 data, so the default path is outside the repository; never commit them.

    .venv/bin/python bench/export_split.py --data ../shared/data/cifar10-train-jpeg.tar.gz

``--indices FILE.npz`` writes only which images are held out (their positions in the archive's order
and their labels, a few kilobytes), for ``bench/screen_recipes.py``, which decodes the archive itself.
"""

import argparse
from pathlib import Path

import numpy as np

from training.data import DatasetError, Split, default_val_size, load_image_folder, stratified_split

DEFAULT_OUT = Path("/tmp/cifar10-split.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder directory or archive")
    parser.add_argument("--seed", type=int, default=0,
                        help="the validation split's seed: the training command's --split-seed, else its --seed "
                        "(default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default {DEFAULT_OUT})")
    parser.add_argument("--indices", type=Path, help="write only the validation images' positions and labels here")
    args = parser.parse_args()

    try:
        dataset = load_image_folder(args.data, cache_dir=None)
    except DatasetError as error:
        parser.error(str(error))
    if args.indices:
        positions = Split(np.arange(len(dataset.train.labels)), dataset.train.labels)
        _, val = stratified_split(positions, default_val_size(len(dataset.train.labels)), args.seed)
        with args.indices.open("wb") as stream:  # as given: np.savez would add .npz to another name
            np.savez(stream, val_index=val.images, val_labels=val.labels)
        print(f"wrote {args.indices}: the positions of {len(val.labels)} validation images")
        return
    train, val = stratified_split(dataset.train, default_val_size(len(dataset.train.labels)), args.seed)
    np.savez(args.out, train_images=train.images, train_labels=train.labels,
             val_images=val.images, val_labels=val.labels)
    print(f"wrote {args.out}: {len(train.labels)} train, {len(val.labels)} validation images")


if __name__ == "__main__":
    main()
