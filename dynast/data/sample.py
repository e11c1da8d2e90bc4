"""What every dataset of dynast returns: one (target layout, exemplar) pair as a dict of tensors."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from .labels import one_hot


class Sample(TypedDict):
    """One pair. H, W = the configured image size, Cs = num_classes.

    semantic [Cs, H, W] float32 one-hot of `label`; exemplar [3, H, W] float32 in [-1, 1];
    exemplar_semantic [Cs, H, W]; target [3, H, W] in [-1, 1] (zeros when absent); has_target
    scalar bool tensor; label [H, W] int64 class map of the target layout; exemplar_label [H, W]
    int64; index: position of the pair in its split. The default DataLoader collate batches it.
    """

    semantic: Tensor
    exemplar: Tensor
    exemplar_semantic: Tensor
    target: Tensor
    has_target: Tensor
    label: Tensor
    exemplar_label: Tensor
    index: int


def _image_tensor(image: np.ndarray) -> Tensor:
    return rearrange(torch.from_numpy(image), "h w c -> c h w").float().contiguous()


def build_sample(
    *,
    label: np.ndarray,
    target: np.ndarray | None,
    exemplar_label: np.ndarray,
    exemplar: np.ndarray,
    num_classes: int,
    index: int,
) -> Sample:
    """Assemble a Sample from numpy arrays: labels [H, W] integer class maps with indices already
    checked against num_classes, images [H, W, 3] in [-1, 1]; `target` None when there is no
    ground truth. Raises ValueError when the exemplar or target size differs from the semantic
    map's."""
    size = label.shape
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D [H, W] class map, got shape {label.shape}")
    for name, array, want in (
        ("exemplar_label", exemplar_label, size),
        ("exemplar", exemplar, (*size, 3)),
        ("target", target, (*size, 3)),
    ):
        if array is not None and array.shape != want:
            raise ValueError(
                f"{name} has shape {array.shape} but the semantic map is {size[0]}x{size[1]}: "
                f"expected {want}"
            )
    has_target = target is not None
    label = label.astype(np.int64, copy=False)
    exemplar_label = exemplar_label.astype(np.int64, copy=False)
    return Sample(
        semantic=one_hot(label, num_classes),
        exemplar=_image_tensor(exemplar),
        exemplar_semantic=one_hot(exemplar_label, num_classes),
        target=_image_tensor(target) if has_target else torch.zeros(3, *size),
        has_target=torch.tensor(has_target),
        label=torch.from_numpy(label),
        exemplar_label=torch.from_numpy(exemplar_label),
        index=index,
    )
