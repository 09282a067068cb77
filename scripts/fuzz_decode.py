"""Fuzz the decode path for a bounded time: ``python scripts/fuzz_decode.py --seconds 300``.

Coverage-guided with atheris (libFuzzer) over Pillow's Python parsers and core.preprocessing, seeded with
one small valid file of every allowed format and the unusual modes. Without atheris it falls back to
hypothesis at the byte level. The property is the one the service relies on: any bytes at all give a
uint8 (32, 32, 3) array or an ImageError (which the service maps to 4xx), never another exception,
which would be a 500. A finding is written to --findings and the run exits non-zero; copy it into
tests/fuzz_regressions/ and tests/test_preprocessing_properties.py replays it on every CI run.
"""

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.arguments import at_least_one  # noqa: E402 - --seconds 0 would be libFuzzer's "no time limit"

# Small enough that every execution is fast; the header checks under test do not depend on the value.
FUZZ_MAX_PIXELS = 4_000_000


def seeds() -> dict[str, bytes]:
    from tests import hostile_files as files

    photo = files.photo(40, 30)
    return {
        "photo.png": files.encode(photo, "PNG"),
        "photo.jpg": files.encode(photo, "JPEG"),
        "photo.webp": files.encode(photo, "WEBP"),
        "photo.bmp": files.encode(photo, "BMP"),
        "photo.tiff": files.encode(photo, "TIFF"),
        "photo-rgba.tiff": files.encode(photo.convert("RGBA"), "TIFF", compression="tiff_lzw"),
        "animated.gif": files.animated_gif(),
        "gray16.png": files.png_16bit(),
        "cmyk.jpg": files.cmyk_jpeg(),
        "palette-transparent.png": files.palette_with_transparency(),
        "exif-rotated.jpg": files.exif_rotated_jpeg(),
        "progressive.jpg": files.encode(photo, "JPEG", progressive=True),
    }


def check(data: bytes) -> None:
    import numpy as np

    from core.preprocessing import ImageError, image_bytes_to_array

    try:
        array = image_bytes_to_array(data, FUZZ_MAX_PIXELS)
    except ImageError:
        return
    if not (isinstance(array, np.ndarray) and array.shape == (32, 32, 3) and array.dtype == np.uint8):
        raise AssertionError(f"decode returned {type(array).__name__} {getattr(array, 'shape', '')}")


def run_atheris(seconds: int, findings: Path, max_len: int) -> None:
    import atheris

    with atheris.instrument_imports(include=["PIL", "core"]):
        import PIL.Image

        import core.preprocessing  # noqa: F401 - instrumented on import

        PIL.Image.init()  # Pillow imports its format plugins lazily: import them here, instrumented

    corpus = Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    findings.mkdir(parents=True, exist_ok=True)
    print(f"atheris: {seconds} s, corpus {corpus}, findings -> {findings}", flush=True)
    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", f"-max_len={max_len}", "-timeout=20",
                   "-rss_limit_mb=3072", f"-artifact_prefix={findings}{os.sep}", "-print_final_stats=1",
                   str(corpus)], check)
    atheris.Fuzz()  # exits the process: 0 when the time ran out, non-zero on a finding


def run_hypothesis(seconds: int, findings: Path, max_len: int) -> None:
    import time

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seed_values = list(seeds().values())
    deadline = time.monotonic() + seconds
    patches = st.lists(st.tuples(st.integers(0, max_len), st.binary(min_size=1, max_size=8)), max_size=8)
    mutated = st.tuples(st.sampled_from(seed_values), patches, st.integers(0, max_len))

    def splice(item: tuple[bytes, list[tuple[int, bytes]], int]) -> bytes:
        data, edits, cut = bytearray(item[0]), item[1], item[2]
        for position, patch in edits:
            at = position % max(len(data), 1)
            data[at:at + len(patch)] = patch
        return bytes(data[:cut] if cut < len(data) else data)

    inputs = st.one_of(st.binary(max_size=max_len), mutated.map(splice))
    runs = 0

    # Rounds of fresh random examples until the time is up: hypothesis itself has no time budget.
    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs)
    def fuzz(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            check(data)
        except Exception:
            findings.mkdir(parents=True, exist_ok=True)
            (findings / f"crash-{runs}.bin").write_bytes(data)
            raise

    print(f"hypothesis: {seconds} s, findings -> {findings}", flush=True)
    try:
        while time.monotonic() < deadline:
            fuzz()
    except Exception as error:  # the property failed: report and exit non-zero
        print(f"FINDING: {type(error).__name__}: {error}", flush=True)
        sys.exit(1)
    print(f"hypothesis: {runs} inputs, no finding", flush=True)


def main() -> None:
    # Pillow warns about every odd TIFF tag it skips; the property is about exceptions, not warnings.
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=at_least_one, default=300, help="how long to fuzz (default 300)")
    parser.add_argument("--findings", type=Path, default=REPO / "test-artifacts" / "fuzz-findings")
    parser.add_argument("--max-len", type=at_least_one, default=32 * 1024, help="longest input tried, in bytes")
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    (run_atheris if engine == "atheris" else run_hypothesis)(args.seconds, args.findings, args.max_len)


if __name__ == "__main__":
    main()
