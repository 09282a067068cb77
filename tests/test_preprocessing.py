"""The one preprocessing function: every image mode to the RGB a person expects, crop, resize."""

import io

import numpy as np
import pytest
from PIL import Image

from core.preprocessing import (
    ImageError,
    TooManyPixelsError,
    UnsupportedFormatError,
    image_bytes_to_array,
)


def encode(image: Image.Image, image_format: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def solid(mode: str, color: object, size: tuple[int, int] = (40, 40)) -> Image.Image:
    return Image.new(mode, size, color)


@pytest.mark.parametrize(
    ("image_bytes", "expected_rgb"),
    [
        (encode(solid("L", 100)), (100, 100, 100)),
        (encode(solid("RGBA", (255, 0, 0, 0))), (255, 255, 255)),  # fully transparent -> white
        (encode(solid("RGBA", (0, 0, 255, 255))), (0, 0, 255)),
        (encode(solid("LA", (0, 128))), (127, 127, 127)),  # half-transparent black on white
        (encode(solid("1", 1)), (255, 255, 255)),
        (encode(solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0)),
        (encode(solid("RGB", (10, 200, 30)), "BMP"), (10, 200, 30)),
        (encode(solid("RGB", (10, 200, 30)), "TIFF"), (10, 200, 30)),
        (encode(solid("RGB", (10, 200, 30)), "WEBP", lossless=True), (10, 200, 30)),
    ],
    ids=["gray", "transparent", "opaque-rgba", "gray-alpha", "bilevel", "cmyk-jpeg", "bmp", "tiff", "webp"],
)
def test_modes_become_the_rgb_a_person_sees(image_bytes: bytes, expected_rgb: tuple[int, int, int]) -> None:
    array = image_bytes_to_array(image_bytes)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    np.testing.assert_allclose(array.reshape(-1, 3).mean(axis=0), expected_rgb, atol=3)


def test_palette_transparency_is_composited_on_white() -> None:
    image = solid("P", 1, (20, 20))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 10, 20))
    array = image_bytes_to_array(encode(image, transparency=0))
    assert tuple(array[16, 2]) == (255, 255, 255)  # transparent index 0 -> white
    assert tuple(array[16, 30]) == (255, 0, 0)


def test_16_bit_gray_is_scaled_to_8_bits() -> None:
    image = Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16))
    array = image_bytes_to_array(encode(image))
    assert abs(int(array[0, 0, 0]) - 128) <= 1


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [solid("RGB", (255, 0, 0)), solid("RGB", (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    array = image_bytes_to_array(data)
    assert array[..., 0].mean() > 200 and array[..., 2].mean() < 50


def test_a_jpeg_carrying_more_images_is_read_as_its_photo() -> None:
    # A phone's HDR photo: a JPEG whose MPF segment lists a second image (the gain map). Pillow calls it MPO.
    photo, gain_map = solid("RGB", (255, 0, 0), (64, 48)), solid("RGB", (0, 0, 255), (16, 12))
    data = encode(photo, "MPO", save_all=True, append_images=[gain_map], quality=95)
    assert data[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(data)).format == "MPO"
    array = image_bytes_to_array(data)
    assert array[..., 0].mean() > 200 and array[..., 2].mean() < 50


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the red half ends up on top
    array = image_bytes_to_array(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert array[2, 16, 0] > 200 and array[2, 16, 2] < 60  # top is red
    assert array[29, 16, 2] > 200  # bottom is blue


def test_non_square_images_are_centre_cropped_not_squashed() -> None:
    wide = Image.new("RGB", (96, 32), (0, 255, 0))
    wide.paste((255, 0, 0), (32, 0, 64, 32))  # a red centre square between green sides
    array = image_bytes_to_array(encode(wide))
    assert (array[..., 0] > 240).all() and (array[..., 1] < 15).all()


@pytest.mark.parametrize("size", [(1, 1), (1, 400), (400, 1), (33, 31)])
def test_tiny_and_extreme_aspect_ratios_succeed(size: tuple[int, int]) -> None:
    array = image_bytes_to_array(encode(solid("RGB", (9, 99, 199), size)))
    assert array.shape == (32, 32, 3)
    np.testing.assert_array_equal(array[0, 0], (9, 99, 199))


def test_32x32_rgb_passes_through_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_bytes_to_array(encode(Image.fromarray(pixels))), pixels)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(TooManyPixelsError, match="over the limit of 1,000 pixels"):
        image_bytes_to_array(encode(solid("RGB", 0, (50, 50))), max_pixels=1000)


def test_formats_outside_the_allow_list_are_refused() -> None:
    with pytest.raises(UnsupportedFormatError, match="PPM is not supported"):
        image_bytes_to_array(encode(solid("RGB", 0), "PPM"))


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"%PDF-1.4\n"])
def test_garbage_raises_a_typed_error(data: bytes) -> None:
    with pytest.raises(ImageError):
        image_bytes_to_array(data)
