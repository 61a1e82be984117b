"""quantize_weights: the documented rules for ties, tiny values, the all-zero case and keys."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.errors import SettlementError, ValuationError
from databright.settlement.rounding import largest_remainder
from databright.valuation.owners import RecordGroups, owner_values
from databright.valuation.quantize import DEFAULT_SCALE, quantize_value, quantize_weights

values_st = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)


@given(
    base=st.dictionaries(st.text(min_size=1, max_size=6), values_st, max_size=12),
    extra=st.dictionaries(st.text(min_size=1, max_size=6), values_st, max_size=12),
)
def test_each_weight_depends_on_its_own_value_only(base: dict[str, float], extra: dict[str, float]) -> None:
    # No normalisation: adding or removing other keys never moves a weight, so ties stay ties.
    merged = {**extra, **base}
    weights, merged_weights = quantize_weights(base), quantize_weights(merged)
    for key in base:
        assert merged_weights[key] == weights[key] == quantize_value(base[key])


@given(value=values_st, names=st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=8, unique=True))
def test_ties_get_equal_weights(value: float, names: list[str]) -> None:
    weights = quantize_weights(dict.fromkeys(names, value))
    assert len(set(weights.values())) == 1


def test_values_below_half_a_unit_and_negatives_weigh_nothing() -> None:
    half_unit = 0.5 / DEFAULT_SCALE
    below = math.nextafter(half_unit, 0.0)
    assert Fraction(below) * DEFAULT_SCALE < Fraction(1, 2)
    assert quantize_weights({"a": below, "b": -1e-3, "c": -0.0, "d": 5e-324}) == dict.fromkeys("abcd", 0)
    # 0.5e-9 as a float lies just above 1/2 · 10^-9, so it rounds up, exactly as its binary value says.
    assert Fraction(half_unit) * DEFAULT_SCALE > Fraction(1, 2)
    assert quantize_value(half_unit) == 1


def test_all_zero_weights_are_returned_as_they_are_and_the_caller_decides() -> None:
    weights = quantize_weights({"ann": -0.2, "bob": 0.0, "cat": 1e-12})
    assert weights == {"ann": 0, "bob": 0, "cat": 0}
    # Apportioning money by all-zero weights is refused downstream; settlement falls back to rows used.
    with pytest.raises(SettlementError, match="all zero"):
        largest_remainder(100, weights)
    assert quantize_weights({}) == {}


def test_owner_sums_net_out_before_clipping() -> None:
    # An owner's harmful record reduces their sum; only the sum is clipped.
    groups = RecordGroups(["a", "b", "c"], ["ann", "ann", "bob"])
    owned = owner_values([0.3, -0.1, -0.2], groups)
    assert owned.weights() == {"ann": 200_000_000, "bob": 0}


def test_large_values_and_scales_are_exact() -> None:
    assert quantize_value(1e300, scale=10**9) == int(Fraction(1e300) * 10**9)
    assert quantize_value(np.float64(0.125), scale=8) == 1
    assert quantize_value(np.float32(0.25), scale=4) == 1
    assert quantize_value(3, scale=2) == 6


def test_keys_that_read_the_same_are_refused() -> None:
    with pytest.raises(ValuationError, match="'1'"):
        quantize_weights({1: 0.5, "1": 0.25})  # type: ignore[dict-item]
