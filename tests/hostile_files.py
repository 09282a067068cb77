"""Bytes of hostile and unusual uploads, made in the tests: nothing is shipped or downloaded."""

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def photo(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """A small image with some structure (a gradient plus noise), so encoders have real content."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), np.full_like(xx, 128)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def good_png() -> bytes:
    return encode(photo(), "PNG")


def good_jpeg() -> bytes:
    return encode(photo(64, 64), "JPEG", quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(width: int, height: int, color_type: int = 2, bit_depth: int = 8, extra: bytes = b"") -> bytes:
    """A valid PNG of one flat colour, compressed row by row: a 12000x12000 one is ~140 KB to send and
    needs no more memory to make than one row. ``color_type`` 0 = gray, 2 = RGB, 3 = palette, 6 = RGBA."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = b"\x00" + b"\x80" * (width * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but whose data is a few bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def corrupted_png() -> bytes:
    """Valid signature and header, then an IDAT whose deflate stream is garbage."""
    header = struct.pack(">IIBBBBB", 40, 40, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 200)
            + png_chunk(b"IEND", b""))


def corrupted_jpeg() -> bytes:
    """A JPEG whose frame header (SOF0) declares zero components."""
    data = bytearray(good_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 0  # number of components
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("P", (20, 20), color) for color in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def png_16bit() -> bytes:
    gradient = (np.arange(30 * 30, dtype=np.uint16).reshape(30, 30) * 70).astype(np.uint16)
    return encode(Image.fromarray(gradient), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(photo(40, 40).convert("CMYK"), "JPEG")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (24, 24), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (6, 6, 18, 18))
    return encode(image, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    return encode(photo(60, 30), "JPEG", exif=exif.tobytes())


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body from (field name, file name or None, bytes) parts, written by hand so
    the tests can send what no well-behaved client library would."""
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
                      .encode("utf-8", "surrogatepass") + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
