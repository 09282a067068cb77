"""Offline training: CIFAR-10 to a versioned TensorFlow SavedModel with reports.

TensorFlow and Keras are imported here, first, with their C++ start-up notices (absl's, oneDNN's,
the CPU-instruction one) kept out of the command's output, as the service keeps them out of its log:
``python -m training --help`` prints the help alone. TF_CPP_MIN_LOG_LEVEL=0 shows them.
"""

from core.tensorflow_runtime import quiet_tensorflow, tensorflow_notices_hidden

quiet_tensorflow("info")
with tensorflow_notices_hidden():
    import keras  # noqa: F401  (loaded now, quietly; every training module uses it)
    import tensorflow  # noqa: F401
