"""Where the kernels run: whether Triton's CPU interpreter is on."""

from __future__ import annotations

import os


def interpreting() -> bool:
    """True when `TRITON_INTERPRET` is set to anything but "" or "0". Triton reads the variable
    when `@triton.jit` decorates a kernel, i.e. at import: setting it later changes nothing."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
