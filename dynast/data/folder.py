"""The plain folder format (docs/method.md section 6, ours): how users bring their own data.

    root/images/<name>.png|.jpg|.jpeg   RGB photos (any mode PIL reads; converted to RGB; 16-bit
                                        grey scaled from 0..65535, 32-bit and float refused)
    root/labels/<name>.png              class-index maps: 8-bit grey ("L"), palette ("P", the
                                        index is the class) or 16-bit grey; values < num_classes
    root/pairs_train.csv                header `target,exemplar`, then one pair of names a line
    root/pairs_test.csv
    root/dataset.json                   optional: {"num_classes": K, "class_names": [...K names],
                                        "source": {...free-form, ignored}}

A name is a path relative to images/ and labels/ without its extension (sub-folders allowed). The
target's label map is the semantic input; its image is the ground truth when it exists (otherwise
has_target is False); the exemplar needs both. Everything is resized to image_size (bilinear for
images, nearest by pixel centres for labels). Files are checked when the dataset is built
(presence, readable headers, label modes, sizes) and decoded when a pair is read (corrupt data,
class indices out of range), each error naming the file. The writers below are atomic: a file
appears under its name complete or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from einops import rearrange
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from kernels.files import write_atomically

from .config import DataConfig
from .labels import check_label_range, resize_labels
from .sample import Sample, build_sample

IMAGE_DIR = "images"
LABEL_DIR = "labels"
INFO_FILE = "dataset.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIX = ".png"
PAIRS_HEADER = ["target", "exemplar"]
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I", "1")
# 16-bit grey photos: PIL's RGB conversion would clip them at 255 (all white), so they are scaled.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def pairs_file(root: Path, split: str) -> Path:
    return root / f"pairs_{split}.csv"


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class DatasetInfo:
    """The optional dataset.json: class count and names."""

    num_classes: int
    class_names: tuple[str, ...] | None = None


def read_info(path: Path) -> DatasetInfo | None:
    """Parse dataset.json; None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"num_classes", "class_names", "source"})
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {unknown} (known: num_classes, class_names, source)"
        )
    k = data.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"{path}: num_classes must be an int >= 2, got {k!r}")
    names = data.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) != k or not all(isinstance(n, str) for n in names)
    ):
        raise ValueError(f"{path}: class_names must be a list of {k} strings")
    return DatasetInfo(k, tuple(names) if names is not None else None)


def _check_name(name: str, where: str) -> str:
    if not name:
        raise ValueError(f"{where}: empty name")
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise ValueError(
            f"{where}: name {name!r} must be a relative path inside images/ and labels/"
        )
    if name.lower().endswith((*IMAGE_SUFFIXES, LABEL_SUFFIX)):
        raise ValueError(f"{where}: name {name!r} must be given without its file extension")
    return name


def read_numbered_pairs(path: Path) -> list[tuple[int, str, str]]:
    """(line number, target, exemplar) of every pair of a pairs CSV. Raises FileNotFoundError
    when it is missing, ValueError (file and line) for a wrong header, a row without exactly two
    names, or no rows."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found (header `target,exemplar`)")
    with path.open(newline="", encoding="utf-8") as f:
        try:
            rows = list(csv.reader(f))
        except (csv.Error, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from e
    numbered = [(n, [c.strip() for c in row]) for n, row in enumerate(rows, 1) if row]
    if not numbered or numbered[0][1] != PAIRS_HEADER:
        got = ",".join(numbered[0][1]) if numbered else "an empty file"
        raise ValueError(f"{path}:1: expected the header `target,exemplar`, got {got!r}")
    pairs = []
    for line, row in numbered[1:]:
        where = f"{path}:{line}"
        if len(row) != 2:
            raise ValueError(
                f"{where}: expected 2 columns `target,exemplar`, got {len(row)}: {row}"
            )
        pairs.append((line, _check_name(row[0], where), _check_name(row[1], where)))
    if not pairs:
        raise ValueError(f"{path}: the split is empty (a header and no pairs)")
    return pairs


def index_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    """name (relative path without extension) -> files with one of `suffixes` (any case)."""
    found: dict[str, list[Path]] = {}
    for directory, _, files in os.walk(folder):
        for file in files:
            path = Path(directory, file)
            if path.suffix.lower() in suffixes:
                name = path.relative_to(folder).with_suffix("").as_posix()
                found.setdefault(name, []).append(path)
    return found


def _open_checked(path: Path) -> Image.Image:
    """Open (header only); a file that is not an image raises ValueError naming it."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable image ({e})") from e


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode, reading only the file header."""
    with _open_checked(path) as image:
        return image.size, image.mode


def _check_label_mode(path: Path, mode: str) -> None:
    if mode not in LABEL_MODES:
        raise ValueError(
            f"{path}: label maps must be single-channel class-index PNGs (8-bit grey, palette or "
            f"16-bit grey), got mode {mode}"
        )


def _sixteen_bit(image: Image.Image) -> bool:
    # Pillow opens a 16-bit grey PNG as "I;16", older versions as "I" (PNG has no 32-bit grey).
    return image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG")


def read_image(path: Path, size: int) -> np.ndarray:
    """[size, size, 3] float32 in [-1, 1] (bilinear resize when the file has another size). A
    16-bit grey image is scaled from 0..65535 (and resized in float), never clipped; 32-bit and
    float images, whose range is unknown, are refused."""
    with _open_checked(path) as image:
        if image.mode in ("I", "F") and not _sixteen_bit(image):
            raise ValueError(
                f"{path}: {image.mode!r} images (32-bit integer or float pixels) have no known "
                "range; save it as 8- or 16-bit"
            )
        try:
            if _sixteen_bit(image):
                grey = np.asarray(image, dtype=np.float32) / 65535.0
                plane = Image.fromarray(grey)  # float32: mode "F"
                if plane.size != (size, size):
                    plane = plane.resize((size, size), Image.Resampling.BILINEAR)
                unit = np.repeat(np.asarray(plane, dtype=np.float32)[..., None], 3, axis=2)
                return unit * 2.0 - 1.0
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
            raise ValueError(f"{path}: corrupt image ({e})") from e
    return np.asarray(rgb, dtype=np.float32) * (2.0 / 255.0) - 1.0


def read_label(path: Path, size: int, num_classes: int) -> np.ndarray:
    """[size, size] int64 class map (nearest resize), indices checked against num_classes."""
    with _open_checked(path) as image:
        _check_label_mode(path, image.mode)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{path}: corrupt label map ({e})") from e
        label = np.asarray(image).astype(np.int64)
    check_label_range(label, num_classes, name=str(path))
    return resize_labels(label, size, size)


@dataclass(frozen=True)
class PairFiles:
    target_label: Path
    target_image: Path | None
    exemplar_label: Path
    exemplar_image: Path


@contextlib.contextmanager
def _naming(source: str) -> Iterator[None]:
    """Prefix the message of a data error raised inside with `source` (`<csv>:<line>`)."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{source}: {e}") from e


class FolderDataset(Dataset):
    """Pairs of `split` from the folder at `cfg.root` (kind "folder")."""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        if cfg.kind != "folder":
            raise ValueError(f"FolderDataset needs DataConfig.kind='folder', got {cfg.kind!r}")
        if not cfg.root:
            raise ValueError(
                "DataConfig.root is required for kind='folder': the dataset folder "
                "(e.g. --data.root DIR)"
            )
        limit = cfg.length(split)  # validates split
        root = Path(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder not found")
        self.config = cfg
        self.split = split
        self.info = read_info(root / INFO_FILE)
        if self.info is not None and self.info.num_classes != cfg.num_classes:
            raise ValueError(
                f"{root / INFO_FILE} says num_classes={self.info.num_classes} but the data config "
                f"has num_classes={cfg.num_classes}: set it (and the model's semantic_nc) to "
                f"{self.info.num_classes}"
            )
        numbered = read_numbered_pairs(pairs_file(root, split))
        # "<csv>:<line>" of each pair: an error about its files names the line that named them.
        self.sources = [f"{pairs_file(root, split)}:{line}" for line, _, _ in numbered]
        pairs = [(target, exemplar) for _, target, exemplar in numbered]
        if limit is not None:
            if limit > len(pairs):
                raise ValueError(
                    f"DataConfig.{split}_length={limit} but {pairs_file(root, split)} has only "
                    f"{len(pairs)} pairs"
                )
            pairs = pairs[:limit]
        self.pairs = pairs
        self.files = self._resolve(root, pairs)

    @staticmethod
    def _find(index: dict[str, list[Path]], name: str) -> Path | None:
        found = index.get(name, [])
        if len(found) > 1:
            raise ValueError(f"name {name!r} matches several files: {sorted(map(str, found))}")
        return found[0] if found else None

    def _resolve(self, root: Path, pairs: list[tuple[str, str]]) -> list[PairFiles]:
        images = index_files(root / IMAGE_DIR, IMAGE_SUFFIXES)
        labels = index_files(root / LABEL_DIR, (LABEL_SUFFIX,))
        headers: dict[Path, tuple[tuple[int, int], str]] = {}

        def header(path: Path) -> tuple[tuple[int, int], str]:
            if path not in headers:
                headers[path] = _header(path)
            return headers[path]

        def label_of(name: str, role: str) -> Path:
            path = self._find(labels, name)
            if path is None:
                raise FileNotFoundError(
                    f"{root / LABEL_DIR / (name + LABEL_SUFFIX)}: label map of {role} {name!r} "
                    "not found"
                )
            _check_label_mode(path, header(path)[1])
            return path

        def size_of(path: Path) -> str:
            width, height = header(path)[0]
            return f"{width}x{height}"

        def check_size(image: Path, label: Path) -> None:
            if size_of(image) != size_of(label):
                raise ValueError(
                    f"{image}: size {size_of(image)} (width x height) differs from its label map "
                    f"{label} ({size_of(label)})"
                )

        files = []
        for (target, exemplar), source in zip(pairs, self.sources, strict=False):
            with _naming(source):
                target_label = label_of(target, "target")
                exemplar_label = label_of(exemplar, "exemplar")
                target_image = self._find(images, target)
                exemplar_image = self._find(images, exemplar)
                if exemplar_image is None:
                    raise FileNotFoundError(
                        f"{root / IMAGE_DIR / exemplar}.{{png,jpg,jpeg}}: image of exemplar "
                        f"{exemplar!r} not found"
                    )
                check_size(exemplar_image, exemplar_label)
                if target_image is not None:
                    check_size(target_image, target_label)
                mixed = size_of(exemplar_label) != size_of(target_label)
                if self.config.match_pair_sizes and mixed:
                    raise ValueError(
                        f"{exemplar_image}: size {size_of(exemplar_label)} differs from the "
                        f"target's {target_label} ({size_of(target_label)}); set "
                        "DataConfig.match_pair_sizes=False if mixed sizes are intended"
                    )
                files.append(PairFiles(target_label, target_image, exemplar_label, exemplar_image))
        return files

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.info.class_names if self.info is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} pairs")
        index %= len(self)
        files, size, k = self.files[index], self.config.image_size, self.config.num_classes
        with _naming(self.sources[index]):
            return build_sample(
                label=read_label(files.target_label, size, k),
                target=read_image(files.target_image, size) if files.target_image else None,
                exemplar_label=read_label(files.exemplar_label, size, k),
                exemplar=read_image(files.exemplar_image, size),
                num_classes=k,
                index=index,
            )


# ---------------------------------------------------------------------------------------------
# Writing


def image_pixels(image: Tensor) -> np.ndarray:
    """[3, H, W] float in [-1, 1] -> [H, W, 3] uint8, rounded (at most half a level of error)."""
    values = rearrange(image.detach().float().cpu().numpy(), "c h w -> h w c")
    return np.rint((np.clip(values, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 [H, W, 3] image or [H, W] grey / uint16 [H, W] 16-bit grey, as PNG."""
    write_atomically(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def write_label(path: Path, label: np.ndarray, num_classes: int) -> None:
    """Class map as an 8-bit PNG, or 16-bit when num_classes > 256."""
    check_label_range(label, num_classes, name=str(path))
    write_png(path, label.astype(np.uint8 if num_classes <= 256 else np.uint16))


def write_pairs(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(PAIRS_HEADER)
            writer.writerows(pairs)

    write_atomically(path, write)


def write_info(path: Path, info: DatasetInfo, source: dict | None = None) -> None:
    data: dict = {"num_classes": info.num_classes}
    if info.class_names is not None:
        data["class_names"] = list(info.class_names)
    if source is not None:
        data["source"] = source
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
