"""The command line's PATH arguments as a list of files: folders walked recursively for images, globs
expanded (also when the shell did not), explicit files taken as given."""

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

# The formats the service accepts (its /metadata lists them), by the names their files usually have.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib",
                            ".tif", ".tiff"})


@dataclass
class Expansion:
    files: list[str] = field(default_factory=list)
    # Arguments that name nothing to send, with the reason: each is reported as a failed file.
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Files inside folders (or matched by globs) that are not images by their name: left out, counted.
    skipped: list[str] = field(default_factory=list)


def is_image_name(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    # ".DS_Store", "._photo.jpg" (macOS resource forks: not images despite the name), ".git"
    return name.startswith(".")


def _walk(folder: str) -> list[str]:
    """Every file below ``folder`` but hidden ones, sorted as paths (as a recursive glob lists them)."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not _hidden(name)]
        found.extend(os.path.join(root, name) for name in names if not _hidden(name))
    return sorted(found)


def _is_pattern(argument: str) -> bool:
    return any(character in argument for character in "*?[")


def expand(arguments: list[str]) -> Expansion:
    expansion = Expansion()
    seen: set[str] = set()
    for argument in arguments:
        explicit = False
        if os.path.isdir(argument):
            candidates = _walk(argument)
        elif os.path.exists(argument):
            # Named explicitly: sent whatever its name, and the service judges it.
            candidates, explicit = [argument], True
        elif _is_pattern(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                expansion.problems.append((argument, "no file matches this pattern"))
                continue
            candidates = [path for match in matches for path in (_walk(match) if os.path.isdir(match) else [match])]
        else:
            expansion.problems.append((argument, "no such file or folder"))
            continue
        images = candidates if explicit else [path for path in candidates if is_image_name(path)]
        if not explicit:
            expansion.skipped.extend(path for path in candidates if not is_image_name(path))
        if not images:
            expansion.problems.append((argument, "holds no image files (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"))
        for path in images:
            if path not in seen:
                seen.add(path)
                expansion.files.append(path)
    return expansion
