"""Properties of the one decode function: any image of any mode, size and allowed format becomes a
32x32x3 uint8 array; any byte string at all becomes that or a typed ImageError, never anything else."""

import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.preprocessing import ImageError, TooManyPixelsError, image_bytes_to_array
from tests import hostile_files as files

# Derandomized: CI explores the same examples every run; scripts/fuzz_decode.py explores new ones.
CI = settings(max_examples=120, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# The modes each allowed format can store, as Pillow writes them.
WRITABLE = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["1", "L", "P"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16"],
}
COMBOS = [(image_format, mode) for image_format, modes in WRITABLE.items() for mode in modes]
FUZZ_MAX_PIXELS = 4_000_000  # as scripts/fuzz_decode.py
LEAKS = re.compile(r"Traceback|/work/|site-packages|\.py\b|0x[0-9a-f]{6,}", re.I)


def random_image(mode: str, width: int, height: int, seed: int, flat: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I", "F"):
        dtype = np.int32 if mode == "I" else np.float32
        values = rng.normal(0, 1e4, (height, width)).astype(dtype)
        image = Image.fromarray(np.full_like(values, values.flat[0]) if flat else values)
        return image if image.mode == mode else image.convert(mode)
    if mode == "I;16":
        values = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        return Image.fromarray(np.full_like(values, values.flat[0]) if flat else values)
    base = Image.frombytes("RGBA", (width, height), rng.integers(0, 256, width * height * 4, dtype=np.uint8)
                           .tobytes())
    if flat:
        base = Image.new("RGBA", (width, height), base.getpixel((0, 0)))
    if mode == "P":
        return base.convert("RGB").quantize(colors=int(rng.integers(2, 256)))
    return base.convert(mode)


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    image_format, mode = draw(st.sampled_from(COMBOS))
    # Mostly small, sometimes over the 192 px side where the strip-by-strip reduction starts.
    side = st.one_of(st.integers(1, 64), st.integers(150, 700))
    width, height = draw(side), draw(side)
    image = random_image(mode, width, height, draw(st.integers(0, 2**32 - 1)), draw(st.booleans()))
    params: dict[str, object] = {}
    if image_format in ("JPEG", "WEBP", "TIFF", "PNG") and draw(st.booleans()):
        exif = Image.Exif()
        exif[files.EXIF_ORIENTATION] = draw(st.integers(1, 8))
        params["exif"] = exif.tobytes()
    if image_format == "PNG" and mode == "P" and draw(st.booleans()):
        params["transparency"] = draw(st.integers(0, 1))
    if image_format == "GIF" and draw(st.booleans()):
        params.update(save_all=True, append_images=[image.copy(), image.transpose(Image.Transpose.ROTATE_180)])
    try:
        return files.encode(image, image_format, **params)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # a mode/option combination this Pillow cannot write
        raise


def assert_model_input_or_typed_error(data: bytes, max_pixels: int = 40_000_000) -> None:
    try:
        array = image_bytes_to_array(data, max_pixels)
    except ImageError as error:
        assert error.kind in {"empty", "undecodable", "unsupported", "too_large"}
        assert error.message and not LEAKS.search(error.message), error.message
        return
    assert isinstance(array, np.ndarray)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


@CI
@given(encoded_images())
def test_every_allowed_image_becomes_a_32x32_rgb_array(data: bytes) -> None:
    array = image_bytes_to_array(data)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


@CI
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"GIF89a\x01\x00\x01\x00")
@example(b"\xff\xd8\xff")
def test_arbitrary_bytes_give_an_array_or_a_typed_error(data: bytes) -> None:
    assert_model_input_or_typed_error(data)


@CI
@given(encoded_images(), st.data())
def test_damaged_images_give_an_array_or_a_typed_error(data: bytes, draws: st.DataObject) -> None:
    damaged = bytearray(data)
    if draws.draw(st.booleans(), label="truncate"):
        damaged = damaged[:draws.draw(st.integers(0, len(damaged)), label="length")]
    for _ in range(draws.draw(st.integers(0, 8), label="flips")):
        if damaged:
            position = draws.draw(st.integers(0, len(damaged) - 1), label="position")
            damaged[position] = draws.draw(st.integers(0, 255), label="byte")
    assert_model_input_or_typed_error(bytes(damaged))


@CI
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 90_000))
def test_the_pixel_limit_is_exact(width: int, height: int, max_pixels: int) -> None:
    data = files.encode(Image.new("RGB", (width, height), (10, 20, 30)), "PNG")
    if width * height > max_pixels:
        try:
            image_bytes_to_array(data, max_pixels)
        except TooManyPixelsError as error:
            assert f"{width}x{height}" in error.message
        else:
            raise AssertionError(f"{width}x{height} passed a limit of {max_pixels}")
    else:
        assert image_bytes_to_array(data, max_pixels).shape == (32, 32, 3)


def test_flat_colour_survives_any_size_and_mode() -> None:
    """The reduction path keeps a flat colour exact: no bias from strips, margins or box averaging."""
    for width, height in ((700, 300), (193, 1000), (32, 32), (1, 400)):
        for mode in ("RGB", "RGBA", "L", "P"):
            image = Image.new("RGB", (width, height), (200, 40, 90)).convert(mode, dither=Image.Dither.NONE)
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            array = image_bytes_to_array(buffer.getvalue())
            expected = np.asarray(image.convert("RGB"))[0, 0]
            assert np.abs(array.astype(int) - expected).max() <= 1, (width, height, mode)


REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
EXPECTED = json.loads((REGRESSIONS / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fuzz_findings_keep_their_outcome(name: str) -> None:
    """Inputs scripts/fuzz_decode.py reached (one per distinct outcome), replayed with the limit it used."""
    data = (REGRESSIONS / name).read_bytes()
    try:
        array = image_bytes_to_array(data, FUZZ_MAX_PIXELS)
    except ImageError as error:
        assert error.kind == EXPECTED[name], error.message
        assert not LEAKS.search(error.message), error.message
        return
    assert EXPECTED[name] == "ok" and array.shape == (32, 32, 3) and array.dtype == np.uint8


FUZZER = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_decode.py"


@pytest.mark.parametrize("engine", ["auto", "hypothesis"])
def test_the_fuzzer_runs(engine: str, tmp_path: Path) -> None:
    """scripts/fuzz_decode.py for one second starts, fuzzes and ends without a finding: `auto` with atheris where
    it is installed (x86-64 Linux, pyproject.toml), else the hypothesis fallback, which is also run on its own
    (it once crashed before its first input)."""
    run = subprocess.run([sys.executable, str(FUZZER), "--engine", engine, "--seconds", "1",
                          "--findings", str(tmp_path / "findings")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert not (tmp_path / "findings").exists() or not any((tmp_path / "findings").iterdir())
    says = run.stdout + run.stderr
    with_atheris = engine == "auto" and importlib.util.find_spec("atheris") is not None
    assert ("stat::number_of_executed_units" if with_atheris else "inputs, no finding") in says, says
    refused = subprocess.run([sys.executable, str(FUZZER), "--seconds", "0"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "--seconds: 0 is below 1" in refused.stderr
