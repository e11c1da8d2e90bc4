"""Candidate lists of the sparse scales (docs/method.md section 4), built from top-k indices.

Both builders are cheap integer index arithmetic on [B, N, k] tensors, so plain PyTorch is enough on
every device; the kernels only consume their output, an immutable `CandidateList`: the one type of
candidate list, whose `kind` ("inner" or "inter") says which builder made it. The attention over
these lists is `kernels.candidates` (Triton kernels, the CPU path and the reference).

A CandidateList knows its provenance: the kind of list ("inner" or "inter"), the grid and a private
copy of the top-k it derives from. The list itself is built only when something reads it (the
reference, the CPU path, the fused kernels' list path); the fused kernels' default path derives
each query's candidates in registers from that top-k, so no list is written or read
(docs/kernels-candidates.md, "Candidates derived in the kernel").

Index dtype: int32 wherever every flattened key row fits (B * Nk < 2^31, `index_dtype`), else
int64; both are accepted everywhere.

While `torch.compile` traces, a builder only describes its list (shapes checked, no values read):
the range check and the private copy need the values, and run where the list is consumed, inside
the registered operator of `kernels.custom_ops`, which calls the builder again (`candidate_list`).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor

# Candidates per previous match: the match and its 4 neighbours' (inner), its 4 children (inter).
# The one home of this fact: the kinds of candidate list are its keys.
PER_MATCH = {"inner": 5, "inter": 4}


def index_dtype(batch: int, bound: int) -> torch.dtype:
    """int32 when every key row of the batch, b * bound + index, fits in 31 bits; else int64."""
    return torch.int32 if batch * bound < 2**31 else torch.int64


def _check_index_shape(name: str, index: Tensor, tokens: int) -> None:
    """ValueError unless `index` is a [B, tokens, k >= 1] int32 or int64 tensor (no values read)."""
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


def _checked_copy(name: str, index: Tensor, upper: int, bound: int) -> Tensor:
    """A private contiguous copy of a shape-checked index map, clamped to [0, upper), in
    `index_dtype(B, bound)`: an out-of-range value is an error (raised now, or at the next check
    of deferred errors on a GPU), and the clamp makes sure nothing built from it can read outside
    the keys meanwhile."""
    check_index_range(name, index, upper)
    # One pass: the narrowing copy is also the private one (the caller's tensor may change).
    dtype = index_dtype(index.shape[0], bound)
    return index.to(dtype, copy=True, memory_format=torch.contiguous_format).clamp_(0, upper - 1)


# Range checks. On the CPU a check is free: it runs at once. On a GPU reading its result would
# synchronise the device once per block, so there the check only launches a flag computation; the
# flag is read when the device has finished it (looked at, without waiting, by every later check)
# or by `check_index_errors()`, which a training loop calls once per step. Meanwhile the indices
# are clamped before any read, so a bad index never reads outside its tensor.
pending: list[tuple[str, Tensor, object]] = []


def defers(index: Tensor) -> bool:
    """Whether the range check of `index` is deferred (on a GPU) rather than run at once."""
    return index.is_cuda


def range_message(name: str, index: Tensor, upper: int) -> str | None:
    lo, hi = (int(x) for x in torch.aminmax(index))
    if lo < 0 or hi >= upper:
        return f"{name} values must lie in [0, {upper}), got range [{lo}, {hi}]"
    return None


def check_index_range(name: str, index: Tensor, upper: int) -> None:
    """ValueError unless every value of the plain tensor `index` lies in [0, upper); deferred on a
    GPU (see above), where the caller must clamp before reading."""
    if index.numel() == 0:
        return
    if not defers(index):
        message = range_message(name, index, upper)
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
    pending.append((f"{name} values must lie in [0, {upper})", flag, event))


def _raise_finished() -> None:
    """Raises the first deferred error whose flag the device has already computed (no wait)."""
    while pending:
        message, flag, event = pending[0]
        if event is not None and not event.query():
            return
        pending.pop(0)
        if bool(flag):
            pending.clear()
            raise ValueError(f"{message} (a deferred range check)")


def check_index_errors() -> None:
    """Waits for every deferred range check and raises the first that failed: one device
    synchronisation, meant once per training step. Free when nothing is pending."""
    if not pending:
        return
    for _, _, event in pending:
        if event is not None:
            event.synchronize()  # the last one waits; the others have passed by then
    flags = [bool(flag) for _, flag, _ in pending]  # host copies (or CPU flags): no device
    messages = [message for message, _, _ in pending]
    pending.clear()
    for message, bad in zip(messages, flags, strict=True):
        if bad:
            raise ValueError(f"{message} (a deferred range check)")


_BUILDER = object()  # the key only this module's builders hold


class CandidateList:
    """Candidate key indices [B, N, M] as the builders made them, immutable: the one type of
    candidate list, of `kind` "inner" or "inter".

    Only the builders (`inter_scale_candidates`, `inner_scale_candidates`, `candidate_list`)
    construct one. It holds a private copy of the top-k it derives from (`kind`, `grid`), with
    facts true by construction: every index lies in [0, bound), and (`window` not None) the four
    queries of each 2x2 window of that grid share one list. The list itself [B, N, M] (int32
    where `index_dtype` allows, else int64) is built from the private top-k the first time
    something reads it, and kept. A list described while `torch.compile` traced (module
    docstring) checks and copies its top-k the first time something reads it.

    Nothing outside can change it: every way to look at the indices (`indices`, attribute
    access, indexing, operators, torch functions) works on a copy, so the facts cannot go stale.
    The operators read the private tensors directly, without a range check or a copy, and the
    fused kernels by default never build the list (they derive it from the top-k)."""

    __slots__ = ("_built", "_checked", "_grid", "_kind", "_source")

    def __init__(
        self,
        key: object,
        kind: str,
        source: Tensor,
        height: int,
        width: int,
        *,
        checked: bool = True,
    ) -> None:
        if key is not _BUILDER:
            raise ValueError(
                "CandidateList is built only by inter_scale_candidates, inner_scale_candidates "
                "and candidate_list; pass a plain index tensor to candidate_attention instead"
            )
        grid = (height, width)
        for name, value in (
            ("_kind", kind),
            ("_source", source),
            ("_grid", grid),
            ("_built", None),
            ("_checked", checked),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CandidateList is immutable: cannot set {name!r}")

    def _top(self) -> Tensor:
        """The private, checked top-k (checked and copied now if the list was only described)."""
        if not self._checked:
            copy = _checked_top(self._kind, self._source, *self._grid)
            object.__setattr__(self, "_source", copy)
            object.__setattr__(self, "_checked", True)
        return self._source

    def _list(self) -> Tensor:
        """The private list [B, N, M], built on first use (never handed out: copies only)."""
        if self._built is None:
            build = _inner_list if self._kind == "inner" else _inter_list
            object.__setattr__(self, "_built", build(self._top(), *self._grid))
        return self._built

    @property
    def is_built(self) -> bool:
        """Whether the list [B, N, M] has been built (the fused kernels' default path never
        builds it)."""
        return self._built is not None

    @property
    def indices(self) -> Tensor:
        """A copy of the indices [B, N, M] (changing it changes nothing here)."""
        return self._list().clone()

    @property
    def kind(self) -> str:
        """The builder that made the list: "inner" or "inter"."""
        return self._kind

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the query grid (and of the key grid, whose tokens the list names)."""
        return self._grid

    @property
    def topk(self) -> Tensor:
        """A copy of the (clamped) top-k the list derives from: [B, height*width, k] inner,
        [B, (height/2)*(width/2), k] inter."""
        return self._top().clone()

    @property
    def bound(self) -> int:
        """Every index lies in [0, bound)."""
        return self._grid[0] * self._grid[1]

    @property
    def window(self) -> tuple[int, int] | None:
        """(height, width) of the query grid whose 2x2 windows share one list, or None."""
        return self._grid if self._kind == "inter" else None

    @property
    def shape(self) -> torch.Size:
        b, _, k = self._source.shape
        return torch.Size((b, self.bound, PER_MATCH[self._kind] * k))

    @property
    def dtype(self) -> torch.dtype:
        return index_dtype(self._source.shape[0], self.bound)

    @property
    def device(self) -> torch.device:
        return self._source.device

    def dim(self) -> int:
        return 3

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"CandidateList(kind={self._kind!r}, shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"bound={self.bound}, window={self.window}, device={self.device})"
        )

    def __getattr__(self, name: str):
        # Tensor methods (long, to, numpy, tolist, ...) act on a copy.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._list().clone(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def plain(x):
            if isinstance(x, CandidateList):
                return x._list().clone()
            if isinstance(x, (list, tuple)):
                return type(x)(plain(y) for y in x)
            return x

        kwargs = {k: plain(v) for k, v in (kwargs or {}).items()}
        return func(*plain(args), **kwargs)

    def __getitem__(self, item):
        return self._list().clone()[item]

    def __iter__(self):
        return iter(self._list().clone())

    def __array__(self, dtype=None, copy=None):
        array = self._list().cpu().numpy().copy()
        return array if dtype is None else array.astype(dtype)

    __hash__ = None  # type: ignore[assignment]


def _binary(op: str):
    def method(self, other):
        return getattr(self._list().clone(), op)(other)

    method.__name__ = op
    return method


for _op in (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__radd__", "__sub__",
    "__rsub__", "__mul__", "__rmul__", "__floordiv__", "__mod__", "__and__", "__or__",
):  # fmt: skip
    setattr(CandidateList, _op, _binary(_op))


def candidate_indices(candidates: Tensor | CandidateList) -> Tensor:
    """The indices the operators read: a CandidateList's own list (built now if it was not; no
    copy, the operators do not write it), or the plain tensor given."""
    return candidates._list() if isinstance(candidates, CandidateList) else candidates


def candidate_source(candidates: Tensor | CandidateList) -> tuple[str, Tensor] | None:
    """(kind, top-k) a CandidateList derives from (its private tensors: read, never write), for
    kernels that derive the candidates themselves; None for a plain tensor."""
    if isinstance(candidates, CandidateList):
        return candidates._kind, candidates._top()
    return None


def builder_arguments(candidates: CandidateList) -> tuple[str, Tensor, int, int]:
    """(kind, top-k, height, width): `candidate_list`'s arguments that make this list again. The
    top-k is the list's own, as described (no values read, so `torch.compile` traces this)."""
    return candidates._kind, candidates._source, *candidates._grid


def window_shared_grid(candidates: Tensor | CandidateList) -> tuple[int, int] | None:
    """(height, width) when `candidates` is an inter-scale CandidateList, whose 2x2 windows of
    queries share one list; None for every plain tensor (the kernels then treat every query's
    list as its own, which is always correct)."""
    return candidates.window if isinstance(candidates, CandidateList) else None


def _check_grid(height: int, width: int) -> None:
    for name, size in (("height", height), ("width", width)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")


def _top_sizes(kind: str, height: int, width: int) -> tuple[str, int]:
    """(argument name, tokens) of the top-k a list of this kind derives from: the coarse grid's
    cells (inter), or the grid's tokens (inner)."""
    if kind == "inter":
        return "coarse_topk", (height // 2) * (width // 2)
    return "topk", height * width


def _checked_top(kind: str, top: Tensor, height: int, width: int) -> Tensor:
    """The builder's private copy of a shape-checked top-k (`_checked_copy`): values index the
    coarse grid (inter) or the grid itself (inner); the list's keys are the grid's tokens."""
    name, tokens = _top_sizes(kind, height, width)
    return _checked_copy(name, top, tokens, height * width)


def _made(kind: str, top: Tensor, height: int, width: int) -> CandidateList:
    name, tokens = _top_sizes(kind, height, width)
    _check_index_shape(name, top, tokens)
    if torch.compiler.is_compiling():
        # Traced: no values to read (module docstring). The list checks its top-k where read.
        return CandidateList(_BUILDER, kind, top, height, width, checked=False)
    return CandidateList(_BUILDER, kind, _checked_top(kind, top, height, width), height, width)


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
    return _made("inter", coarse_topk, height, width)


def inner_scale_candidates(topk: Tensor, height: int, width: int) -> CandidateList:
    """Candidates of the later blocks of a scale: a CandidateList [B, height*width, 5k].

    In order: the query's own k indices; those of its upper neighbour shifted one row down; lower
    neighbour shifted one row up; left neighbour shifted one column right; right neighbour shifted
    one column left. Shifted coordinates clamp to the grid. A neighbour missing at the border is
    replaced by the query itself, whose indices are then shifted the same way (the release pads the
    index map by replication). Duplicates are kept.
    """
    _check_grid(height, width)
    return _made("inner", topk, height, width)


def candidate_list(kind: str, topk: Tensor, height: int, width: int) -> CandidateList:
    """The builder of `kind`: `inter_scale_candidates` ("inter", topk indexing the coarse grid)
    or `inner_scale_candidates` ("inner"), on the height x width query grid."""
    if kind not in PER_MATCH:
        raise ValueError(f"kind must be one of {tuple(PER_MATCH)}, got {kind!r}")
    builder = inner_scale_candidates if kind == "inner" else inter_scale_candidates
    return builder(topk, height, width)


def _inter_list(top: Tensor, height: int, width: int) -> Tensor:
    """The inter-scale list [B, height*width, 4k] of a checked coarse top-k (its dtype)."""
    ch, cw = height // 2, width // 2
    u, v = top // cw, top % cw  # coarse key coordinates, [B, ch*cw, k]
    dy = torch.tensor([0, 0, 1, 1], device=top.device, dtype=top.dtype)
    dx = torch.tensor([0, 1, 0, 1], device=top.device, dtype=top.dtype)
    children = (2 * u[..., None] + dy) * width + (2 * v[..., None] + dx)  # [B, ch*cw, k, 4]
    per_cell = rearrange(children, "b (h w) k c -> b h w (k c)", h=ch, w=cw)
    per_query = repeat(per_cell, "b h w m -> b (h sy) (w sx) m", sy=2, sx=2)
    return rearrange(per_query, "b h w m -> b (h w) m").contiguous()


def _inner_list(top: Tensor, height: int, width: int) -> Tensor:
    """The inner-scale list [B, height*width, 5k] of a checked top-k (its dtype)."""
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
    return rearrange(torch.cat(parts, dim=-1), "b h w m -> b (h w) m").contiguous()
