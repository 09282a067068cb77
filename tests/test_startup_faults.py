"""Startup faults stop the real server fast with one line naming the path and the fix; readiness waits for
the warm-up while liveness answers at once."""

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import ClassifierService
from app.settings import Settings
from core.contract import METADATA_FILE, SAVED_MODEL_FILE
from tests import hostile_files as files
from tests.servers import spawn_server

# The bound for every fault. Every fault here is found from the files alone (saved_model.pb
# parsed with protobuf; serving never imports TensorFlow), before OpenVINO loads anything.
STARTUP_FAULT_S = 10.0


def copy_model(trained_model_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models" / "broken"
    shutil.copytree(trained_model_dir, root)
    return root


def missing_directory(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "no-such-model", "does not exist"


def empty_directory(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "empty"
    root.mkdir()
    return root, "has no version folders"


def corrupt_saved_model(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    root = copy_model(trained_model_dir, tmp_path)
    (root / "1" / SAVED_MODEL_FILE).write_bytes(b"\x08\x01\x12\xff" + bytes(range(256)) * 8)
    return root, "is not a loadable SavedModel"


def missing_metadata(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    root = copy_model(trained_model_dir, tmp_path)
    (root / "1" / METADATA_FILE).unlink()
    return root, f"{METADATA_FILE} is missing"


def wrong_signature(trained_model_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A real SavedModel whose serving_default takes float32 28x28x1 images (an MNIST-shaped model)."""
    import tensorflow as tf

    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": tf.nn.softmax(tf.reshape(images, [-1, 784])[:, :10])}

    module = Wrong()
    version = tmp_path / "models" / "wrong" / "1"
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.serve})
    metadata = json.loads((trained_model_dir / "1" / METADATA_FILE).read_text())
    (version / METADATA_FILE).write_text(json.dumps(metadata))
    return version.parent, "does not match the contract"


FAULTS: list[Callable[[Path, Path], tuple[Path, str]]] = [
    missing_directory, empty_directory, missing_metadata, corrupt_saved_model, wrong_signature,
]


@pytest.mark.parametrize("make_fault", FAULTS, ids=[fault.__name__ for fault in FAULTS])
def test_bad_model_exits_nonzero_fast_with_one_line(make_fault: Callable[[Path, Path], tuple[Path, str]],
                                                    trained_model_dir: Path, tmp_path: Path) -> None:
    model_dir, phrase = make_fault(trained_model_dir, tmp_path)
    started = time.monotonic()
    server = spawn_server(model_dir, tmp_path / "server.log")
    try:
        returncode = server.process.wait(timeout=STARTUP_FAULT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"still running after {STARTUP_FAULT_S} s:\n{server.log()[-2000:]}")
    elapsed = time.monotonic() - started
    output = server.log()
    print(f"{make_fault.__name__}: exit {returncode} after {elapsed:.1f} s")
    assert returncode != 0, output
    assert elapsed < STARTUP_FAULT_S, f"took {elapsed:.1f} s:\n{output}"
    messages = [line for line in output.splitlines() if line.startswith("ERROR:") and "startup failed" not in line]
    assert len(messages) == 1, output
    assert phrase in messages[0] and str(model_dir) in messages[0], messages[0]
    assert "python -m training" in messages[0] or "Re-export" in messages[0], messages[0]
    assert "Traceback" not in output


def test_readyz_is_503_until_warm_while_livez_is_200(trained_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_warm_up = ClassifierService.warm_up

    def held_warm_up(self: ClassifierService) -> None:
        assert release.wait(60), "the test never released the warm-up"
        real_warm_up(self)

    monkeypatch.setattr(ClassifierService, "warm_up", held_warm_up)
    app = create_app(Settings(model_dir=trained_model_dir, inference_threads=1, decode_threads=1))
    upload = {"file": ("a.png", files.good_png(), "image/png")}
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/livez").json() == {"status": "ok"}
            warming = client.get("/readyz")
            assert warming.status_code == 503 and warming.json() == {"status": "warming up"}
            refused = client.post("/predict", files=upload)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "warming up" in refused.json()["detail"]
            time.sleep(0.1)
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never became ready after the warm-up was released"
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"status": "ok"}
        assert client.post("/predict", files=upload).status_code == 200
