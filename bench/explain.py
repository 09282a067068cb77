"""How long one explanation takes, and example overlays to look at.

    python bench/explain.py --model models/cifar10/4 --count 50            # in process: the model call and
                                                                          # the map, without HTTP
    python bench/explain.py --url http://127.0.0.1:8000 --count 200        # POST /explain at one connection
    python bench/explain.py --model models/cifar10/4 --examples docs/explain --indices 0,1,2,3

In process, each explanation runs as the service runs it (app.saliency's batch through the model's
`fast` signature, the map, the overlay PNG); against a server, validation images are sent one at a
time and the client-side latency is reported. ``--examples`` writes, for validation images chosen by
index, the 32x32 image enlarged beside its overlay (PNG), for a person to check.
"""

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app.overlay import overlay, png_bytes  # noqa: E402
from app.saliency import Occlusion  # noqa: E402
from bench.arguments import at_least_one  # noqa: E402
from core.contract import CLASS_NAMES, NUM_CLASSES  # noqa: E402


def validation_images(model_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    from bench.version_split import shared_split
    from training.data import default_cache_dir

    _, val = shared_split(data, [model_dir], default_cache_dir())
    return val.images, val.labels


def explain_in_process(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(probabilities of the image, its map, the overlay PNG), as app.service.ClassifierService.explain does."""
    occlusion = Occlusion()
    rows = model.predict(occlusion.batch(image), "fast")[:, :NUM_CLASSES]
    saliency = occlusion.saliency(rows, int(rows[0].argmax()))
    return rows[0], saliency, png_bytes(overlay(image, saliency))


def time_in_process(model, images: np.ndarray) -> list[float]:
    for image in images[:3]:  # the first calls trace and allocate
        explain_in_process(model, image)
    times = []
    for image in images:
        started = time.perf_counter()
        explain_in_process(model, image)
        times.append((time.perf_counter() - started) * 1000)
    return times


def time_over_http(url: str, images: np.ndarray) -> list[float]:
    import httpx

    def encoded(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue()

    uploads = [encoded(image) for image in images]
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for index, upload in enumerate([*uploads[:3], *uploads]):
            started = time.perf_counter()
            response = client.post("/explain", files={"file": ("image.png", upload, "image/png")})
            response.raise_for_status()
            if index >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return times


def write_examples(model, images: np.ndarray, labels: np.ndarray, indices: list[int], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        probabilities, saliency, picture = explain_in_process(model, images[index])
        enlarged = np.asarray(Image.fromarray(images[index]).resize((128, 128), Image.Resampling.NEAREST))
        gap = np.full((128, 8, 3), 255, dtype=np.uint8)
        side_by_side = np.concatenate([enlarged, gap, np.asarray(Image.open(io.BytesIO(picture)))], axis=1)
        name = f"val-{index:04d}-{CLASS_NAMES[labels[index]]}.png"
        Image.fromarray(side_by_side).save(folder / name, optimize=True)
        top = np.unravel_index(saliency.argmax(), saliency.shape)
        print(f"{name}: true {CLASS_NAMES[labels[index]]}, predicted {CLASS_NAMES[probabilities.argmax()]} "
              f"({probabilities.max():.2f}), map peak {saliency.max():.3f} at row {top[0]}, column {top[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/cifar10"),
                        help="a version folder, or a model folder for its highest version (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-train-jpeg.tar.gz"))
    parser.add_argument("--url", default=None, help="time POST /explain on this server instead of in process")
    parser.add_argument("--count", type=at_least_one, default=50, help="validation images to explain")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads (default: all CPUs)")
    parser.add_argument("--examples", type=Path, default=None, help="write example overlays into this folder")
    parser.add_argument("--indices", default="0,1,2,3", help="validation images for --examples")
    args = parser.parse_args()
    from bench.version_split import VersionSplitError, version_folder

    try:
        model_dir = version_folder(args.model)
        images, labels = validation_images(model_dir, args.data)
    except VersionSplitError as error:
        parser.error(str(error))
    if args.url:
        times = time_over_http(args.url, images[: args.count])
        where = f"POST /explain on {args.url}, one connection"
    else:
        from core.runtime import RuntimeOptions
        from core.versions import load_model

        model = load_model(model_dir, options=RuntimeOptions(threads=args.threads))
        if args.examples:
            write_examples(model, images, labels, [int(i) for i in args.indices.split(",")], args.examples)
            return
        times = time_in_process(model, images[: args.count])
        where = "in process (model call, map and overlay PNG)"
    print(f"{len(times)} explanations, {where}: p50 {statistics.median(times):.1f} ms, "
          f"p90 {np.percentile(times, 90):.1f} ms, mean {statistics.fmean(times):.1f} ms")


if __name__ == "__main__":
    main()
