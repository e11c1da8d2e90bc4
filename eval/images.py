"""Image folders as the metrics read them: listing, header checks, decoding to uint8 RGB.

A folder's images are the files directly inside it (subfolders are not searched, so a generation
folder's visualisations never leak into a metric) with one of `IMAGE_EXTENSIONS`, in sorted name
order. All of a folder's images must have one size. Greyscale and palette images are expanded to
RGB (lossless); an alpha channel is dropped only when every pixel is opaque; other modes (CMYK,
16-bit, float) are refused, naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Modes that expand to RGB without loss; RGBA/LA/PA are handled separately (alpha must be opaque).
_LOSSLESS_TO_RGB = {"RGB", "L", "1", "P"}
_WITH_ALPHA = {"RGBA", "LA", "PA"}


class ImageFolderError(ValueError):
    """A folder or a file in it is not usable as an image set; the message names it."""


def file_format(path: Path) -> str:
    """The format recorded with metrics: the extension, lower case, jpeg spelled jpg."""
    ext = path.suffix.lower().lstrip(".")
    return {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)


@dataclass(frozen=True)
class ImageFolder:
    """A checked image folder: its files (sorted), their common size (height, width) and format
    ("png", "jpg", ... or "mixed:jpg,png")."""

    root: Path
    files: tuple[Path, ...]
    size: tuple[int, int]
    format: str

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> tuple[str, ...]:
        """File names without extension: how real and fake images are paired."""
        return tuple(f.stem for f in self.files)

    def summary(self) -> dict[str, object]:
        return {
            "path": str(self.root),
            "count": len(self.files),
            "size": list(self.size),
            "format": self.format,
        }


def scan_folder(root: str | Path, what: str = "folder") -> ImageFolder:
    """List and check a folder's images from their headers (cheap: no pixel is decoded).
    `what` names the argument in errors (e.g. "--fake")."""
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{what}: {root} is not a folder")
    files = tuple(
        sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    )
    if not files:
        raise ImageFolderError(
            f"{what}: no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
            "subfolders are not searched)"
        )
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})[:5]
        raise ImageFolderError(f"{what}: several files share a name in {root}: {dup}")
    sizes: dict[tuple[int, int], Path] = {}
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
                _check_mode(image.mode, path)
        except UnidentifiedImageError as error:
            raise ImageFolderError(f"{what}: {path} is not a readable image") from error
        except OSError as error:
            raise ImageFolderError(f"{what}: cannot read {path}: {error}") from error
        sizes.setdefault((height, width), path)
    if len(sizes) > 1:
        listing = ", ".join(f"{h}x{w} (e.g. {p.name})" for (h, w), p in list(sizes.items())[:4])
        raise ImageFolderError(f"{what}: images in {root} differ in size: {listing}")
    formats = sorted({file_format(p) for p in files})
    fmt = formats[0] if len(formats) == 1 else "mixed:" + ",".join(formats)
    return ImageFolder(root, files, next(iter(sizes)), fmt)


def _check_mode(mode: str, path: Path) -> None:
    if mode not in _LOSSLESS_TO_RGB and mode not in _WITH_ALPHA:
        raise ImageFolderError(
            f"{path}: image mode {mode!r} is not supported; save it as 8-bit RGB (or greyscale)"
        )


def read_image(path: str | Path) -> Tensor:
    """Decode one file to uint8 [3, H, W] RGB (see the module docstring for the modes)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            _check_mode(image.mode, path)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            if image.mode in _WITH_ALPHA:
                alpha = np.asarray(image.getchannel("A"))
                if alpha.min() < 255:
                    raise ImageFolderError(
                        f"{path}: has transparent pixels (alpha channel); metrics need opaque RGB "
                        "images: composite it onto a background first"
                    )
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise ImageFolderError(f"{path}: is not a readable image") from error
    except OSError as error:
        raise ImageFolderError(f"{path}: cannot be decoded: {error}") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class FolderImages(Dataset):
    """A Dataset over (some of) a scanned folder's files: uint8 [3, H, W] images of its size."""

    def __init__(self, folder: ImageFolder, files: Sequence[Path] | None = None) -> None:
        self.folder = folder
        self.files = tuple(folder.files if files is None else files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        image = read_image(self.files[index])
        if tuple(image.shape[1:]) != self.folder.size:
            raise ImageFolderError(
                f"{self.files[index]}: decoded size {tuple(image.shape[1:])} differs from the "
                f"folder's {self.folder.size}"
            )
        return image
