"""Out-of-distribution image sets for bench/ood.py and bench/ood_served.py, made offline: by code, or from data
that ship inside installed packages (scikit-learn's digits and sample photographs, matplotlib's sample
photographs). Each maker returns uint8 ``(n, 32, 32, 3)`` RGB, reproducible for a seed. docs/ood.md lists them
with their sources. SHIFTS are the other side: benign changes to validation images, which should stay "in".
"""

import argparse
import io
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from core.preprocessing import center_crop_resize

SIZE = 32


def digits(count: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's 8x8 handwritten digits (1,797 ship inside the package), upscaled to 32x32 with bilinear
    interpolation; half white ink on black, half inverted, as a scan or a screenshot would give."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images  # (1797, 8, 8), 0..16
    chosen = pixels[rng.permutation(len(pixels))[:count]]
    out = []
    for index, digit in enumerate(chosen):
        gray = Image.fromarray((digit * (255 / 16)).astype("uint8")).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        array = np.asarray(gray)
        if index % 2:
            array = 255 - array
        out.append(np.repeat(array[..., None], 3, axis=2))
    return np.stack(out)


def text(count: int, rng: np.random.Generator) -> np.ndarray:
    """Rendered text: random words of letters and digits in Pillow's bundled font, random sizes and colours,
    drawn on a 64x64 canvas and downscaled as an upload of a text snippet would be."""
    letters = string.ascii_letters + string.digits
    out = []
    for _ in range(count):
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        ink = tuple(int((b + rng.integers(96, 160)) % 256) for b in background)
        canvas = Image.new("RGB", (64, 64), background)
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=int(rng.integers(12, 30)))
        y = int(rng.integers(-6, 10))
        while y < 64:
            word = "".join(rng.choice(list(letters), int(rng.integers(2, 8))))
            draw.text((int(rng.integers(-8, 8)), y), word, fill=ink, font=font)
            y += int(font.size * rng.uniform(1.0, 1.5))
        out.append(np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
    return np.stack(out)


def flat_colours(count: int, rng: np.random.Generator) -> np.ndarray:
    """One random colour filling the whole image."""
    colours = rng.integers(0, 256, (count, 1, 1, 3))
    return np.broadcast_to(colours, (count, SIZE, SIZE, 3)).astype("uint8")


def noise(count: int, rng: np.random.Generator) -> np.ndarray:
    """Half uniform RGB noise (0..255 per channel), half Gaussian noise around a random colour (sd 20-80)."""
    half = count // 2
    uniform = rng.integers(0, 256, (half, SIZE, SIZE, 3))
    centres = rng.integers(0, 256, (count - half, 1, 1, 3))
    spread = rng.uniform(20, 80, (count - half, 1, 1, 1))
    gaussian = centres + spread * rng.standard_normal((count - half, SIZE, SIZE, 3))
    return np.clip(np.concatenate([uniform, gaussian]), 0, 255).astype("uint8")


def photo_tiles(count: int, rng: np.random.Generator) -> np.ndarray:
    """Square crops (24 to 160 pixels, resized to 32x32) of the photographs that ship with matplotlib
    (mpl-data/sample_data: grace_hopper.jpg, a portrait; Minduka_Present_Blue_Pack.png, a gift box):
    natural-image texture, but none of the ten classes. Nearer to CIFAR than the sets above."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
    photos = [Image.open(folder / name).convert("RGB") for name in names]
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(24, min(160, *photo.size)))
        x = int(rng.integers(0, photo.size[0] - side + 1))
        y = int(rng.integers(0, photo.size[1] - side + 1))
        tile = photo.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        out.append(np.asarray(tile))
    return np.stack(out)


def sample_photo_tiles(count: int, rng: np.random.Generator) -> np.ndarray:
    """Square crops (24 to 200 pixels, resized to 32x32) of the two photographs that ship with scikit-learn
    (``load_sample_images``: china.jpg, a temple; flower.jpg): natural images of none of the ten classes."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(24, 200))
        x = int(rng.integers(0, photo.size[0] - side + 1))
        y = int(rng.integers(0, photo.size[1] - side + 1))
        out.append(np.asarray(photo.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
    return np.stack(out)


def shapes(count: int, rng: np.random.Generator) -> np.ndarray:
    """One to five filled ellipses and rectangles in random colours on a random background, drawn at 128x128
    and downscaled: clip art."""
    out = []
    for _ in range(count):
        canvas = Image.new("RGB", (128, 128), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 6))):
            (left, right), (top, bottom) = np.sort(rng.integers(0, 128, 2)), np.sort(rng.integers(0, 128, 2))
            shape = draw.ellipse if rng.integers(0, 2) else draw.rectangle
            shape([int(left), int(top), int(right) + 4, int(bottom) + 4],
                  fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        out.append(np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
    return np.stack(out)


def gradients(count: int, rng: np.random.Generator) -> np.ndarray:
    """A linear blend between two random colours, left to right or top to bottom."""
    start, end = rng.integers(0, 256, (2, count, 1, 1, 3))
    ramp = np.linspace(0.0, 1.0, SIZE)[np.newaxis, np.newaxis, :, np.newaxis]
    out = np.broadcast_to(start * (1 - ramp) + end * ramp, (count, SIZE, SIZE, 3)).copy()
    out[1::2] = out[1::2].transpose(0, 2, 1, 3)
    return out.astype("uint8")


# Far OOD: nothing like a photograph; the targets (AUROC >= 0.90) apply to digits, text and noise.
FAR_SETS = ("digits", "text", "noise")
SETS: dict[str, tuple[Callable[[int, np.random.Generator], np.ndarray], int]] = {
    "digits": (digits, 1000),
    "text": (text, 1000),
    "noise": (noise, 1000),
    "flat_colours": (flat_colours, 500),
    "photo_tiles": (photo_tiles, 1000),
    # Added after the layer-statistics score was chosen on the five above: they check that choice.
    "sample_photo_tiles": (sample_photo_tiles, 1000),
    "shapes": (shapes, 1000),
    "gradients": (gradients, 500),
}


def make_sets(scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Every set, ``scale`` times its default size (at least 10 images each)."""
    return {name: make(max(10, int(size * scale)), np.random.default_rng([seed, index]))
            for index, (name, (make, size)) in enumerate(SETS.items())}


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def upload(image: Image.Image, size: tuple[int, int], quality: int) -> Image.Image:
    """A 32x32 image as a larger photograph saved as JPEG, then cut and resized as the service does."""
    return center_crop_resize(jpeg(image.resize(size, Image.Resampling.BICUBIC), quality))


# Benign changes to images of the ten classes: a score should keep them "in" about as often as the originals.
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "upload_256": lambda image: upload(image, (256, 256), 90),
    "upload_4x3": lambda image: upload(image, (320, 240), 85),
    "jpeg_50": lambda image: jpeg(image, 50),
    "gray": lambda image: image.convert("L").convert("RGB"),
    "brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.3),
    "darker": lambda image: ImageEnhance.Brightness(image).enhance(0.7),
    "blur": lambda image: image.filter(ImageFilter.GaussianBlur(0.6)),
    "sharpen": lambda image: image.filter(ImageFilter.SHARPEN),
    "mirror": lambda image: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}


def shifted_sets(images: np.ndarray) -> dict[str, np.ndarray]:
    """Each of SHIFTS applied to every image of ``images`` (uint8 ``(n, 32, 32, 3)``)."""
    return {name: np.stack([np.asarray(change(Image.fromarray(image))) for image in images])
            for name, change in SHIFTS.items()}


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """--scale, --val-limit and --shift-images: how many images the OOD benchmarks score (smaller: a quick check)."""
    parser.add_argument("--scale", type=float, default=1.0, help="OOD set sizes, times their defaults")
    parser.add_argument("--val-limit", type=int, default=None, help="use only the first N validation images")
    parser.add_argument("--shift-images", type=int, default=1000,
                        help="validation images each benign shift is applied to")
