"""Candidate lists of the sparse scales (docs/method.md section 4), built from top-k indices.

Both builders are cheap integer index arithmetic on [B, N, k] tensors, so plain PyTorch is enough on
every device; the kernels only consume their output, an immutable `CandidateList`. The attention
over these lists is `kernels.fused_candidates` (Triton) and `kernels.reference` (PyTorch).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor


def _check_index_map(name: str, index: Tensor, tokens: int, upper: int) -> Tensor:
    """Validates a [B, N, k] index map and returns it as int64 with values clamped to [0, upper):
    an out-of-range value is an error (raised now, or at the next check of deferred errors on a
    GPU), and the clamp makes sure nothing built from it can read outside the keys meanwhile."""
    if isinstance(index, CandidateList):
        raise ValueError(f"{name} must be a top-k index tensor, got a CandidateList")
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
    return index.long().clamp(0, upper - 1)


# Range checks. On the CPU a check is free: it runs at once. On a GPU reading its result would
# synchronise the device once per block, so there the check only launches a flag computation; the
# flag is read when the device has finished it (looked at, without waiting, by every later check)
# or by `check_index_errors()`, which a training loop calls once per step. Meanwhile the indices
# are clamped before any read, so a bad index never reads outside its tensor.
_pending: list[tuple[str, Tensor, object]] = []


def _defers(index: Tensor) -> bool:
    return index.is_cuda


def _range_message(name: str, index: Tensor, upper: int) -> str | None:
    lo, hi = (int(x) for x in torch.aminmax(index))
    if lo < 0 or hi >= upper:
        return f"{name} values must lie in [0, {upper}), got range [{lo}, {hi}]"
    return None


def check_index_range(name: str, index: Tensor, upper: int) -> None:
    """ValueError unless every value of the plain tensor `index` lies in [0, upper); deferred on a
    GPU (see above), where the caller must clamp before reading."""
    if index.numel() == 0:
        return
    if not _defers(index):
        message = _range_message(name, index, upper)
        if message is not None:
            raise ValueError(message)
        return
    _raise_finished()
    flag = ((index < 0) | (index >= upper)).any()
    event = None
    if index.is_cuda:
        # Copied to pinned host memory behind the event: once the event has passed, reading the
        # copy touches no device (a read of `flag` itself would wait for the whole stream).
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        flag = host
    _pending.append((f"{name} values must lie in [0, {upper})", flag, event))


def _raise_finished() -> None:
    """Raises the first deferred error whose flag the device has already computed (no wait)."""
    while _pending:
        message, flag, event = _pending[0]
        if event is not None and not event.query():
            return
        _pending.pop(0)
        if bool(flag):
            _pending.clear()
            raise ValueError(f"{message} (a deferred range check)")


def check_index_errors() -> None:
    """Waits for every deferred range check and raises the first that failed: one device
    synchronisation, meant once per training step. Free when nothing is pending."""
    if not _pending:
        return
    for _, _, event in _pending:
        if event is not None:
            event.synchronize()  # the last one waits; the others have passed by then
    flags = [bool(flag) for _, flag, _ in _pending]  # host copies (or CPU flags): no device
    messages = [message for message, _, _ in _pending]
    _pending.clear()
    for message, bad in zip(messages, flags, strict=True):
        if bad:
            raise ValueError(f"{message} (a deferred range check)")


_BUILDER = object()  # the key only this module's builders hold


class CandidateList:
    """Candidate key indices [B, N, M] int64 as the builders made them, immutable.

    Only `inter_scale_candidates` and `inner_scale_candidates` construct one. It holds the
    indices privately, with two facts true by construction: every value lies in [0, bound), and
    (`window` not None) the four queries of each 2x2 window of that grid share one list. Nothing
    outside can change its indices in place: every way to look at them (`indices`, attribute
    access, indexing, operators, torch functions) works on a copy, so the facts cannot go stale.
    The operators read the private tensor directly, without a range check or a copy."""

    __slots__ = ("_bound", "_indices", "_window")

    def __init__(
        self, key: object, indices: Tensor, bound: int, window: tuple[int, int] | None
    ) -> None:
        if key is not _BUILDER:
            raise ValueError(
                "CandidateList is built only by inter_scale_candidates and inner_scale_candidates; "
                "pass a plain index tensor to candidate_attention instead"
            )
        for name, value in (("_indices", indices), ("_bound", bound), ("_window", window)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CandidateList is immutable: cannot set {name!r}")

    @property
    def indices(self) -> Tensor:
        """A copy of the indices [B, N, M] int64 (changing it changes nothing here)."""
        return self._indices.clone()

    @property
    def bound(self) -> int:
        """Every index lies in [0, bound)."""
        return self._bound

    @property
    def window(self) -> tuple[int, int] | None:
        """(height, width) of the query grid whose 2x2 windows share one list, or None."""
        return self._window

    @property
    def shape(self) -> torch.Size:
        return self._indices.shape

    @property
    def dtype(self) -> torch.dtype:
        return self._indices.dtype

    @property
    def device(self) -> torch.device:
        return self._indices.device

    def dim(self) -> int:
        return self._indices.dim()

    def size(self, dim: int | None = None):
        return self._indices.size() if dim is None else self._indices.size(dim)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return (
            f"CandidateList(shape={tuple(self.shape)}, bound={self._bound}, "
            f"window={self._window}, device={self.device})"
        )

    def __getattr__(self, name: str):
        # Tensor methods (long, to, numpy, tolist, ...) act on a copy.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._indices.clone(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def plain(x):
            if isinstance(x, CandidateList):
                return x._indices.clone()
            if isinstance(x, (list, tuple)):
                return type(x)(plain(y) for y in x)
            return x

        kwargs = {k: plain(v) for k, v in (kwargs or {}).items()}
        return func(*plain(args), **kwargs)

    def __getitem__(self, item):
        return self._indices.clone()[item]

    def __iter__(self):
        return iter(self._indices.clone())

    def __array__(self, dtype=None, copy=None):
        array = self._indices.cpu().numpy().copy()
        return array if dtype is None else array.astype(dtype)

    __hash__ = None  # type: ignore[assignment]


def _binary(op: str):
    def method(self, other):
        return getattr(self._indices.clone(), op)(other)

    method.__name__ = op
    return method


for _op in (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__", "__sub__",
    "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__mod__", "__and__", "__or__",
):  # fmt: skip
    setattr(CandidateList, _op, _binary(_op))


def candidate_indices(candidates: Tensor | CandidateList) -> Tensor:
    """The indices the operators read: a CandidateList's own tensor (no copy; the operators do
    not write it), or the plain tensor given."""
    return candidates._indices if isinstance(candidates, CandidateList) else candidates


def window_shared_grid(candidates: Tensor | CandidateList) -> tuple[int, int] | None:
    """(height, width) when `candidates` is an inter-scale CandidateList, whose 2x2 windows of
    queries share one list; None for every plain tensor (the kernels then treat every query's
    list as its own, which is always correct)."""
    return candidates.window if isinstance(candidates, CandidateList) else None


def _check_grid(height: int, width: int) -> None:
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")


def inter_scale_candidates(coarse_topk: Tensor, height: int, width: int) -> CandidateList:
    """Candidates of the first block of a finer scale: a CandidateList [B, height*width, 4k].

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
    top = _check_index_map("coarse_topk", coarse_topk, ch * cw, ch * cw)
    u, v = top // cw, top % cw  # coarse key coordinates, [B, ch*cw, k]
    dy = torch.tensor([0, 0, 1, 1], device=top.device)
    dx = torch.tensor([0, 1, 0, 1], device=top.device)
    children = (2 * u[..., None] + dy) * width + (2 * v[..., None] + dx)  # [B, ch*cw, k, 4]
    per_cell = rearrange(children, "b (h w) k c -> b h w (k c)", h=ch, w=cw)
    per_query = repeat(per_cell, "b h w m -> b (h sy) (w sx) m", sy=2, sx=2)
    out = rearrange(per_query, "b h w m -> b (h w) m").contiguous()
    return CandidateList(_BUILDER, out, height * width, (height, width))


def inner_scale_candidates(topk: Tensor, height: int, width: int) -> CandidateList:
    """Candidates of the later blocks of a scale: a CandidateList [B, height*width, 5k].

    In order: the query's own k indices; those of its upper neighbour shifted one row down; lower
    neighbour shifted one row up; left neighbour shifted one column right; right neighbour shifted
    one column left. Shifted coordinates clamp to the grid. A neighbour missing at the border is
    replaced by the query itself, whose indices are then shifted the same way (the release pads the
    index map by replication). Duplicates are kept.
    """
    _check_grid(height, width)
    top = _check_index_map("topk", topk, height * width, height * width)
    grid = rearrange(top, "b (h w) k -> b h w k", h=height, w=width)
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
    return CandidateList(_BUILDER, out, height * width, None)
