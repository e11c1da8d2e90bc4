"""Class-index maps: range checks, resampling by pixel centres, one-hot semantic maps.

Resampling picks, for every output cell, the input cell that contains the output cell's centre
(PIL's NEAREST and torch's "nearest-exact" do the same). The folder loader resizes label maps this
way and correspondence accuracy reads classes on coarse grids this way, so both agree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def centre_indices(source: int, target: int) -> np.ndarray:
    """For each of `target` cells spanning the same extent as `source` cells, the index of the
    source cell containing its centre: floor((j + 0.5) * source / target), in exact integers."""
    if source < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got source={source}, target={target}")
    return (2 * np.arange(target, dtype=np.int64) + 1) * source // (2 * target)


def resize_labels(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resampling of a [H, W] class map to [height, width] (no new classes appear)."""
    if label.shape == (height, width):
        return label
    rows = centre_indices(label.shape[0], height)
    cols = centre_indices(label.shape[1], width)
    return label[np.ix_(rows, cols)]


def check_label_range(label: np.ndarray, num_classes: int, *, name: str) -> None:
    """Raise ValueError naming `name` when a class index lies outside [0, num_classes)."""
    low, high = int(label.min()), int(label.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name}: class index {bad} is out of range for num_classes={num_classes} "
            f"(expected 0..{num_classes - 1})"
        )


def one_hot(label: np.ndarray, num_classes: int) -> Tensor:
    """[H, W] class indices -> [num_classes, H, W] float32 one-hot semantic map.

    One `scatter_` into a preallocated float32 tensor: about 5x faster than
    `torch.nn.functional.one_hot`, which builds an int64 [H, W, C] map and then converts and
    transposes it (docs/benchmarks.md, "Data loading")."""
    index = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    hot = torch.zeros((num_classes, *index.shape), dtype=torch.float32)
    return hot.scatter_(0, index.unsqueeze(0), 1.0)
