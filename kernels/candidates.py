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
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= upper):
        raise ValueError(
            f"{name} values must lie in [0, {upper}), got range "
            f"[{int(index.min())}, {int(index.max())}]"
        )


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
    _tag_window_shared(out, height, width)
    return out


# Attribute carrying (height, width, version) on tensors built by `inter_scale_candidates`.
_WINDOW_TAG = "_dynast_window_shared"


def _tag_window_shared(candidates: Tensor, height: int, width: int) -> None:
    """Mark `candidates` as shared by the 4 queries of every 2x2 window of a height x width grid.

    The fused kernels then read one list per window and gather each key once for four queries. The
    tensor's version counter is recorded so that any in-place change voids the mark."""
    setattr(candidates, _WINDOW_TAG, (height, width, candidates._version))


def window_shared_grid(candidates: Tensor) -> tuple[int, int] | None:
    """(height, width) when `candidates` is an unmodified output of `inter_scale_candidates`, whose
    2x2 windows of queries share one list; None otherwise (a copy, a view or an in-place change
    loses the mark, and the kernels then treat every query's list as its own)."""
    tag = getattr(candidates, _WINDOW_TAG, None)
    if tag is None or tag[2] != candidates._version:
        return None
    return tag[0], tag[1]


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
    return rearrange(torch.cat(parts, dim=-1), "b h w m -> b (h w) m").contiguous()
