"""scripts/check_python.py: the Makefile's first step, which refuses a Python the project cannot install on and
removes an environment left by another one."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from scripts.check_python import PYPROJECT, refusal, supported_minors, venv_version

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_python.py"


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_python_running_the_suite_is_accepted_and_its_neighbours_outside_the_range_are_not() -> None:
    minors = supported_minors(PYPROJECT.read_text())
    assert refusal((sys.version_info[0], sys.version_info[1]), "python3", minors) is None
    below = refusal((3, minors.start - 1), "python3", minors)
    assert below == (f"error: python3 is Python 3.{minors.start - 1}; this project needs Python "
                     + ", ".join(f"3.{minor}" for minor in minors[:-1]) + f" or 3.{minors[-1]} (requires-python in "
                     f"pyproject.toml). Install one and name it, e.g. make serve PYTHON=python3.{minors[-1]}")
    assert refusal((3, minors.stop), "/usr/bin/python3", minors).startswith(
        f"error: /usr/bin/python3 is Python 3.{minors.stop}; ")
    assert refusal((2, minors.start), "python", minors) is not None


@pytest.mark.parametrize(("line", "minors"), [('requires-python = ">=3.11,<3.14"', range(11, 14)),
                                             ('requires-python = ">= 3.12, < 3.13"', range(12, 13))])
def test_the_range_is_read_from_requires_python(line: str, minors: range) -> None:
    assert supported_minors(f'[project]\nname = "x"\n{line}\n') == minors
    assert refusal((3, minors.start), "python3", minors) is None
    assert refusal((3, minors.start - 1), "python3", minors) is not None


def test_a_requires_python_of_another_form_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="requires-python is not of the form"):
        supported_minors('[project]\nrequires-python = "~=3.11"\n')


def test_an_environment_of_this_python_is_kept_and_one_whose_python_no_longer_runs_is_removed(
        tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    venv.create(kept, with_pip=False)
    assert venv_version(kept) == (sys.version_info[0], sys.version_info[1])
    result = check("python3", "--venv", str(kept))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert (kept / "pyvenv.cfg").is_file()

    # Its interpreter uninstalled since (a pyenv version removed): `-m venv` over it would keep the dead link.
    stale = tmp_path / "stale"
    venv.create(stale, with_pip=False)
    python = stale / "bin" / "python"
    python.unlink()
    python.symlink_to(tmp_path / "uninstalled" / "python3.10")
    assert venv_version(stale) == (0, 0)
    result = check("python3", "--venv", str(stale))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{stale} was made with an interpreter that no longer runs: removed, to be made anew "
                             f"with python3 (Python {sys.version_info[0]}.{sys.version_info[1]})\n")
    assert not stale.exists()

    assert venv_version(tmp_path / "none") is None
    assert check("python3", "--venv", str(tmp_path / "none")).returncode == 0


@pytest.mark.parametrize(("target", "environment"), [("install", ".venv"), ("install-serve", ".venv-serve")])
def test_make_checks_the_python_before_it_makes_an_environment(target: str, environment: str) -> None:
    # Run by `make test`, make would print "Entering directory" lines and inherit the outer make's flags.
    env = {key: value for key, value in os.environ.items() if key not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    planned = subprocess.run(["make", "--no-print-directory", "-n", "-B", target, "PYTHON=python3"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert planned[:2] == [f"python3 scripts/check_python.py python3 --venv {environment}",
                           f"python3 -m venv {environment}"]
