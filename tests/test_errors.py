"""The shared parameter checks of ``repro.errors``: what they accept, and what their messages say."""
from __future__ import annotations

import math

import pytest

from repro.errors import ParameterError, check_choices, check_number


def test_check_number_accepts_the_closed_or_open_range_and_returns_a_float():
    assert check_number("lr", 1, 0.0) == 1.0 and isinstance(check_number("lr", 1, 0.0), float)
    assert check_number("alpha", 0.0, 0.0, 1.0) == 0.0
    assert check_number("alpha", 1.0, 0.0, 1.0) == 1.0
    assert check_number("steps", 3, 1, integer=True) == 3.0


@pytest.mark.parametrize("value, kw, message", [
    (0.0, dict(lo=0.0, lo_open=True), "lr must be a number > 0, got 0.0"),
    (1.5, dict(lo=0.0, hi=1.0), "lr must be a number ≥ 0 and ≤ 1, got 1.5"),
    (True, dict(lo=0.0), "got True"),
    ("0.1", dict(lo=0.0), "got '0.1'"),
    (math.nan, dict(lo=0.0), "got nan"),
    (math.inf, dict(lo=0.0), "got inf"),
    (2.0, dict(lo=1, integer=True), "lr must be an integer ≥ 1, got 2.0"),
])
def test_check_number_refuses_with_the_range_in_the_message(value, kw, message):
    with pytest.raises(ParameterError) as err:
        check_number("lr", value, **kw)
    assert message in str(err.value)


def test_check_choices_lists_the_unknown_and_the_known():
    assert check_choices(["a"], ["a", "b"], "model") == ["a"]
    with pytest.raises(ParameterError, match=r"unknown model\(s\) 'c'; models: a, b"):
        check_choices(["c"], ["a", "b"], "model")
