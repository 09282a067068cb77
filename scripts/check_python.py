"""Refuse, before any set-up, a Python that pyproject.toml's ``requires-python`` leaves out.

    python3 scripts/check_python.py python3 --venv .venv-serve    # the Makefile's first step of each environment

Without it, ``make serve`` on Python 3.10 made a virtual environment and then failed in pip on the first
pinned wheel with no word about the interpreter (``No matching distribution found for annotated-doc==0.0.7``),
and ``make serve PYTHON=python3.11`` after that failed the same way: ``python3.11 -m venv`` over a folder made
by 3.10 keeps 3.10's interpreter. So ``--venv`` also removes an environment of another Python version, for the
Makefile's next line to make anew. It runs on the interpreter it checks, which may be older than the project:
standard library only, and no ``tomllib`` (3.11+), so the range is read from ``requires-python``'s one line.
"""

from __future__ import annotations  # the annotations below must not fail on the old Pythons it refuses

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIRES = re.compile(r'^requires-python\s*=\s*">=\s*3\.(\d+)\s*,\s*<\s*3\.(\d+)\s*"', re.MULTILINE)


def supported_minors(pyproject_text: str) -> range:
    """The 3.x minor versions ``requires-python`` allows (written as ``">=3.A,<3.B"``)."""
    match = REQUIRES.search(pyproject_text)
    if match is None:
        raise ValueError('pyproject.toml: requires-python is not of the form ">=3.A,<3.B"')
    return range(int(match.group(1)), int(match.group(2)))


def refusal(version: tuple[int, int], interpreter: str, minors: range) -> str | None:
    """The error for ``interpreter`` at ``version`` (major, minor), or None where it is supported."""
    if version[0] == 3 and version[1] in minors:
        return None
    names = [f"3.{minor}" for minor in minors]
    allowed = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    return (f"error: {interpreter} is Python {version[0]}.{version[1]}; this project needs Python {allowed} "
            f"(requires-python in pyproject.toml). Install one and name it, e.g. make serve "
            f"PYTHON=python{names[-1]}")


def venv_version(venv: Path) -> tuple[int, int] | None:
    """(major, minor) of the interpreter ``venv/bin/python`` runs: (0, 0) where it does not run, None where there is
    none. Asked of the interpreter, not read from pyvenv.cfg, which ``-m venv`` over the folder rewrites even where
    it keeps the old interpreter."""
    python = venv / "bin" / "python"
    if not python.exists() and not python.is_symlink():
        return None
    try:
        answer = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                                text=True, timeout=60, check=True).stdout.split()
        return int(answer[0]), int(answer[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return (0, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("interpreter", nargs="?", default=sys.executable, help="the name make runs (PYTHON)")
    parser.add_argument("--venv", type=Path, help="the virtual environment about to be made with it")
    args = parser.parse_args(argv)
    version = (sys.version_info[0], sys.version_info[1])
    message = refusal(version, args.interpreter, supported_minors(PYPROJECT.read_text(encoding="utf-8")))
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    made_with = venv_version(args.venv) if args.venv else None
    if made_with is not None and made_with != version:
        was = f"Python {made_with[0]}.{made_with[1]}" if made_with != (0, 0) else "an interpreter that no longer runs"
        print(f"{args.venv} was made with {was}: removed, to be made anew with {args.interpreter} "
              f"(Python {version[0]}.{version[1]})")
        shutil.rmtree(args.venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
