"""No module reaches into another project module's private (`_name`) names, checked on the syntax
tree of every .py file: what two files share is public in the one that owns it. Flagged:
`from X import _y`, and `X._y` where `X` names a project module (tests included). Privates of
libraries (torch._dynamo, argparse internals) are not this check's business. Which package may
import which (the floors) is tests/test_architecture.py's."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Test helpers (`_assert`, `_real_data`, ...) are imported by their bare names: pytest puts the
# tests folder on sys.path.
SEARCH_PATH = (ROOT, ROOT / "tests")


def _python_files() -> list[Path]:
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    )


@functools.cache
def _module_file(dotted: str) -> Path | None:
    """The file (or, for a namespace package such as `benchmarks`, the folder) of a project
    module; None for anything else."""
    if not dotted:
        return None
    for base in SEARCH_PATH:
        path = base.joinpath(*dotted.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
        if path.is_dir() and base == ROOT and path.name != "tests":
            return path
    return None


def _module_name(path: Path) -> str:
    base = ROOT / "tests" if path.parent == ROOT / "tests" else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def private_uses(path: Path, text: str | None = None) -> list[str]:
    """`file:line: what` for every use in `path` (or `text`, read as that file) of another
    project module's private name."""
    tree = _tree(path) if text is None else ast.parse(text, str(path))
    own = _module_name(path)
    modules: dict[str, str] = {}  # local name -> project module it is bound to
    found = []
    attributes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if _is_private(node.attr):
                attributes.append(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _module_file(alias.name) is not None:
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        head = alias.name.split(".")[0]
                        modules[head] = head
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, path)
            if _module_file(source) is None:
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if _is_private(alias.name) and _module_file(target) is None and source != own:
                    found.append(f"{node.lineno}: from {source} import {alias.name}")
                elif _module_file(target) is not None:
                    modules[alias.asname or alias.name] = target
    for node in attributes:
        dotted = _dotted(node.value)
        head, _, rest = (dotted or "").partition(".")
        if head not in modules:
            continue
        module = ".".join(filter(None, (modules[head], rest)))
        if _module_file(module) is not None and module != own:
            found.append(f"{node.lineno}: {dotted}.{node.attr}")
    found.sort(key=lambda line: int(line.split(":")[0]))
    return [f"{path.relative_to(ROOT)}:{line}" for line in found]


def test_no_module_uses_another_modules_private_names():
    uses = [use for path in _python_files() for use in private_uses(path)]
    assert not uses, "private names used across modules:\n" + "\n".join(uses)


def test_the_check_sees_both_forms():
    text = (
        "from train.loop import _kept\nfrom train import loop\nimport kernels.shapes\n"
        "loop._kept\nkernels.shapes._released_sizes\nloop.kept\n"
        "from benchmarks import step_cost\nstep_cost._x\n"
    )
    uses = private_uses(ROOT / "tests" / "_private_names_probe.py", text)
    assert uses == [
        "tests/_private_names_probe.py:1: from train.loop import _kept",
        "tests/_private_names_probe.py:4: loop._kept",
        "tests/_private_names_probe.py:5: kernels.shapes._released_sizes",
        "tests/_private_names_probe.py:8: step_cost._x",
    ]
