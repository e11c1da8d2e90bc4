"""kernels.checks.check_number: the one validator of numeric settings names the setting and what
was expected."""

from __future__ import annotations

import math

import pytest

from kernels.checks import check_number


@pytest.mark.parametrize(
    ("value", "options", "expected"),
    [
        pytest.param(0, {"integer": True, "low": 1}, "a positive integer", id="int-zero"),
        pytest.param(1.5, {"integer": True, "low": 1}, "a positive integer", id="int-float"),
        pytest.param(True, {"integer": True, "low": 0}, "an integer >= 0", id="int-bool"),
        pytest.param(4, {"integer": True, "low": 8}, "an integer >= 8", id="int-low"),
        pytest.param(1, {"integer": True, "low": 2, "high": 9}, "an integer in [2, 9]", id="range"),
        pytest.param(0.0, {"strict": True}, "a finite number > 0", id="real-zero"),
        pytest.param(math.inf, {"strict": True}, "a finite number > 0", id="real-inf"),
        pytest.param(math.nan, {}, "a finite number >= 0", id="real-nan"),
        pytest.param("1", {}, "a finite number >= 0", id="real-str"),
        pytest.param(1.5, {"high": 1}, "a finite number in [0, 1]", id="real-high"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(value, options, expected):
    with pytest.raises(ValueError) as err:
        check_number("Owner.field", value, **options)
    assert str(err.value) == f"Owner.field must be {expected}, got {value!r}"


@pytest.mark.parametrize(
    ("value", "options"),
    [
        (1, {"integer": True, "low": 1}),
        (0, {"integer": True, "low": 0}),
        (9, {"integer": True, "low": 2, "high": 9}),
        (1e-8, {"strict": True}),
        (0, {}),
        (1.0, {"high": 1}),
    ],
)
def test_good_values_pass(value, options):
    check_number("x", value, **options)
