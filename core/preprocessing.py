"""The one function that turns image bytes into what the model sees.

Both the service (every upload) and the training command (every dataset file, every
report image) call :func:`image_bytes_to_array`, so a picture is treated the same way at
training and at serving time.

Conversion rules, chosen so a person gets what they would expect:
- EXIF orientation is applied first, so a photo taken sideways is classified upright.
- Animated images (GIF, WebP, multi-page TIFF) use their first frame.
- Transparency (RGBA, LA, palette with a transparent colour) is composited on white,
  the way viewers show such images on a page.
- Grayscale becomes gray RGB, CMYK and YCbCr are converted to RGB, 16-bit and 32-bit
  images are scaled to 8 bits by their full range.
- Non-square images are centre-cropped to a square before resizing: CIFAR-10 objects are
  centred and undistorted, so cropping keeps shapes as the model learned them, where
  squashing would stretch them. Extreme aspect ratios simply keep their central square.
- The square is resized to 32x32 with Pillow's antialiasing box/Lanczos filter.
- A square of 6x32 pixels or more is first box-averaged by an integer factor to 3x-6x the model
  size, then Lanczos-resized (Pillow's ``reducing_gap=3``), converting a strip of rows at a time:
  memory stays near the decoded frame whatever the mode conversion costs, so a 90 KB 16-bit PNG
  cannot make a request use a gigabyte.
"""

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.contract import IMAGE_SIZE

# The formats the service accepts, as people write them; anything else is refused before decoding.
# Every other form of the list is derived from this one: Pillow's format names (upper case), the
# media types (each is image/<name in lower case>) and the phrase used in messages and in /docs.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF")
ALLOWED_FORMATS: frozenset[str] = frozenset(name.upper() for name in ACCEPTED_FORMATS)
ALLOWED_MEDIA_TYPES: tuple[str, ...] = tuple(f"image/{name.lower()}" for name in ACCEPTED_FORMATS)
ACCEPTED_FORMATS_TEXT = ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1]  # "JPEG, ... or TIFF"
JPEG_WITH_MORE_IMAGES = "MPO"  # Pillow's name for a JPEG whose MPF segment lists further images
DEFAULT_MAX_PIXELS = 40_000_000  # the service's MAX_IMAGE_PIXELS default and the training loader's limit
REDUCE_GAP = 3  # box-average only down to this many times the model size, so Lanczos still does the last step
STRIP_ROWS = 256  # rows converted at once while reducing a large image
LANCZOS_SUPPORT = 2.5  # Pillow's Lanczos support (3) less half a pixel, in output pixels
# The rule between 400 and 415: 415 for anything that is not an image format we take, 400 for empty,
# truncated or undecodable data of a format we take. Pillow cannot open either kind, so the first bytes
# decide: a file that starts like one of ours is broken (400), any other is another format (415).
# The web page (app/static/page.js) refuses the same files by the same bytes before sending them.
FORMAT_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (  # name, ((offset, bytes), ...)
    ("JPEG", ((0, b"\xff\xd8\xff"),)),
    ("PNG", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("GIF", ((0, b"GIF8"),)),
    ("WEBP", ((0, b"RIFF"), (8, b"WEBP"))),
    ("BMP", ((0, b"BM"),)),
    ("TIFF", ((0, b"II*\x00"),)),
    ("TIFF", ((0, b"MM\x00*"),)),
    ("TIFF", ((0, b"II+\x00"),)),  # BigTIFF
    ("TIFF", ((0, b"MM\x00+"),)),
)
# Files people upload by mistake that Pillow cannot open: named in their 415.
# Matched on the first bytes (after leading whitespace for the text formats), never on the file name.
DOCUMENT_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"<!doctype html", "HTML"),
    (b"<html", "HTML"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "GZIP"),
)
WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An input that cannot become a model input. ``kind`` says which rule it broke."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class EmptyImageError(ImageError):
    def __init__(self) -> None:
        super().__init__("empty", "The file is empty: send the bytes of an image.")


class UndecodableImageError(ImageError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            "undecodable",
            f"The file could not be read as an image ({detail}). "
            f"Send a complete {ACCEPTED_FORMATS_TEXT} file.",
        )


class UnsupportedFormatError(ImageError):
    def __init__(self, image_format: str | None) -> None:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        if image_format is None:
            message = (f"The file is not an image in a format the service takes: its first bytes are not those "
                       f"of {ACCEPTED_FORMATS_TEXT}, whatever its name. Convert it to one of these and send it "
                       "again.")
        else:
            message = f"Image format {image_format} is not supported. Send one of: {allowed}."
        super().__init__("unsupported", message)


class TooManyPixelsError(ImageError):
    def __init__(self, max_pixels: int, width: int | None = None, height: int | None = None) -> None:
        size = f"{width}x{height} = {width * height:,} pixels" if width and height else "too large"
        super().__init__(
            "too_large",
            f"The image is {size}, over the limit of {max_pixels:,} pixels. "
            "Scale it down before sending.",
        )


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Identify ``data`` by its bytes and check format and size before any pixel is decoded."""
    if not data:
        raise EmptyImageError()
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies below; Pillow's bomb warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed is not None:
            raise UndecodableImageError(f"it starts like a {claimed} file, but its data is broken") from None
        raise UnsupportedFormatError(sniff_document(data)) from None
    except (OSError, ValueError, SyntaxError) as error:
        if sniff_format(data) is None:  # a plugin for some other format took it and failed: not ours
            raise UnsupportedFormatError(sniff_document(data)) from None
        raise UndecodableImageError(_short(error)) from None
    except Image.DecompressionBombError:
        # Pillow's own guard fires first for sizes far beyond any sane limit.
        raise TooManyPixelsError(max_pixels) from None
    # Pillow calls a JPEG "MPO" when an MPF segment lists more than one image: phones' HDR photos (iPhone gain
    # maps, Android Ultra HDR) and many cameras'. Its first frame, the one decoded, is the ordinary photo.
    if image.format not in ALLOWED_FORMATS and image.format != JPEG_WITH_MORE_IMAGES:
        raise UnsupportedFormatError(image.format)
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixelsError(max_pixels, width, height)
    return image


def sniff_format(data: bytes) -> str | None:
    """The accepted format ``data`` starts like, if any (whether or not the rest is valid)."""
    for name, parts in FORMAT_SIGNATURES:
        if all(data[offset:offset + len(part)] == part for offset, part in parts):
            return name
    return None


def sniff_document(data: bytes) -> str | None:
    """The name of a well-known non-image format ``data`` starts with, if any."""
    head = data[:512].lstrip().lower()
    for signature, name in DOCUMENT_SIGNATURES:
        if head.startswith(signature.lower()):
            return name
    return None


def upright_first_frame(image: Image.Image) -> Image.Image:
    image.seek(0)
    # In place: a copy of a full-size frame would double the memory a large upload costs.
    ImageOps.exif_transpose(image, in_place=True)
    return image


def _as_rgb(image: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    """8-bit RGB of an upright frame; ``extrema`` is the whole frame's range when ``image`` is a strip of it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _scale_to_8bit(image, extrema)
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # CMYK (Pillow undoes Adobe's inverted CMYK JPEGs itself), YCbCr, L, 1: plain conversion.
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Crop the central square and resize it to ``size`` x ``size`` with antialiasing."""
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def reduced_square(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """:func:`center_crop_resize` of a large upright frame the way Pillow's ``resize(reducing_gap=3)``
    does it (box-average by an integer factor, then Lanczos), but converting to RGB one strip of rows
    at a time, so no second full-size frame is ever held."""
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    factor = int(side / size / REDUCE_GAP)
    # Average a margin of the filter's support around the square too, as Pillow does.
    support = LANCZOS_SUPPORT * side / size
    left, top = max(0, int(box[0] - support)), max(0, int(box[1] - support))
    right, bottom = min(width, math.ceil(box[2] + support)), min(height, math.ceil(box[3] + support))
    extrema = image.getextrema() if image.mode in ("I", "F") else None
    reduced = Image.new("RGB", (math.ceil((right - left) / factor), math.ceil((bottom - top) / factor)))
    rows = factor * max(1, STRIP_ROWS // factor)
    for y in range(top, bottom, rows):
        strip = image.crop((left, y, right, min(y + rows, bottom)))
        reduced.paste(_as_rgb(strip, extrema).reduce(factor), (0, (y - top) // factor))
    inner = ((box[0] - left) / factor, (box[1] - top) / factor, (box[2] - left) / factor, (box[3] - top) / factor)
    return reduced.resize((size, size), Image.Resampling.LANCZOS, box=inner)


def image_bytes_to_array(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of any allowed image format -> ``uint8`` array of shape ``(32, 32, 3)``, RGB."""
    return opened_image_to_array(open_image(data, max_pixels), max_pixels)


def opened_image_to_array(image: Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`image_bytes_to_array` of an image :func:`open_image` has opened (and checked); closes it."""
    try:
        upright = upright_first_frame(image)
        if min(upright.size) >= 2 * REDUCE_GAP * IMAGE_SIZE:
            small = reduced_square(upright)
        else:
            rgb = _as_rgb(upright)
            small = rgb if rgb.size == (IMAGE_SIZE, IMAGE_SIZE) else center_crop_resize(rgb)
        array = np.asarray(small, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise TooManyPixelsError(max_pixels, *image.size) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
        raise UndecodableImageError(_short(error)) from None
    finally:
        image.close()
    return array


def _scale_to_8bit(image: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    low, high = extrema or (float(values.min()), float(values.max()))
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    span = high - low if high > low else 1.0
    scaled = np.clip((values - low) * (255.0 / span), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
