"""The built-in procedural exemplar-translation dataset, generated on the fly.

A pair: the classes of the sample (background 0 plus a random subset of the others), one
class-to-appearance map, and two independent layouts of those same classes. Target = the target
layout painted with the appearance; exemplar = the exemplar layout painted with it. Every pair is a
pure function of (seed, split, index) through its own numpy generator, so any worker can make any
sample and train and test never share a stream.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .appearance import paint, random_appearance
from .config import SPLITS, DataConfig
from .layout import choose_classes, random_layout
from .sample import Sample, build_sample
from .textures import photo_textures


class SyntheticDataset(Dataset):
    """Pairs of `cfg` (kind "synthetic") for `split` ("train" | "test")."""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        if cfg.kind != "synthetic":
            raise ValueError(
                f"SyntheticDataset needs DataConfig.kind='synthetic', got {cfg.kind!r}"
            )
        self.length = cfg.length(split)  # validates split
        self.config = cfg
        self.split = split
        self.photos = photo_textures(cfg.image_size) if cfg.textures == "photo" else ()

    def __len__(self) -> int:
        return self.length

    def generator(self, index: int) -> np.random.Generator:
        """The random stream of pair `index`: independent per (seed, split, index)."""
        return np.random.default_rng([self.config.seed, SPLITS.index(self.split), index])

    def __getitem__(self, index: int) -> Sample:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} {self.split} pairs")
        index %= self.length
        cfg, rng = self.config, self.generator(index)
        k, size = cfg.num_classes, cfg.image_size
        classes = choose_classes(rng, k)
        appearance = random_appearance(rng, classes, k, size, self.photos)
        label, frames = random_layout(rng, classes, k, size)
        exemplar_label, exemplar_frames = random_layout(rng, classes, k, size)
        target = paint(label, frames, appearance) * 2.0 - 1.0
        exemplar = paint(exemplar_label, exemplar_frames, appearance) * 2.0 - 1.0
        return build_sample(
            label=label,
            target=target,
            exemplar_label=exemplar_label,
            exemplar=exemplar,
            num_classes=k,
            index=index,
        )
