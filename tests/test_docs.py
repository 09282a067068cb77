"""README.md is a short front door and the docs are written for any reader of the project.

A reader on another machine cannot use one machine's paths or lock files, and has no use for who else
was using the machine when a figure was measured: the docs state what was run, on what, and the result.
"""

import json
import re
from pathlib import Path

import pytest

from app.schemas import ModelInfo, Prediction
from core.contract import METADATA_FILE, version_dirs

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 220
DOCS = sorted([README, *(REPO / "docs").glob("*.md"), *(REPO / "docs").glob("*.json")])
# Absolute paths of one machine's checkout or home, a lock file only one machine has, people's activity.
FORBIDDEN = re.compile(r"/work/|/root/|/home/|flock|engineer", re.IGNORECASE)
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


def forbidden_lines(text: str) -> list[str]:
    """``line number: line`` for every line of ``text`` that names something FORBIDDEN."""
    return [f"{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1) if FORBIDDEN.search(line)]


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    # The first commands a reader meets are the two that do all set-up themselves.
    first_block = README.read_text().split("```")[1]
    assert "make serve" in first_block and "make test" in first_block, first_block


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_no_machine_paths_lock_files_or_people(path: Path) -> None:
    assert forbidden_lines(path.read_text()) == []


def test_the_check_catches_each_kind() -> None:
    """Each pattern the docs must avoid is caught, and an ordinary relative path is not."""
    for bad in ("/work/main/models", "cd /root/x", "/home/me/data", "flock /tmp/x.lock make", "Other Engineers' tests"):
        assert forbidden_lines(f"fine\n{bad}\n") == [f"2: {bad}"]
    assert forbidden_lines("models/cifar10/4 and ../shared/data/cifar10-train-jpeg.tar.gz") == []


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in HEADING.findall(markdown)}


@pytest.mark.parametrize("path", [p for p in DOCS if p.suffix == ".md"], ids=lambda path: path.name)
def test_relative_links_lead_to_files_and_headings(path: Path) -> None:
    broken = []
    for target, anchor in LINK.findall(path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        linked = (path.parent / target) if target else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_anchors_follow_github() -> None:
    assert anchors("# Title\n## Accuracy levels, load adaptation and bfloat16\n### `docker compose up`\n") == {
        "title", "accuracy-levels-load-adaptation-and-bfloat16", "docker-compose-up"}


@pytest.mark.parametrize("path", [README, REPO / "docs" / "deployment.md"], ids=lambda path: path.name)
def test_the_example_answer_is_the_shipped_models_in_todays_shape(path: Path) -> None:
    """A /predict answer shown to readers names the version that ships and its default level, with every field
    an answer has now, so a new model or field cannot leave an old example behind."""
    [answer] = [json.loads(block) for block in JSON_BLOCK.findall(path.read_text()) if block.startswith('{"label"')]
    version, folder = version_dirs(REPO / "models" / "cifar10")[-1]
    default_level = json.loads((folder / METADATA_FILE).read_text())["default_level"]
    assert set(answer) == set(Prediction.model_fields) and set(answer["model"]) == set(ModelInfo.model_fields)
    assert answer["model"] == {"name": "cifar10", "version": version, "level": default_level}
