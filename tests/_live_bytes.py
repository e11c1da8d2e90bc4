"""The peak of live tensor memory over a block of code, measured from the allocations themselves.

A GPU run reads its peak from `torch.cuda.max_memory_allocated`; the CPU has no such counter, so
`LiveBytes` watches every operator that runs under it (a `TorchDispatchMode`): each tensor an
operator allocates (not a view, not an in-place result) is recorded with its storage's size and a
weak reference, and at every allocation the live total is summed over the storages still alive.
Memory is only taken at an allocation, so the maximum over those instants is the exact peak of
what the block allocated (tensors that existed before the block are not counted).

Triton's interpreter leaves reference cycles that hold a launch's arguments until the garbage
collector runs; a compiled launch on a GPU does not. So whenever a count would set a new peak,
the garbage collector runs first and the count is taken again: the peak is that of what the code
itself keeps alive.
"""

from __future__ import annotations

import gc

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as live: ...`, then `live.peak` (bytes) and `live.at_peak` (what was
    alive then: bytes, operator, shape, dtype; for a failure message)."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int, str]] = {}
        self.peak = 0
        self.at_peak: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view of, or an in-place write into, memory that already exists
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                label = f"{storage.nbytes()} B {func} {tuple(t.shape)} {t.dtype}"
                self._live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes(), label)
        if self._count() > self.peak:
            gc.collect()  # only here: a full collection at every operator would take minutes
            total = self._count()
            if total > self.peak:
                self.peak, self.at_peak = total, [label for *_, label in self._live.values()]
        return out

    def _count(self) -> int:
        self._live = {key: v for key, v in self._live.items() if not v[0].expired()}
        return sum(n for _, n, _ in self._live.values())
