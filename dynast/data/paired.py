"""What the loaders of the real datasets share: the root check, the per-sample random stream
seeded by (seed, epoch, index), the transform draw, and file reads whose errors name the file and
the list line that referenced it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .augment import Transform, draw_transform
from .config import DataConfig
from .lists import choose_reference

log = logging.getLogger("dynast.data")


def missing(path: Path, what: str, where: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: {what} not found (referenced by {where})")


def open_image(path: Path, what: str, where: str) -> Image.Image:
    """Open and decode an image; errors name the file and the referencing list line."""
    if not path.is_file():
        raise missing(path, what, where)
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable image ({e}; referenced by {where})") from None
    return image


class PairedDataset(Dataset):
    """Base of the real-data loaders (kinds "deepfashion", "celebahq-edge", "ade20k")."""

    kind = ""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        if cfg.kind != self.kind:
            raise ValueError(
                f"{type(self).__name__} needs DataConfig.kind={self.kind!r}, got {cfg.kind!r}"
            )
        if not cfg.root:
            raise ValueError(
                f"DataConfig.root is required for kind={self.kind!r}: the dataset folder "
                "(e.g. --data.root DIR)"
            )
        self.limit = cfg.length(split)  # validates split
        self.root = Path(cfg.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found (kind {self.kind!r})")
        self.config = cfg
        self.split = split
        self.train = split == "train"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Training randomness of the next reads comes from (seed, epoch, index)."""
        self.epoch = int(epoch)

    def limited(self, entries: list) -> list:
        if self.limit is not None:
            if self.limit > len(entries):
                raise ValueError(
                    f"DataConfig.{self.split}_length={self.limit} but the {self.split} split "
                    f"has only {len(entries)} entries"
                )
            return entries[: self.limit]
        return entries

    def generator(self, index: int) -> np.random.Generator | None:
        """The random stream of training sample `index` this epoch; None for the test split."""
        if not self.train:
            return None
        return np.random.default_rng([self.config.seed, self.epoch, index])

    def transform(self, rng: np.random.Generator | None) -> Transform:
        cfg = self.config
        if rng is None:
            return Transform.plain(cfg.image_size)
        return draw_transform(rng, cfg.train_load_size(), cfg.image_size, cfg.flip)

    def reference_choice(self, rng: np.random.Generator | None) -> str:
        """ "self", "easy" or "hard" (training), "test" for the test split."""
        if rng is None:
            return "test"
        cfg = self.config
        return choose_reference(
            float(rng.random()), cfg.real_reference_probability, cfg.hard_reference_probability
        )

    def check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} pairs")
        return index % len(self)
