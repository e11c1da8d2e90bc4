"""The DynaST release's own data code (`../shared/release-dynast/data/`), run on a fixture to read
which image and which exemplar it puts at each sample index.

The release is imported, never installed or copied: its folder goes on `sys.path` for the duration
of `release_pairs` and its generic top-level modules (`data`, `util`, ...) are dropped from
`sys.modules` afterwards. The real OpenCV and scikit-image are used; its `stubs/torchvision` stands
in only where torchvision is not installed, for `data/base_dataset.py`'s import: the transforms it
would build are replaced here, since only the file names are compared.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

RELEASE = Path(__file__).resolve().parents[1].parent / "shared" / "release-dynast"
# The release's top-level names (and the stub's): generic enough to clash with anything else.
_GENERIC = ("data", "util", "models", "options", "trainers", "torchvision")


@contextlib.contextmanager
def _release_on_path(root: Path) -> Iterator[None]:
    if not (root / "data" / "pix2pix_dataset.py").is_file():
        pytest.skip(f"the DynaST release is not at {root} (see its README.md); nothing to compare")
    import cv2  # noqa: F401  (the real OpenCV, loaded before the stubs folder is on the path)

    paths = [str(root)]
    if importlib.util.find_spec("torchvision") is None:
        paths.append(str(root / "stubs"))

    def ours(name: str) -> bool:
        return name.split(".")[0] in _GENERIC

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path[:0] = paths
    try:
        yield
    finally:
        del sys.path[: len(paths)]
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


class _Opened:
    """What `Image.open(path)` returns here: `.convert(...)` gives back the path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def convert(self, mode: str) -> str:
        return self.path


def release_pairs(
    mode: str, root: Path, phase: str, *, real: float = 0.0, hard: float = 0.0
) -> list[tuple[str, str, float]]:
    """(image, exemplar, self_ref) of every sample of the release's `dataset_mode` `mode`
    ("deepfashion" with `--video_like`, "celebahqedge") on `root`, in its sample order, paths
    relative to `root`. Its `initialize` lists and sorts the samples and reads the reference
    lists; its `__getitem__` chooses the exemplar; only the decoding and the transforms are
    replaced (they would not change which file is read)."""
    opt = Namespace(
        dataroot=str(root), phase=phase, dataset_mode=mode, isTrain=phase == "train",
        max_dataset_size=sys.maxsize, no_pairing_check=True, video_like=True,
        real_reference_probability=real, hard_reference_probability=hard,
    )  # fmt: skip
    with _release_on_path(RELEASE), warnings.catch_warnings():
        # Its util.py has a regular expression with an invalid escape (a DeprecationWarning).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        pix2pix = importlib.import_module("data.pix2pix_dataset")
        dataset_class = importlib.import_module("data").find_dataset_using_name(mode)
        dataset = dataset_class()
        dataset.initialize(opt)
        dataset.get_label_tensor = lambda path: (path, None)
        replaced = {
            "Image": SimpleNamespace(open=_Opened),
            "get_transform": lambda *args, **kwargs: lambda image: image,
        }
        saved = {name: getattr(pix2pix, name) for name in replaced}
        for name, value in replaced.items():
            setattr(pix2pix, name, value)
        try:
            items = [dataset[i] for i in range(len(dataset))]
        finally:
            for name, value in saved.items():
                setattr(pix2pix, name, value)
    return [
        (os.path.relpath(item["path"], root), os.path.relpath(item["ref"], root), item["self_ref"])
        for item in items
    ]
