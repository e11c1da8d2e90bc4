"""Candidate sets of the sparse scales (method.md section 4), built from earlier top-k indices.

Both builders are cheap integer index arithmetic on [B, N, k] tensors, so plain PyTorch is enough on
every device; the kernels only consume their output.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor


def _check_index_map(name: str, index: Tensor, tokens: int, upper: int) -> None:
    if not isinstance(index, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an int32 or int64 tensor, got {index.dtype}")
    if index.dim() != 3:
        raise ValueError(f"{name} must be [B, N, k], got shape {tuple(index.shape)}")
    if index.shape[1] != tokens:
        raise ValueError(
            f"{name} must have {tokens} tokens on dim 1 for this grid, got {index.shape[1]}"
        )
    if index.shape[2] < 1:
        raise ValueError(f"{name} must hold at least one index per token (k >= 1)")
    check_index_range(name, index, upper)


def check_index_range(name: str, index: Tensor, upper: int) -> None:
    """ValueError unless every value lies in [0, upper); free for tensors tagged as such."""
    bound = known_bound(index)
    if index.numel() == 0 or (bound is not None and bound <= upper):
        return
    lo, hi = (int(x) for x in torch.aminmax(index))
    if lo < 0 or hi >= upper:
        raise ValueError(f"{name} values must lie in [0, {upper}), got range [{lo}, {hi}]")


def _check_grid(height: int, width: int) -> None:
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")


def inter_scale_candidates(coarse_topk: Tensor, height: int, width: int) -> Tensor:
    """Candidates of the first block of a finer scale: [B, height*width, 4k] int64.

    `coarse_topk` [B, (height/2)*(width/2), k] indexes the coarse key grid. Fine query (y, x) takes
    the matches of coarse cell (y//2, x//2), each expanded to its four children in row-major order,
    so candidate `t*4 + c` is child `c` of coarse match `t`; the 4 queries of a 2x2 window share it.
    """
    _check_grid(height, width)
    if height % 2 or width % 2:
        raise ValueError(
            f"height and width must be even for inter-scale candidates, got {height}x{width}"
        )
    ch, cw = height // 2, width // 2
    _check_index_map("coarse_topk", coarse_topk, ch * cw, ch * cw)
    top = coarse_topk.long()
    u, v = top // cw, top % cw  # coarse key coordinates, [B, ch*cw, k]
    dy = torch.tensor([0, 0, 1, 1], device=top.device)
    dx = torch.tensor([0, 1, 0, 1], device=top.device)
    children = (2 * u[..., None] + dy) * width + (2 * v[..., None] + dx)  # [B, ch*cw, k, 4]
    per_cell = rearrange(children, "b (h w) k c -> b h w (k c)", h=ch, w=cw)
    per_query = repeat(per_cell, "b h w m -> b (h sy) (w sx) m", sy=2, sx=2)
    out = rearrange(per_query, "b h w m -> b (h w) m").contiguous()
    return tag_indices(out, height * width, window=(height, width))


# Index tensors built here, and the top-k the operators return, carry a tag: the bound their values
# are known to lie under, the 2x2-window grid for inter-scale lists, and the tensor's version. With
# it the next operator skips a range check that costs a device synchronisation per block on a GPU,
# and the fused kernels read one list per window. An in-place change bumps the version and voids it.
_TAG = "_dynast_index_tag"


def _version(index: Tensor) -> int:
    # Inference tensors keep no version counter, and cannot be changed in place outside
    # inference mode.
    return -1 if index.is_inference() else index._version


def tag_indices(index: Tensor, bound: int, window: tuple[int, int] | None = None) -> Tensor:
    """Record that every value of `index` lies in [0, bound) (and, with `window`, that it is an
    inter-scale list on that grid). Returns `index`."""
    setattr(index, _TAG, (bound, window, _version(index)))
    return index


def _valid_tag(index: Tensor) -> tuple | None:
    tag = getattr(index, _TAG, None)
    return tag if tag is not None and tag[2] == _version(index) else None


def known_bound(index: Tensor) -> int | None:
    """The bound recorded by `tag_indices` if `index` is unchanged since, else None."""
    tag = _valid_tag(index)
    return None if tag is None else tag[0]


def window_shared_grid(candidates: Tensor) -> tuple[int, int] | None:
    """(height, width) when `candidates` is an unmodified output of `inter_scale_candidates`, whose
    2x2 windows of queries share one list; None otherwise (a copy, a view or an in-place change
    loses the mark, and the kernels then treat every query's list as its own)."""
    tag = _valid_tag(candidates)
    return None if tag is None else tag[1]


def inner_scale_candidates(topk: Tensor, height: int, width: int) -> Tensor:
    """Candidates of the later blocks of a scale: [B, height*width, 5k] int64.

    In order: the query's own k indices; those of its upper neighbour shifted one row down; lower
    neighbour shifted one row up; left neighbour shifted one column right; right neighbour shifted
    one column left. Shifted coordinates clamp to the grid. A neighbour missing at the border is
    replaced by the query itself, whose indices are then shifted the same way (the release pads the
    index map by replication). Duplicates are kept.
    """
    _check_grid(height, width)
    _check_index_map("topk", topk, height * width, height * width)
    grid = rearrange(topk.long(), "b (h w) k -> b h w k", h=height, w=width)
    # Replicate-pad by one cell on each side of the query grid.
    padded = torch.cat([grid[:, :1], grid, grid[:, -1:]], dim=1)
    padded = torch.cat([padded[:, :, :1], padded, padded[:, :, -1:]], dim=2)
    ys, xs = padded // width, padded % width

    def shifted(rows: slice, cols: slice, dy: int, dx: int) -> Tensor:
        y = (ys[:, rows, cols] + dy).clamp(0, height - 1)
        x = (xs[:, rows, cols] + dx).clamp(0, width - 1)
        return y * width + x

    inner, top_row, bottom_row = slice(1, -1), slice(None, -2), slice(2, None)
    parts = [
        grid,
        shifted(top_row, inner, 1, 0),
        shifted(bottom_row, inner, -1, 0),
        shifted(inner, top_row, 0, 1),
        shifted(inner, bottom_row, 0, -1),
    ]
    out = rearrange(torch.cat(parts, dim=-1), "b h w m -> b (h w) m").contiguous()
    return tag_indices(out, height * width)
