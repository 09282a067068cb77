"""``cifar10-client`` end to end against one real uvicorn server (``python -m app``): folders, globs,
formats, per-file errors, the progress bar, health and metadata, and a server that is down."""

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cifar10_client import APIError, Client
from cifar10_client.cli import main, overlay_name
from core.contract import CLASS_NAMES
from tests.servers import Server, free_port, running_server
from tests.synthetic import write_jpegs

CLIENT_SCRIPT = Path(sys.executable).parent / "cifar10-client"
# Runs the command in an interpreter where these cannot be imported, as on a machine with the client alone.
WITHOUT_SERVICE_PACKAGES = """
import sys
for name in ("tensorflow", "keras", "numpy", "PIL", "app", "training", "fastapi", "pydantic"):
    sys.modules[name] = None
from cifar10_client.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def server(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("cli-server") / "server.log"
    with running_server(trained_model_dir, log, INFERENCE_THREADS="1", DECODE_THREADS="1") as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/ with JPEGs at the top, PNGs two folders down, and files that are no images by name."""
    root = tmp_path_factory.mktemp("photos")
    write_jpegs(root, 4, seed=1)
    nested = root / "2026" / "summer"
    for path in write_jpegs(nested, 2, seed=2):
        path.rename(path.with_suffix(".PNG"))  # JPEG bytes named PNG: the service sniffs, the name only selects
    (root / "notes.txt").write_text("not an image")
    (root / "2026" / "list.csv").write_text("a,b\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    assert lines[0].split() == ["file", "label", "confidence"]
    return [line.split(None, 2) for line in lines[1:]]


def test_folder_recursively_images_only(server: Server, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "predict", str(photos), "--url", server.url)
    assert code == 0, err
    rows = table_rows(out)
    images = sorted(str(path) for path in photos.rglob("*") if path.suffix in (".jpg", ".PNG"))
    assert sorted(row[0] for row in rows) == images  # the non-image files were never sent
    assert len(rows) == 6
    with Client(server.url) as client:
        for file, label, confidence in rows:
            answer = client.predict(file)
            assert label == answer.label
            assert float(confidence) == pytest.approx(answer.confidence, abs=5e-4)
    assert "skipped 2 file(s) not named as images" in err
    assert "6 file(s): 6 classified, 0 failed" in err


def test_per_file_errors_do_not_stop_the_rest(server: Server, photos: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("these are words, not pixels")
    first, second = sorted(photos.glob("*.jpg"))[:2]
    code, out, err = run(capsys, "predict", str(first), str(broken), str(tmp_path / "missing.jpg"), str(second),
                         "--url", server.url, "--concurrency", "2")
    assert code == 1
    rows = {row[0]: row[1:] for row in table_rows(out)}
    assert rows[str(tmp_path / "missing.jpg")] == ["ERROR", "no such file or folder"]
    with Client(server.url) as client, pytest.raises(APIError) as refused:
        client.predict(broken)
    assert rows[str(broken)] == ["ERROR", f"{refused.value.status} {refused.value.detail}"]
    assert rows[str(first)][0] in CLASS_NAMES and rows[str(second)][0] in CLASS_NAMES
    assert "4 file(s): 2 classified, 2 failed" in err


def test_globs_json_and_csv(server: Server, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = f"{photos}/**/*.PNG"  # quoted, so the command expands it itself
    code, out, _ = run(capsys, "predict", pattern, "--url", server.url, "--format", "json")
    assert code == 0
    answers = json.loads(out)
    assert [item["file"] for item in answers] == sorted(str(path) for path in photos.rglob("*.PNG"))
    for item in answers:
        assert item["label"] in CLASS_NAMES
        assert item["confidence"] == max(item["probabilities"].values())
        assert item["model"] == {"name": "shapes", "version": 1, "level": "fast"}

    code, out, _ = run(capsys, "predict", f"{photos}/*.jpg", f"{photos}/nothing-*.gif", "--url", server.url,
                       "--format", "csv")
    assert code == 1  # the second pattern matches nothing: reported as a failed row
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0] == {"file": f"{photos}/nothing-*.gif", "label": "", "confidence": "",
                       "error": "no file matches this pattern"}
    assert [row["file"] for row in rows[1:]] == sorted(str(path) for path in photos.glob("*.jpg"))
    assert all(row["label"] in CLASS_NAMES and row["error"] == "" for row in rows[1:])


def test_explain_writes_overlay_pngs_and_reports_them(server: Server, photos: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    jpegs = sorted(photos.glob("*.jpg"))[:2]
    folder = tmp_path / "overlays"
    code, out, err = run(capsys, "predict", *map(str, jpegs), "--url", server.url, "--format", "json",
                         "--explain", str(folder))
    assert code == 0, err
    answers = json.loads(out)
    with Client(server.url) as client:
        for item, jpeg in zip(answers, jpegs, strict=True):
            written = Path(item["overlay_file"])
            assert written.parent == folder and written.name.endswith(f"{jpeg.name}.explain.png")
            explained = client.explain(jpeg)
            assert written.read_bytes() == explained.explanation.overlay_png()
            assert item["label"] == explained.label and item["model"]["level"] == "fast"
            assert item["ood_score"] == pytest.approx(explained.ood_score) and "in_distribution" in item
    assert f"wrote 2 overlay PNG(s) into {folder}" in err


def test_an_overlay_that_cannot_be_written_is_that_files_error(server: Server, photos: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    first, second = sorted(photos.glob("*.jpg"))[:2]
    folder = tmp_path / "overlays"
    (folder / overlay_name(str(first))).mkdir(parents=True)  # a folder where the first overlay would go
    code, out, err = run(capsys, "predict", str(first), str(second), "--url", server.url, "--explain", str(folder))
    assert code == 1 and "Traceback" not in err
    rows = {row[0]: row[1:] for row in table_rows(out)}
    unwritable = folder / overlay_name(str(first))
    assert rows[str(first)] == ["ERROR", f"cannot write the overlay {unwritable}: Is a directory"]
    assert rows[str(second)][0] in CLASS_NAMES and (folder / overlay_name(str(second))).is_file()
    assert f"wrote 1 overlay PNG(s) into {folder}" in err


def test_overlay_names_stay_within_a_file_names_255_bytes_and_apart() -> None:
    deep = "/".join(f"directory_name_{depth:02d}" for depth in range(20))
    names = [overlay_name(f"{deep}/{branch}/img.jpg") for branch in ("a", "b")]
    assert all(len(os.fsencode(name)) <= 255 and name.endswith("img.jpg.explain.png") for name in names)
    assert names[0] != names[1]
    assert overlay_name("photos/cat.jpg") == "photos__cat.jpg.explain.png"  # short names as before
    long_name = overlay_name(f"{deep}/{'é' * 200}.jpg")  # two bytes a character: cut between characters
    assert len(os.fsencode(long_name)) <= 255 and long_name.endswith("é.jpg.explain.png")
    assert long_name.encode("utf-8")  # no half character (a surrogate would not encode)


def test_a_file_name_that_is_not_utf8_is_sent_and_printed(server: Server, photos: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.jpg")  # a name written on a Latin-1 system
    latin1.write_bytes(sorted(photos.glob("*.jpg"))[0].read_bytes())
    code, out, err = run(capsys, "predict", str(tmp_path), "--url", server.url)
    assert code == 0, err
    [(name, label, _)] = table_rows(out)
    assert name == str(tmp_path / "caf\\udce9.jpg") and label in CLASS_NAMES


@pytest.mark.parametrize(("argv", "said"), [
    (["health", "--url", "http://localhost:80a"], "argument --url: 'http://localhost:80a' is not a URL"),
    (["health", "--url", "localhost:8000"], "argument --url: 'localhost:8000' is not an http(s) address"),
    (["health", "--retries", "-1"], "argument --retries: must be 0 or more, got -1"),
    (["predict", "a.jpg", "--timeout", "nan"], "argument --timeout: must be a positive number of seconds, got nan"),
    (["predict", "a.jpg", "--concurrency", "0"], "argument --concurrency: must be 1 or more, got 0"),
])
def test_a_bad_command_line_is_a_usage_error(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err


def test_progress_bar_for_many_files(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jpegs(tmp_path, 40, seed=4)
    code, out, err = run(capsys, "predict", str(tmp_path), "--url", server.url, "--progress", "--concurrency", "8")
    assert code == 0
    assert len(out.splitlines()) == 41
    assert "[##############################]  40/40 files" in err
    assert err.count("\r") >= 2  # drawn, then redrawn in place
    assert "files/s" in err


def test_health_and_metadata(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "health", "--url", server.url)
    assert (code, out) == (0, f"{server.url}: ready, model shapes version 1\n")
    with Client(server.url) as client:
        model = client.metadata().model
    code, out, _ = run(capsys, "metadata", "--url", server.url)
    assert code == 0
    assert out.startswith(f"model     shapes version 1 ({model['architecture']}, {model['params']:,} parameters)")
    assert "JPEG" in out and "classes   airplane, automobile" in out
    code, out, _ = run(capsys, "metadata", "--url", server.url, "--format", "json")
    assert code == 0
    assert json.loads(out)["serving"]["accepted_formats"] == ["BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP"]


def test_a_server_that_is_down(photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["predict", str(photos)], ["health"], ["metadata"]):
        code, _, err = run(capsys, *argv, "--url", url)
        assert code == 2, argv
        assert f"cannot reach the service at {url}" in err and "make serve" in err
        assert "Traceback" not in err


def test_runs_without_the_service_packages(server: Server, photos: Path) -> None:
    """No TensorFlow, numpy, Pillow, pydantic or app/: the client needs httpx alone."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_SERVICE_PACKAGES, "predict", str(photos), "--url",
                             server.url, "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 6


def test_console_script_is_installed() -> None:
    result = subprocess.run([str(CLIENT_SCRIPT), "predict", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--concurrency" in result.stdout and "--format" in result.stdout
