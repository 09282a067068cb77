"""Where the benchmarks write their JSON, and how they name a file in it: never as one machine's
absolute path.

A committed result (docs/bench-*.json) is read on other machines and clones, where an absolute path
means nothing and tells the reader only where someone's checkout was.
"""

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def recorded_path(path: Path | str) -> str:
    """``path`` relative to the repository when it lies inside it (``models/cifar10/4``), else its name alone."""
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else resolved.name


def json_output(text: str) -> Path:
    """argparse type of ``--json``: checked when parsed, its folder made if missing, so that a run of minutes
    never ends in a traceback about a file it cannot write (``bench/results/`` is absent on a fresh clone)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: name a file in it, e.g. {path / 'figures.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot make the folder {path.parent}: {error.strerror or error}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text} cannot be written: name a file in a folder you can write to")
    return path
