"""Where the kernels run (whether Triton's CPU interpreter is on), and the buffers they write."""

from __future__ import annotations

import os

import torch
from torch import Tensor


def interpreting() -> bool:
    """True when `TRITON_INTERPRET` is set to anything but "" or "0". Triton reads the variable
    when `@triton.jit` decorates a kernel, i.e. at import: setting it later changes nothing."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer that kernels write in full. The fused launchers allocate every such buffer here,
    calling it as `runtime.empty` so that one patch of this function reaches them all: the tests
    (tests/kernels/conftest.py) return NaN-filled buffers, and an element no program writes shows.
    Buffers accumulated with atomics start from zeros instead, and stand-in pointers that a
    constexpr flag leaves unused come from torch.empty."""
    return torch.empty(shape, dtype=dtype, device=device)
