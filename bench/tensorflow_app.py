"""``python bench/tensorflow_app.py``: the service as it ran before OpenVINO (TensorFlow computes every batch),
for bench/serve.py's side-by-side comparison. Same settings, same code, only core.versions' runtime swapped."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import core.versions
from bench.tensorflow_runtime import load_tensorflow

core.versions.runtime_loader = load_tensorflow

if __name__ == "__main__":
    from app.__main__ import main

    sys.exit(main())
