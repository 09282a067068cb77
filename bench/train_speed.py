"""Training and inference speed of one recipe's network, measured side by side in one run.

    python bench/train_speed.py --recipe airbench [--threads 2] [--steps 6] [--precision P] [--jit-compile]
                                [--train-only]

Training: images/s of the recipe's own optimiser, batch size and precision on random data; ``--precision``
and ``--jit-compile`` (XLA on the train step, which Keras leaves off on a CPU) time the alternatives that
docs/training.md compares, one process per row.
Inference: images/s of the exported SavedModel signature at batch 1 and 256 for each
test-time augmentation (none, flip, flip-translate; the recipe's own is marked), the
parameter count, and the FLOPs per image counted from the layer shapes.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench.paths import json_output
from core.contract import INPUT_NAME, LEVELS, level_named
from core.cpus import available_cpus
from core.tensorflow_runtime import set_tensorflow_threads
from training import signatures
from training.cli import add_recipe_option
from training.recipes import RECIPES
from training.train import training_precision


def conv_dense_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass: Conv2D and Dense layers (the rest is negligible)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += kh * kw * cin * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


PRECISIONS = ("recipe", "float32", "mixed_bfloat16")


def dtype_policy(recipe_name: str, precision: str) -> str:
    """``precision``, or for "recipe" what ``python -m training train`` uses for the recipe on this CPU: its
    bfloat16 only with bfloat16 instructions (emulated, the wide network's step takes minutes)."""
    if precision != "recipe":
        return precision
    return training_precision(RECIPES[recipe_name])


def train_images_per_second(recipe_name: str, steps: int, policy: str,
                            jit_compile: bool = False) -> tuple[float, float]:
    """Images/s and images per CPU-second of ``model.fit`` on random data: the recipe's network, optimiser and
    batch size, under the dtype ``policy``, with or without XLA. The second compares runs taken while the host
    gave the process more or fewer cores (docs/training.md)."""
    recipe = RECIPES[recipe_name]
    keras.config.set_dtype_policy(policy)
    model = recipe.build()
    model.compile(optimizer=recipe.make_optimizer(1000),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
                  jit_compile=jit_compile)
    batch = recipe.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * steps, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, batch * steps), 10)
    model.fit(images[:batch], labels[:batch], batch_size=batch, epochs=1, verbose=0)  # compile, warm caches
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(images, labels, batch_size=batch, epochs=1, verbose=0)
    return len(images) / (time.perf_counter() - started), len(images) / (time.process_time() - cpu_started)


def inference_images_per_second(signature, batch: int, seconds: float = 3.0) -> tuple[float, float]:
    """(images/s, median ms per call) for repeated calls of ``batch`` images."""
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    signature(**{INPUT_NAME: images})
    durations = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(durations) < 5:
        started = time.perf_counter()
        signature(**{INPUT_NAME: images})
        durations.append(time.perf_counter() - started)
    return batch * len(durations) / sum(durations), 1000 * float(np.median(durations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_option(parser, "the recipe whose network, optimiser and batch size are timed")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--steps", type=int, default=6, help="training steps timed")
    parser.add_argument("--precision", choices=PRECISIONS, default="recipe",
                        help="the training step's dtype policy (default: the recipe's, as training picks it "
                        "on this CPU)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--train-only", action="store_true", help="time the training step only, no inference")
    parser.add_argument("--json", type=json_output, default=None, help="also write the figures here")
    args = parser.parse_args()
    set_tensorflow_threads(args.threads)

    recipe = RECIPES[args.recipe]
    policy = dtype_policy(args.recipe, args.precision)
    train_rate, train_rate_per_cpu = train_images_per_second(args.recipe, args.steps, policy, args.jit_compile)
    keras.config.set_dtype_policy("float32")
    model = recipe.build()
    if recipe.data_init:
        recipe.data_init(model, np.random.default_rng(2).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), 0)
    figures: dict[str, object] = {
        "recipe": args.recipe, "threads": args.threads, "params": int(model.count_params()),
        "train_precision": policy, "train_jit_compile": args.jit_compile,
        "train_batch_size": recipe.batch_size, "train_images_per_second": round(train_rate, 1),
        "train_images_per_cpu_second": round(train_rate_per_cpu, 1),
        "train_cpus_busy": round(train_rate / train_rate_per_cpu, 2),
        "epoch_seconds_45k": round(45000 / train_rate, 1), "recipe_tta": level_named(recipe.default_level).tta,
    }
    if args.train_only:
        report(figures, args.json)
        return
    with tempfile.TemporaryDirectory() as directory:
        signatures.write_saved_model(Path(directory), model, signatures.level_signatures(
            model, {level.name: 1.0 for level in LEVELS}, recipe.default_level, None))
        saved = tf.saved_model.load(directory)
        for level in LEVELS:
            tta = level.tta
            rate_1, latency_1 = inference_images_per_second(saved.signatures[level.name], 1)
            rate_256, _ = inference_images_per_second(saved.signatures[level.name], 256)
            figures |= {
                f"{tta}:flops_per_image": 2 * conv_dense_macs(model) * level.views,
                f"{tta}:images_per_second_batch_1": round(rate_1, 1),
                f"{tta}:latency_ms_batch_1": round(latency_1, 2),
                f"{tta}:images_per_second_batch_256": round(rate_256, 1),
            }
    report(figures, args.json)


def report(figures: dict[str, object], json_path: Path | None) -> None:
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
