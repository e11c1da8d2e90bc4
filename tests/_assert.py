"""Comparison of a computed tensor with its reference, with a report worth reading on failure.

Rounding noise depends on the CPU, the thread count and the summation order, so no comparison
here may rest on an absolute tolerance picked by looking at one machine. Three tools, in order of
preference:

- `assert_close(..., magnitude=...)`: the tolerance scales with the sum of the absolute values of
  the terms that were added (`|a| @ |b|` for a product, see `sum_magnitude`): a sum of n terms in
  a dtype with unit roundoff u is off by at most about n u sum|terms| in the worst case and
  sqrt(n) u sum|terms| in practice, whatever the order.
- `assert_error_within`: where the terms cannot be written down (gradients through a whole
  model), the error against a float64 run must stay within a factor of the error the float32
  reference itself makes against that run. A mathematically zero result (a bias that feeds a
  normalisation) has a float64 value at float64 noise and is compared as such.
- `assert_close` with the per-dtype defaults, only where every term is of the size of the result.
"""

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


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2 of a floating dtype: the relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def sum_magnitude(a: Tensor, b: Tensor) -> Tensor:
    """|a| @ |b| in float64 (batched): the sum of absolute terms behind every element of a @ b."""
    return torch.matmul(a.detach().double().abs(), b.detach().double().abs())


def sum_tolerance(magnitude: Tensor | float, dtype: torch.dtype, terms: int) -> Tensor | float:
    """Bound on the rounding error of a sum of `terms` products accumulated in `dtype`: the
    worst-case gamma_n = n u / (1 - n u) of Higham's analysis times the sum of |terms|, with a
    factor 2 for the products' own rounding and a reduction order that is not ours."""
    u = unit_roundoff(dtype)
    n = max(int(terms), 1) + 2
    return 2 * (n * u / max(1 - n * u, 0.5)) * magnitude


def assert_close(
    actual: Tensor,
    expected: Tensor,
    *,
    name: str,
    atol: float | Tensor | None = None,
    rtol: float | None = None,
    magnitude: Tensor | None = None,
) -> None:
    """allclose with per-dtype defaults; NaNs must agree exactly. On failure the message gives the
    worst element's index and values, the max error and the RMS error relative to the reference.

    `atol` may be a tensor broadcast against the elements; `magnitude` (the sum of absolute terms
    behind each element, broadcast) adds `rtol * magnitude` to the tolerance, so a result that is
    small only by cancellation is not compared at its own size."""
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
    atol_t = torch.as_tensor(atol, dtype=torch.float64).cpu()
    scale = e.abs()
    if magnitude is not None:
        scale = torch.maximum(scale, magnitude.detach().double().cpu().expand_as(e))
    allowed = (atol_t + rtol * scale).expand_as(err)
    bad = err > allowed
    if bad.any():
        worst = int(torch.argmax(err - allowed))
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        with_magnitude = (
            "scaled by the terms' magnitude" if magnitude is not None else "no magnitude"
        )
        rms = float(err.pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements out of tolerance "
            f"(atol={float(atol_t.max()):.3g}, rtol={rtol}, {with_magnitude}); worst at "
            f"{where}: got {a.flatten()[worst]:.6g}, expected {e.flatten()[worst]:.6g}, allowed "
            f"{float(allowed.flatten()[worst]):.3g}; max abs err {float(err.max()):.3g}; "
            f"relative RMS {rms:.3g}"
        )


def assert_error_within(
    actual: Tensor,
    baseline: Tensor,
    exact: Tensor,
    *,
    name: str,
    factor: float = 8.0,
    floor: float = 2.0**-20,
    atol: float = 0.0,
) -> None:
    """`actual`'s max error against the float64 `exact` is at most `factor` times `baseline`'s
    (the same quantity computed by the float32 reference), plus `floor` times max |exact|, plus
    `atol` (for results that are small by cancellation: the rounding bound of the summed terms,
    `sum_tolerance`).

    The baseline's error measures the rounding noise of this computation on this machine, with
    this thread count; the floor covers a tensor whose baseline is exact by luck. A result that is
    mathematically zero (max |exact| below float32 noise of the baseline) is reported as such."""
    if not (actual.shape == baseline.shape == exact.shape):
        raise AssertionError(
            f"{name}: shapes {tuple(actual.shape)}, {tuple(baseline.shape)}, {tuple(exact.shape)}"
        )
    a, b, x = (t.detach().double().cpu() for t in (actual, baseline, exact))
    for label, t in (("actual", a), ("baseline", b), ("exact", x)):
        if not torch.isfinite(t).all():
            raise AssertionError(f"{name}: {label} has non-finite elements")
    err_a, err_b = float((a - x).abs().max()), float((b - x).abs().max())
    size = float(x.abs().max())
    allowed = factor * err_b + floor * size + atol
    if err_a > allowed:
        zero = size <= err_b
        kind = "mathematically zero (float64 value below the fp32 noise); " if zero else ""
        raise AssertionError(
            f"{name}: {kind}max error {err_a:.3g} against float64 exceeds {allowed:.3g} "
            f"({factor} x the fp32 reference's own error {err_b:.3g} + {floor:.3g} x max|exact| "
            f"{size:.3g})"
        )
