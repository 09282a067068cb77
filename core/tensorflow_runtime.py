"""TensorFlow's import and thread pools, in one explicit place.

TensorFlow's C++ start-up notices (oneDNN, CPU instructions, absl's "before InitializeLog") are
written straight to the process's stderr descriptor, below Python's logging: they are dropped there
while TensorFlow is imported, and left alone when TF_CPP_MIN_LOG_LEVEL=0.
"""

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

logger = logging.getLogger("core.tensorflow_runtime")
# TensorFlow's own C++ threshold: 2 keeps its INFO and WARNING lines out, errors still show; 0 shows all.
QUIET_TENSORFLOW_LEVEL = "2"
SHOW_TENSORFLOW_LEVEL = "0"



def quiet_tensorflow(log_level: str) -> None:
    """Before TensorFlow is imported: its C++ INFO and WARNING lines only at LOG_LEVEL=debug.
    An operator's own TF_CPP_MIN_LOG_LEVEL wins."""
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = SHOW_TENSORFLOW_LEVEL if log_level == "debug" else QUIET_TENSORFLOW_LEVEL


@contextlib.contextmanager
def tensorflow_notices_hidden() -> Iterator[None]:
    """Around ``import tensorflow``: drop what it writes to file descriptor 2, unless TF_CPP_MIN_LOG_LEVEL=0.

    TF_CPP_MIN_LOG_LEVEL does not reach the notices absl prints before its logging is initialised
    (oneDNN's, twice, and the CPU-instruction one, all during the import), so they are caught at the
    descriptor. Only the import: Python's own stderr writes (log lines) in the block would go too.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == SHOW_TENSORFLOW_LEVEL:
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_tensorflow: ModuleType | None = None
_tensorflow_import = threading.Lock()


def import_tensorflow() -> ModuleType:
    """TensorFlow, imported without the Keras it would otherwise load for ``tf.keras``.

    ``import tensorflow`` imports Keras' optimizers eagerly, about a third of its import time;
    serving runs a plain SavedModel signature and needs none of Keras. With the legacy-Keras flag
    set and tf_keras not installed, TensorFlow skips that import. Only a process that has not
    imported TensorFlow yet is affected (a test run that trains first keeps its Keras).

    Its start-up notices are hidden at file descriptor 2 around the first call only: predict() calls
    this for every batch, from several inference threads and the model loader at once, and hiding
    them on every call let one thread put back another's /dev/null, losing every log line after it.
    """
    global _tensorflow
    if _tensorflow is None:
        with _tensorflow_import:
            if _tensorflow is None:
                if "tensorflow" not in sys.modules:
                    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
                with tensorflow_notices_hidden():  # its C++ start-up notices, unless TF_CPP_MIN_LOG_LEVEL=0
                    import tensorflow as tf
                _tensorflow = tf
    return _tensorflow


def set_tensorflow_threads(threads: int) -> None:
    """Size TensorFlow's intra- and inter-op pools; only the first call in a process takes effect."""
    tf = import_tensorflow()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # Already initialised in this process (a second app in the same test run): keep the pools.
        logger.debug("TensorFlow thread pools already configured")


