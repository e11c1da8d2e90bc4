"""The one validator of numeric settings, for every config and shape in the repository.

It lives in `kernels`, the lowest package with a number to check (`kernels.shapes`), so that the
model, data and training configs above it say "must be ..." in the same words.
"""

from __future__ import annotations

import math


def check_number(
    name: str,
    value: object,
    *,
    integer: bool = False,
    low: float = 0,
    high: float | None = None,
    strict: bool = False,
) -> None:
    """ValueError `"{name} must be {what was expected}, got {value!r}"` unless `value` is a finite
    number (an int when `integer`; a bool is neither) with `low <= value` (`low < value` when
    `strict`) and, when `high` is given, `value <= high`."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int if integer else (int, float))
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and (high is None or value <= high)
    )
    if not ok:
        raise ValueError(f"{name} must be {_expected(integer, low, high, strict)}, got {value!r}")


def _expected(integer: bool, low: float, high: float | None, strict: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if high is not None:
        return f"{kind} in {'(' if strict else '['}{low}, {high}]"
    if integer and low == 1 and not strict:
        return "a positive integer"
    return f"{kind} {'>' if strict else '>='} {low}"
