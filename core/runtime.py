"""What runs a served model: the small interface between a version folder and the code that calls it.

A runtime loads one checked version folder (core.versions does the checks first), offers its accuracy
levels, and turns a uint8 batch ``(n, 32, 32, 3)`` into float32 probabilities ``(n, 10)`` at one level.
The batcher, the model watcher, promote's trial run and the benchmarks reach it through
:class:`core.versions.LoadedModel`. The service's runtime is OpenVINO (core.openvino_runtime);
bench/tensorflow_runtime.py implements the same interface with TensorFlow, only to measure the old path.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from core.level_table import LevelTable


@dataclass(frozen=True)
class RuntimeOptions:
    """How a loaded model may use the machine."""

    threads: int | None = None  # inference threads per batch (INFERENCE_THREADS); None: the runtime's default
    concurrency: int = 1  # batches that may run at once (BATCH_CONCURRENCY): one infer request each per level


DEFAULT_OPTIONS = RuntimeOptions()  # the runtime's own thread count, one batch at a time

class ModelRuntime(Protocol):
    """One loaded version folder, ready to answer at each of its levels."""

    @property
    def levels(self) -> tuple[str, ...]: ...

    def describe(self) -> str:
        """One line for the debug log: where each level came from, its precision and threads."""
        ...

    def run(self, images: np.ndarray, level: str) -> np.ndarray:
        """uint8 ``(n, 32, 32, 3)`` -> float32 ``(n, 10)`` probabilities at ``level`` (one of ``levels``).
        Safe to call from ``concurrency`` threads at once."""
        ...

    def call_size(self, level: str) -> int | None:
        """The most images one model call takes at ``level`` (a larger batch runs as several); None: any.
        Warming a model up with a batch of this size prepares it for every larger one."""
        ...


# (version folder, its level table, options) -> the loaded runtime; raises on a folder it cannot load.
RuntimeLoader = Callable[[Path, LevelTable, RuntimeOptions], ModelRuntime]
