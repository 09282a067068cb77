"""How the benchmarks name a file in the JSON they write: never as one machine's absolute path.

A committed result (docs/bench-*.json) is read on other machines and clones, where an absolute path
means nothing and tells the reader only where someone's checkout was.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def recorded_path(path: Path | str) -> str:
    """``path`` relative to the repository when it lies inside it (``models/cifar10/4``), else its name alone."""
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else resolved.name
