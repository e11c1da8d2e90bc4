"""The repository's package import graph, read from the source (AST), not from running it.

docs/architecture.md shows the floors as a table this module prints; tests/test_architecture.py
fails when the page and this module disagree, or when the code imports a package on a higher floor.
`python tests/_import_graph.py` prints the table and each package's imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The floors, lowest first: a package may import the packages on the floors below its own, never
# one beside or above it (training and evaluation share what they both need through dynast), and
# nothing imports the uninstalled benchmarks.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("kernels",),
    ("dynast",),
    ("train", "eval"),
    ("benchmarks",),
)
PACKAGES: tuple[str, ...] = tuple(name for floor in FLOORS for name in floor)


def floor_of(package: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if package in floor)


def imported_packages(path: Path) -> set[str]:
    """The project packages a file imports anywhere in it (functions included); relative imports
    stay inside the file's own package and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """package -> the other project packages its files import."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        found: set[str] = set()
        for path in sorted((root / package).rglob("*.py")):
            found |= imported_packages(path)
        graph[package] = found - {package}
    return graph


def allowed_imports(package: str) -> list[str]:
    """The other packages `package` may import: those on the floors below its own."""
    return [other for other in PACKAGES if floor_of(other) < floor_of(package)]


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """'importer -> imported' for every import that `allowed_imports` does not allow."""
    return [
        f"{package} -> {other}"
        for package, others in graph.items()
        for other in sorted(others)
        if other not in allowed_imports(package)
    ]


def floors_table() -> str:
    """The Markdown table docs/architecture.md holds: one row per package, lowest floor first."""
    lines = ["| floor | package | may import |", "|---|---|---|"]
    for package in PACKAGES:
        allowed = ", ".join(f"`{name}`" for name in allowed_imports(package)) or "nothing of ours"
        lines.append(f"| {floor_of(package)} | `{package}` | {allowed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(floors_table())
    graph = import_graph()
    for package in PACKAGES:
        print(f"{package} imports: {', '.join(sorted(graph[package])) or '-'}")
    for edge in forbidden_imports(graph):
        print(f"forbidden import: {edge}")
