"""What every dataset of dynast returns: one (target layout, exemplar) pair as a dict of tensors."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from .labels import one_hot

# Label value of every pixel of a dataset without classes (pose and edge encodings).
NO_LABEL = -1


class Sample(TypedDict):
    """One pair. H, W = the configured image size, Cs = num_classes (semantic channels).

    semantic [Cs, H, W] float32: the one-hot of `label` for class-map data, or a continuous
    encoding (DeepFashion pose, CelebA-HQ edges); exemplar [3, H, W] float32 in [-1, 1];
    exemplar_semantic [Cs, H, W]; target [3, H, W] in [-1, 1] (zeros when absent); has_target
    scalar bool tensor; same_appearance scalar bool tensor: the exemplar shows the target's own
    appearance (the release's `self_ref`; only such pairs count in the warp loss); label [H, W]
    int64 class map of the target layout, all -1 for data without classes; exemplar_label [H, W]
    int64 likewise; index: position of the pair in its split. The default DataLoader collate
    batches it.
    """

    semantic: Tensor
    exemplar: Tensor
    exemplar_semantic: Tensor
    target: Tensor
    has_target: Tensor
    same_appearance: Tensor
    label: Tensor
    exemplar_label: Tensor
    index: int


def _image_tensor(image: np.ndarray | Tensor) -> Tensor:
    if isinstance(image, Tensor):
        return image.float().contiguous()
    return rearrange(torch.from_numpy(image), "h w c -> c h w").float().contiguous()


def _semantic_tensor(semantic: np.ndarray | Tensor, name: str, size: tuple[int, int]) -> Tensor:
    tensor = semantic if isinstance(semantic, Tensor) else torch.from_numpy(semantic)
    if tensor.dim() != 3 or tuple(tensor.shape[1:]) != size:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}: expected [Cs, {size[0]}, {size[1]}]"
        )
    return tensor.float().contiguous()


def build_sample(
    *,
    label: np.ndarray | None,
    target: np.ndarray | Tensor | None,
    exemplar_label: np.ndarray | None,
    exemplar: np.ndarray | Tensor,
    num_classes: int,
    index: int,
    semantic: np.ndarray | Tensor | None = None,
    exemplar_semantic: np.ndarray | Tensor | None = None,
    same_appearance: bool | None = None,
) -> Sample:
    """Assemble a Sample. Class-map data: labels [H, W] integer class maps with indices already
    checked against num_classes (the semantic maps are their one-hot). Encoded data: `semantic`
    and `exemplar_semantic` [Cs, H, W] given, labels None (filled with -1). Images [H, W, 3] numpy
    or [3, H, W] tensors in [-1, 1]; `target` None when there is no ground truth.
    `same_appearance` None means "whenever there is a ground truth" (the exemplar of synthetic and
    folder pairs shows the target's appearance). Raises ValueError when a size differs from the
    semantic map's."""
    if semantic is not None:
        if exemplar_semantic is None:
            raise ValueError("build_sample: semantic given without exemplar_semantic")
        size = tuple(semantic.shape[1:])
    else:
        if label is None or exemplar_label is None:
            raise ValueError("build_sample: give label and exemplar_label, or the semantic maps")
        size = label.shape
        if label.ndim != 2:
            raise ValueError(f"label must be a 2-D [H, W] class map, got shape {label.shape}")

    def image_size(array: np.ndarray | Tensor) -> tuple[int, ...]:
        return tuple(array.shape[1:]) if isinstance(array, Tensor) else tuple(array.shape[:2])

    for name, array in (("exemplar_label", exemplar_label), ("label", label)):
        if array is not None and array.shape != size:
            raise ValueError(
                f"{name} has shape {array.shape} but the semantic map is {size[0]}x{size[1]}"
            )
    for name, array in (("exemplar", exemplar), ("target", target)):
        if array is not None and image_size(array) != size:
            raise ValueError(
                f"{name} has size {image_size(array)} but the semantic map is "
                f"{size[0]}x{size[1]}: expected ({size[0]}, {size[1]})"
            )
    has_target = target is not None
    if semantic is None:
        label = label.astype(np.int64, copy=False)
        exemplar_label = exemplar_label.astype(np.int64, copy=False)
        semantic_t = one_hot(label, num_classes)
        exemplar_semantic_t = one_hot(exemplar_label, num_classes)
    else:
        semantic_t = _semantic_tensor(semantic, "semantic", size)
        exemplar_semantic_t = _semantic_tensor(exemplar_semantic, "exemplar_semantic", size)
        for name, t in (("semantic", semantic_t), ("exemplar_semantic", exemplar_semantic_t)):
            if t.shape[0] != num_classes:
                raise ValueError(
                    f"{name} has {t.shape[0]} channels but num_classes is {num_classes}"
                )
        if label is None:
            label = np.full(size, NO_LABEL, dtype=np.int64)
        if exemplar_label is None:
            exemplar_label = np.full(size, NO_LABEL, dtype=np.int64)
        label = label.astype(np.int64, copy=False)
        exemplar_label = exemplar_label.astype(np.int64, copy=False)
    if same_appearance is None:
        same_appearance = has_target
    return Sample(
        semantic=semantic_t,
        exemplar=_image_tensor(exemplar),
        exemplar_semantic=exemplar_semantic_t,
        target=_image_tensor(target) if has_target else torch.zeros(3, *size),
        has_target=torch.tensor(has_target),
        same_appearance=torch.tensor(bool(same_appearance)),
        label=torch.from_numpy(np.ascontiguousarray(label)),
        exemplar_label=torch.from_numpy(np.ascontiguousarray(exemplar_label)),
        index=index,
    )
