"""Activation checkpointing of one block whose forward updates buffers.

`torch.utils.checkpoint` (non-reentrant) keeps a block's inputs instead of its activations and
runs the block again in the backward to rebuild them. A block of this model changes state when it
runs in training mode: spectral norm's power iteration moves its `_u`, `_v` vectors, batch norm
its running statistics. Run again as it stands, the block would advance that state a second time,
and would rebuild its activations from the state the first run left, not from the one it started
from, so the gradients would differ from the run without checkpointing.

`checkpointed(block, *args)` snapshots the block's buffers when its forward starts; the
recomputation runs on a copy of that snapshot, swapped in for the buffers (the same power
iteration, the same normalised weights, the same activations bit for bit), and the live buffers
are put back afterwards, untouched: each forward changes the state once, as without checkpointing.
A block called twice per forward (the tied finest fusion block) takes one snapshot per call. The
block must be deterministic given its inputs and buffers (no dropout here; checkpoint restores the
random state anyway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class _BufferRewind:
    """The pair of context managers `checkpoint`'s `context_fn` asks for, sharing one snapshot."""

    def __init__(self, block: nn.Module) -> None:
        self.slots = [
            (module, name)
            for module in block.modules()
            for name, buffer in module.named_buffers(recurse=False)
            if buffer is not None
        ]
        self.snapshot: list[Tensor] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        with torch.no_grad():
            self.snapshot = [getattr(m, name).clone() for m, name in self.slots]
        yield

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        live = [getattr(m, name) for m, name in self.slots]
        # Copies swapped in (not written into the live buffers): what the recomputation updates
        # is thrown away, and no tensor autograd saved is modified in place.
        for (module, name), saved in zip(self.slots, self.snapshot, strict=True):
            setattr(module, name, saved.clone())
        try:
            yield
        finally:  # also when the recomputation stops early, once it has what it needs
            for (module, name), buffer in zip(self.slots, live, strict=True):
                setattr(module, name, buffer)

    def contexts(self) -> tuple[contextlib.AbstractContextManager, ...]:
        return self.forward(), self.recompute()


def checkpointed(block: nn.Module, *args: object, **kwargs: object) -> object:
    """`block(*args, **kwargs)` under non-reentrant activation checkpointing, with the block's
    buffers rewound for the recomputation (see the module doc)."""
    rewind = _BufferRewind(block)
    return checkpoint(block, *args, use_reentrant=False, context_fn=rewind.contexts, **kwargs)
