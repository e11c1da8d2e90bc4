"""Comparison of a computed tensor with its reference, with a report worth reading on failure."""

from __future__ import annotations

import torch
from torch import Tensor

# Tolerances per dtype for results computed in that dtype with fp32 accumulation.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-2),
    torch.bfloat16: (1e-2, 5e-2),
}


def assert_close(
    actual: Tensor,
    expected: Tensor,
    *,
    name: str,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """allclose with per-dtype defaults; NaNs must agree exactly. On failure the message gives the
    worst element's index and values, the max error and the RMS error relative to the reference."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    d_atol, d_rtol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        n = int((nan_a != nan_e).sum())
        raise AssertionError(f"{name}: {n} elements disagree on NaN (unwritten output?)")
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        worst = int(torch.argmax(err - rtol * e.abs()))
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        rms = float(err.pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements out of tolerance (atol={atol}, "
            f"rtol={rtol}); worst at {where}: got {a.flatten()[worst]:.6g}, expected "
            f"{e.flatten()[worst]:.6g}; max abs err {float(err.max()):.3g}; relative RMS {rms:.3g}"
        )
