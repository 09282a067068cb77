"""Today's TensorFlow serving path behind core.runtime's interface, for the benchmarks only (never the product).

It runs each level's SavedModel signature as the service did before OpenVINO: TensorFlow's pools sized to the
inference threads, and the ``<level>_bfloat16`` twin at the batch sizes metadata.json's ``precision`` chose,
on a CPU with bfloat16 instructions (elsewhere float32, as before). bench/tensorflow_app.py serves with it.
"""

import bisect
from pathlib import Path
from typing import Any

import numpy as np

from core.contract import BFLOAT16, INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME, level_signature
from core.cpus import cpu_flags, has_bfloat16
from core.level_table import LevelTable
from core.runtime import RuntimeOptions
from core.tensorflow_runtime import import_tensorflow, set_tensorflow_threads


class TensorFlowModel:
    def __init__(self, saved: Any, levels: LevelTable, timed: tuple[int, ...], bfloat16: dict[str, tuple[int, ...]],
                 threads: int | None) -> None:
        self.saved = saved  # its signatures hold only weak references to it: kept alive here
        self.table, self.timed, self.bfloat16, self.threads = levels, timed, bfloat16, threads

    @property
    def levels(self) -> tuple[str, ...]:
        return self.table.names

    def describe(self) -> str:
        return f"TensorFlow, {self.threads or 'default'} threads, bfloat16 batch sizes {self.bfloat16 or 'none'}"

    def signature(self, level: str, batch_size: int) -> str:
        if self.table.legacy:
            return SIGNATURE_NAME
        chosen = self.bfloat16.get(level, ())
        index = max(0, bisect.bisect_right(self.timed, batch_size) - 1)
        use = bool(chosen and self.timed and self.timed[index] in chosen)
        return level_signature(level, BFLOAT16) if use else level_signature(level)

    def call_size(self, level: str) -> None:
        return None  # a batch is one call to the signature

    def run(self, images: np.ndarray, level: str) -> np.ndarray:
        tf = import_tensorflow()
        signature = self.saved.signatures[self.signature(level, len(images))]
        return signature(**{INPUT_NAME: tf.constant(images, dtype=tf.uint8)})[OUTPUT_NAME].numpy()


def load_tensorflow(version_dir: Path, levels: LevelTable, options: RuntimeOptions) -> TensorFlowModel:
    import json

    tf = import_tensorflow()
    if options.threads is not None:
        set_tensorflow_threads(options.threads)
    precision = json.loads((version_dir / "metadata.json").read_text()).get("precision") or {}
    timed = tuple(sorted(int(size) for size in precision.get("timed_batch_sizes", [])))
    bfloat16 = {name: tuple(sizes) for name, sizes in (precision.get("bfloat16_batch_sizes") or {}).items()
                if sizes} if has_bfloat16(cpu_flags()) else {}
    return TensorFlowModel(tf.saved_model.load(str(version_dir)), levels, timed, bfloat16, options.threads)
