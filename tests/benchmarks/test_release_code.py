"""`benchmarks/release_code.py`, the one importer of the authors' code: their generic top-level
names exist only inside `imported_release`, and the interpreter is left as it was found."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from benchmarks.release_code import RELEASE_ROOT_ENV, imported_release, release_root


def test_the_release_is_importable_only_inside_the_block(release: Path, monkeypatch) -> None:
    # A module of one of the release's generic names, loaded before: set aside, then restored.
    ours = types.ModuleType("util")
    monkeypatch.setitem(sys.modules, "util", ours)
    path = list(sys.path)
    with imported_release(release) as code:
        assert Path(code.pix2pix_model.__file__).is_relative_to(release)
        assert sys.modules["util"] is not ours and "models.networks" in sys.modules
        import torchvision  # the release's stub, first on sys.path

        assert Path(torchvision.__file__).is_relative_to(release / "stubs")
    assert sys.path == path and sys.modules["util"] is ours
    assert not any(name.split(".")[0] in ("models", "options", "trainers") for name in sys.modules)


def test_a_folder_without_the_release_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(RELEASE_ROOT_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        release_root()
    with pytest.raises(FileNotFoundError, match="--release-root"):
        release_root(tmp_path / "nothing")
