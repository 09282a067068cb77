"""What the benchmarks read and write: every --json checked before minutes of measuring (bench/paths.py),
how a file is named in what they write, and the JPEGs they load (bench/serve.py), never noise in place of
an archive that was named."""

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.paths import REPO, json_output, recorded_path
from bench.serve import ArchiveError, load_jpegs
from core.contract import CLASS_NAMES
from tests.synthetic import write_jpegs


def test_json_output_makes_its_folder_and_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    assert json_output(str(tmp_path / "results" / "run.json")) == tmp_path / "results" / "run.json"
    assert (tmp_path / "results").is_dir()  # a fresh clone has no bench/results/
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder: name a file in it"):
        json_output(str(tmp_path / "results"))
    (tmp_path / "file").write_text("")
    with pytest.raises(argparse.ArgumentTypeError, match="cannot make the folder"):
        json_output(str(tmp_path / "file" / "run.json"))


def test_a_benchmark_refuses_an_unwritable_json_before_it_measures(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "model_memory.py"), "--json",
                             str(tmp_path / "file" / "run.json")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "argument --json: cannot make the folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_recorded_path_is_relative_to_the_repository_or_a_bare_name(tmp_path: Path) -> None:
    assert recorded_path(REPO / "models" / "cifar10" / "4") == "models/cifar10/4"
    assert recorded_path(tmp_path / "elsewhere" / "model") == "model"


def test_load_jpegs_reads_a_named_archive_and_refuses_one_it_cannot(tmp_path: Path) -> None:
    for index, name in enumerate(CLASS_NAMES):
        write_jpegs(tmp_path / "train" / name, 1, seed=index)
    with tarfile.open(tmp_path / "set.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "train", arcname="train")
    images, source = load_jpegs(tmp_path / "set.tar.gz", 10)
    assert len(images) == 10 and all(image.startswith(b"\xff\xd8") for image in images) and source == "set.tar.gz"
    (tmp_path / "notes.txt").write_text("no archive")
    with tarfile.open(tmp_path / "empty.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    whole = (tmp_path / "set.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[:len(whole) // 2])  # a download or copy cut short
    for archive, says in [(tmp_path / "missing.tar.gz", "no such file"), (tmp_path / "notes.txt", "not a tar archive"),
                          (tmp_path / "empty.tar", "no JPEGs in CIFAR-10 class folders"),
                          (tmp_path / "cut.tar.gz", "that can be read whole")]:
        with pytest.raises(ArchiveError, match=says):
            load_jpegs(archive, 4)


@pytest.mark.parametrize("command", [
    ["client_cli.py", "--repeats", "0"], ["lone_request.py", "--rounds", "0"], ["explain.py", "--count", "0"],
    ["ood_latency.py", "--pairs", "0"], ["serve.py", "--levels", ""], ["serve.py", "--levels", "1,x"],
], ids=lambda command: " ".join(command) or "''")
def test_a_count_of_nothing_is_a_usage_error_before_anything_runs(command: list[str]) -> None:
    """A median of no runs was a StatisticsError after the service had been started; now argparse says so."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / command[0]), *command[1:]], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and f"argument {command[1]}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_model_or_service_is_one_line(tmp_path: Path) -> None:
    lone = subprocess.run([sys.executable, str(REPO / "bench" / "lone_request.py"), "--model-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert lone.returncode == 1
    assert lone.stderr.startswith(f"error: --model-dir: model directory {tmp_path} has no version folders")
    unreachable = subprocess.run([sys.executable, str(REPO / "bench" / "client_cli.py"), "--url",
                                  "http://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: cannot reach the service")
    assert "Traceback" not in lone.stderr + unreachable.stderr
