"""docs/architecture.md against the code: the floors table is the one tests/_import_graph.py
derives, no package imports one it may not, the folder table lists the repository's top-level
folders, and every name of the training step's walk-through exists."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

from _import_graph import ROOT, floors_table, forbidden_imports, import_graph

PAGE = ROOT / "docs" / "architecture.md"


def _section(title: str) -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_floors_table_is_the_derived_one() -> None:
    table = [line for line in _section("The floors").splitlines() if line.startswith("|")]
    assert "\n".join(table) == floors_table()


def test_no_package_imports_above_its_floor() -> None:
    assert forbidden_imports(import_graph()) == []


def test_the_floor_rule_catches_an_upward_import(tmp_path: Path) -> None:
    for package in ("kernels", "dynast", "train", "eval", "benchmarks"):
        (tmp_path / package).mkdir()
    (tmp_path / "kernels" / "bad.py").write_text("def f():\n    from train import loop\n")
    (tmp_path / "eval" / "bad.py").write_text(
        "import benchmarks.measure\nfrom . import x\ndef f():\n    from train.config import c\n"
    )
    assert forbidden_imports(import_graph(tmp_path)) == [
        "kernels -> train",
        "eval -> benchmarks",
        "eval -> train",
    ]


def test_the_folder_table_lists_every_top_level_folder() -> None:
    listed = re.findall(r"^\| `([\w.-]+)/` \|", _section("The folders"), flags=re.M)
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/")[0] for path in tracked if "/" in path}
    assert sorted(listed) == sorted(f for f in folders if not f.startswith("."))


def _resolve(dotted: str) -> object:
    """The object a dotted name such as `train.steps.generator_step` or
    `dynast.generator.Generator.forward` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_name_of_the_training_step_exists() -> None:
    section = _section("One training step, top to bottom")
    names = re.findall(r"`((?:kernels|dynast|train|eval)(?:\.\w+)+)`", section)
    paths = re.findall(r"`((?:kernels|dynast|train|eval)/[\w/]+\.py)`", section)
    assert len(names) > 20 and paths
    for dotted in names:
        _resolve(dotted)  # raises, naming it, when it is gone
    for path in paths:
        assert (ROOT / path).is_file(), path
