"""Shared fixtures: a real model trained by the project's own training code on synthetic shapes."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.synthetic import write_image_folder

if TYPE_CHECKING:
    import httpx

    from tests.servers import Server

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


@pytest.fixture(scope="session")
def levels_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/cifar10`` holding version 1: a tiny model with the three accuracy levels, made in a second."""
    from tests.model_versions import write_levels_model

    root = tmp_path_factory.mktemp("levels-models") / "cifar10"
    root.mkdir()
    write_levels_model(root / "1")
    return root


@pytest.fixture(scope="session")
def protocol_server(levels_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator["Server"]:
    """One real uvicorn process serving the levels model, shared by the serving-protocol test modules."""
    from tests.servers import running_server

    with running_server(levels_model_dir, tmp_path_factory.mktemp("protocols") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def http(protocol_server: "Server") -> Iterator["httpx.Client"]:
    """An HTTP session on :func:`protocol_server`."""
    import httpx

    with httpx.Client(base_url=protocol_server.url, timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, through Playwright (tests/browser.py)."""
    from tests.browser import headless_chromium

    with headless_chromium() as chromium:
        yield chromium
