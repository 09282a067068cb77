"""A saliency map drawn over the 32x32 image as a PNG: blue where hiding a patch changed nothing, through
cyan and yellow, to red where hiding it lowered the explained class's probability most."""

import io

import numpy as np
from PIL import Image

SCALE = 4  # 32x32 -> 128x128, each model pixel a 4x4 block: readable without blurring what the model saw
ALPHA = 0.55  # share of the colour in each pixel; the rest is the image, so the object stays recognisable
# A jet-like ramp: (position, RGB) stops, interpolated linearly.
RAMP = ((0.0, (0, 0, 160)), (0.35, (0, 200, 255)), (0.65, (255, 230, 0)), (1.0, (230, 0, 0)))
LEGEND = ("Red: hiding this area lowers the answer's probability most; blue: hiding it changes little.")


def normalised(saliency: np.ndarray) -> np.ndarray:
    """The map's positive part scaled to 0..1 (all zeros when hiding no patch lowered the class)."""
    positive = np.clip(saliency.astype(np.float64), 0.0, None)
    peak = positive.max()
    return positive / peak if peak > 0 else positive


def colours(heat: np.ndarray) -> np.ndarray:
    """0..1 ``heat`` -> float RGB 0..255 along RAMP."""
    stops = np.array([stop for stop, _ in RAMP])
    rgb = np.array([colour for _, colour in RAMP], dtype=np.float64)
    return np.stack([np.interp(heat, stops, rgb[:, channel]) for channel in range(3)], axis=-1)


def overlay(image: np.ndarray, saliency: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """uint8 RGB ``(32 * scale, 32 * scale, 3)``: ``image`` blended with the coloured map, enlarged."""
    blended = (1 - ALPHA) * image.astype(np.float64) + ALPHA * colours(normalised(saliency))
    picture = np.clip(blended.round(), 0, 255).astype(np.uint8)
    return picture.repeat(scale, axis=0).repeat(scale, axis=1)


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
