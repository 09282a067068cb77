"""Out-of-distribution image sets for bench/ood.py, made offline: by code, or from data that ship inside
installed packages (scikit-learn's digits, matplotlib's sample photographs). Each maker returns uint8
``(n, 32, 32, 3)`` RGB, reproducible for a seed. docs/ood.md lists them with their sources.
"""

import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


# Far OOD: nothing like a photograph; the targets (AUROC >= 0.90) apply to digits, text and noise.
FAR_SETS = ("digits", "text", "noise")
SETS: dict[str, tuple[Callable[[int, np.random.Generator], np.ndarray], int]] = {
    "digits": (digits, 1000),
    "text": (text, 1000),
    "noise": (noise, 1000),
    "flat_colours": (flat_colours, 500),
    "photo_tiles": (photo_tiles, 1000),
}


def make_sets(scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Every set, ``scale`` times its default size (at least 10 images each)."""
    return {name: make(max(10, int(size * scale)), np.random.default_rng([seed, index]))
            for index, (name, (make, size)) in enumerate(SETS.items())}
