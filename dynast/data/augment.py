"""The release's `resize_and_crop` and flip (CoCosNet `data/base_dataset.py`), one parameter draw
shared by an image and its semantic map, and the tensor conversions it ends with.

A draw: resize to load_size x load_size, crop crop_size x crop_size at (x, y), mirror left-right
when `flip`. Images resize bicubic, class maps and pose drawings nearest, distance maps bilinear
(each as the release does, through PIL, so the pixels match). Test pairs use `Transform.plain`:
no crop, no flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST


@dataclass(frozen=True)
class Transform:
    """One draw of resize_and_crop + flip."""

    load_size: int
    crop_size: int
    x: int = 0
    y: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= self.load_size:
            raise ValueError(
                f"crop_size {self.crop_size} must be in [1, load_size={self.load_size}]"
            )
        room = self.load_size - self.crop_size
        if not (0 <= self.x <= room and 0 <= self.y <= room):
            raise ValueError(f"crop position ({self.x}, {self.y}) outside [0, {room}]")

    @classmethod
    def plain(cls, size: int) -> Transform:
        """Resize to size x size only (the test split)."""
        return cls(size, size)

    def resize(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        size = (self.load_size, self.load_size)
        return image if image.size == size else image.resize(size, resample)

    def crop_flip(self, array: np.ndarray) -> np.ndarray:
        """Crop and mirror an [L, L, ...] array already at load size."""
        if array.shape[:2] != (self.load_size, self.load_size):
            raise ValueError(
                f"array of size {array.shape[:2]} is not at load size {self.load_size}"
            )
        out = array[self.y : self.y + self.crop_size, self.x : self.x + self.crop_size]
        if self.flip:
            out = out[:, ::-1]
        return np.array(out)  # a writable copy (PIL arrays are read-only)

    def apply(self, image: Image.Image, resample: Image.Resampling) -> np.ndarray:
        """resize, crop, flip -> uint8 array [crop, crop] or [crop, crop, C]."""
        return self.crop_flip(np.asarray(self.resize(image, resample)))


def draw_transform(
    rng: np.random.Generator, load_size: int, crop_size: int, flip: bool
) -> Transform:
    """A random crop position (uniform over every integer position, as `random.randint` in the
    release) and, when `flip`, a mirror with probability 1/2. The three numbers are always
    drawn, so the stream does not depend on the options."""
    x = int(rng.integers(0, load_size - crop_size + 1))
    y = int(rng.integers(0, load_size - crop_size + 1))
    mirror = bool(rng.random() > 0.5)
    return Transform(load_size, crop_size, x, y, mirror and flip)


def image_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 [H, W, 3] -> [3, H, W] float32 in [-1, 1], by the same float32 operations as the
    release's ToTensor + Normalize(0.5, 0.5)."""
    t = rearrange(torch.from_numpy(np.ascontiguousarray(pixels)), "h w c -> c h w")
    return t.float().div(255).sub(0.5).div(0.5).contiguous()
