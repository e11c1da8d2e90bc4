"""Correspondence accuracy: how often a best match lands on the right class of the exemplar."""

from __future__ import annotations

import torch
from torch import Tensor

from .labels import centre_indices


def _labels_on_grid(label: Tensor, height: int, width: int) -> Tensor:
    """[B, H, W] class map read at the centres of an height x width grid: [B, height * width]."""
    rows = torch.from_numpy(centre_indices(label.shape[1], height)).to(label.device)
    cols = torch.from_numpy(centre_indices(label.shape[2], width)).to(label.device)
    return label[:, rows[:, None], cols[None, :]].reshape(label.shape[0], height * width)


def correspondence_accuracy(
    best_match: Tensor, label: Tensor, exemplar_label: Tensor, grid: tuple[int, int]
) -> Tensor:
    """Per sample, the fraction of query positions of the h x w `grid` whose best match (a key
    index y * w + x on the exemplar's h x w grid) lands on an exemplar position of the query's
    class. Classes are read at each grid cell's centre from the full-resolution maps (nearest).

    best_match [B, h*w] integer; label, exemplar_label [B, H, W] integer. Returns [B] float32 on
    best_match's device. Query positions labelled -1 (data without classes: pose and edge
    encodings) are skipped; a sample without any labelled position gets NaN (average with
    `torch.nanmean`).
    """
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2) or not all(
        isinstance(g, int) and g > 0 for g in grid
    ):
        raise ValueError(f"grid must be (h, w) positive ints, got {grid!r}")
    h, w = grid
    for name, x, dims in (
        ("best_match", best_match, 2),
        ("label", label, 3),
        ("exemplar_label", exemplar_label, 3),
    ):
        if not isinstance(x, Tensor) or x.dim() != dims or x.is_floating_point() or x.is_complex():
            what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a {dims}-D integer tensor, got {what}")
    batch = best_match.shape[0]
    if best_match.shape[1] != h * w:
        raise ValueError(
            f"best_match has {best_match.shape[1]} query positions, grid {h}x{w} has {h * w}"
        )
    if label.shape[0] != batch or exemplar_label.shape[0] != batch:
        raise ValueError(
            f"batch sizes differ: best_match {batch}, label {label.shape[0]}, "
            f"exemplar_label {exemplar_label.shape[0]}"
        )
    if best_match.numel() and (int(best_match.min()) < 0 or int(best_match.max()) >= h * w):
        raise ValueError(f"best_match indices must lie in [0, {h * w}) for a {h}x{w} grid")
    device = best_match.device
    query_class = _labels_on_grid(label.to(device), h, w)
    key_class = _labels_on_grid(exemplar_label.to(device), h, w)
    matched_class = torch.gather(key_class, 1, best_match.long())
    labelled = (query_class >= 0).float()
    hits = ((matched_class == query_class).float() * labelled).sum(dim=1)
    counted = labelled.sum(dim=1)
    # 0 / 0 = NaN marks a sample without classes.
    return hits / counted
