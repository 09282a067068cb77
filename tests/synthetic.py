"""Small synthetic CIFAR-like images the tests make for themselves: ten classes of coloured shapes."""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.contract import CLASS_NAMES

# One (colour, shape) per class: different enough that a small CNN separates them in seconds.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128)]
SHAPES = ["ellipse", "rectangle", "triangle", "ellipse", "rectangle", "triangle", "ellipse", "rectangle",
          "triangle", "cross"]


def shape_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 60, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    scale = size / 32
    x0, y0 = (int(v * scale) for v in rng.integers(2, 10, 2))
    x1, y1 = (int(v * scale) for v in rng.integers(22, 30, 2))
    color = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in PALETTE[label])
    shape = SHAPES[label]
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=color)
    else:
        draw.rectangle(((x0 + x1) // 2 - 3, y0, (x0 + x1) // 2 + 3, y1), fill=color)
        draw.rectangle((x0, (y0 + y1) // 2 - 3, x1, (y0 + y1) // 2 + 3), fill=color)
    return image


def shape_arrays(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    images = np.stack([np.asarray(shape_image(int(label), rng)) for label in labels])
    return images, labels


def write_image_folder(root: Path, train_per_class: int, test_per_class: int = 0, seed: int = 0,
                       suffix: str = ".png") -> Path:
    """``root/train/<class>/NNNN.png`` (and ``test/``) like the shared CIFAR-10 archive."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASS_NAMES):
            if count == 0:
                continue
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                shape_image(label, rng).save(folder / f"{index:04d}{suffix}")
    return root


def write_jpegs(folder: Path, count: int, seed: int = 0, size: int = 48) -> list[Path]:
    """``count`` shape images as JPEG files ``folder/NN-<class>.jpg``, classes in turn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        label = index % len(CLASS_NAMES)
        path = folder / f"{index:02d}-{CLASS_NAMES[label]}.jpg"
        shape_image(label, rng, size=size).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def image_file(seed: int, size: int = 32, image_format: str = "PNG") -> bytes:
    """An encoded shape image, its class ``seed % 10``."""
    buffer = io.BytesIO()
    shape_image(seed % 10, np.random.default_rng(seed), size=size).save(buffer, format=image_format)
    return buffer.getvalue()
