"""The documentation describes the system as it is: no tracker numbers and no "this session" in
the README, docs/ (docs/notes/ holds the narrative and is exempt), or the comments and docstrings
of the packages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_NOTEBOOK = re.compile(r"\bissues? #?\d+|\bthis session\b", re.IGNORECASE)
PACKAGES = ("kernels", "dynast", "train", "eval", "benchmarks")


def _checked_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for package in PACKAGES:
        files += sorted(p for p in (ROOT / package).rglob("*") if p.suffix in (".py", ".sh"))
    return files


def test_no_tracker_numbers_or_session_narrative() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _checked_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if LAB_NOTEBOOK.search(line)
    ]
    assert found == [], "\n".join(found)
