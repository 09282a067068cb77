"""Shared fixtures: a real model trained by the project's own training code on synthetic shapes."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.synthetic import write_image_folder

TEST_THREADS = 2


def pytest_configure(config: pytest.Config) -> None:
    # TensorFlow's pools can be sized only before its first op, and any test may run first (a Keras
    # layer built in a test would otherwise make the session's training fixture fail to set them).
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TEST_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("shapes"), train_per_class=40, test_per_class=10)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, shapes_dataset: Path) -> Path:
    """``models/shapes`` holding version 1, exported by ``training.train`` (tutorial-rgb, a few epochs)."""
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("models")
    out = root / "shapes"
    train(TrainConfig(recipe="tutorial-rgb", data=shapes_dataset, out=out, epochs=4, batch_size=32, seed=0,
                      val_size=None, threads=TEST_THREADS, cache_dir=None, run_dir=root / "run", resume=False,
                      verbose=0, timing_seconds=0.05))
    return out
