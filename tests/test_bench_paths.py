"""bench/paths.py: where every benchmark's --json goes, checked before minutes of measuring, and how a
file is named in what they write."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bench.paths import REPO, json_output, recorded_path


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
