"""The house plan: ``core`` is shared and imports neither half; ``app`` and ``training`` never import each other.

Read from the source with ``ast`` (imports inside functions count too), so a rule broken on a path no
test happens to run still fails here.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "core", "training")
# What each package may not import: the other half, and (for core) the web and training frameworks.
FORBIDDEN = {
    "core": {"app", "training", "fastapi", "starlette", "keras", "uvicorn"},
    "app": {"training", "keras"},
    "training": {"app", "fastapi", "starlette", "uvicorn"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` (a file of this repository) imports."""
    return imports_in(path.read_text(), path.relative_to(REPO).parent.parts)


def imports_in(source: str, package: tuple[str, ...]) -> set[str]:
    """Absolute names of the modules ``source`` imports, relative imports resolved against ``package``."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    broken = []
    for name, path in project_modules().items():
        if name.split(".")[0] != package:
            continue
        for imported in imported_modules(path):
            if imported.split(".")[0] in FORBIDDEN[package]:
                broken.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not broken, "\n".join(broken)


def test_no_import_cycle() -> None:
    modules = project_modules()
    graph = {name: {imported for imported in imported_modules(path) if imported in modules and imported != name}
             for name, path in modules.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" -> ".join([*trail[trail.index(node):], node]))
            return
        visiting.add(node)
        for neighbour in sorted(graph[node]):
            visit(neighbour, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_parser_sees_every_form_of_import() -> None:
    # Without this the rules above could pass vacuously on a parser that finds nothing.
    source = "import keras.layers\nfrom app.service import ClassifierService\nfrom . import reports\n" \
             "def later():\n    from ..app import main\n"
    found = imports_in(source, ("training", "sub"))
    assert {"keras.layers", "app.service", "training.sub.reports", "training.app.main"} <= found
