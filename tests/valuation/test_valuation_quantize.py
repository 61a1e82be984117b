"""quantize_weights: clipping, scale, exact half-up rounding, determinism."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.errors import ValuationError
from databright.valuation import quantize_value, quantize_weights


def test_clipping_scale_and_sorted_keys() -> None:
    weights = quantize_weights({"zed": 0.25, "amy": -0.5, "bob": 0.0, "cat": 1e-9}, scale=10**9)
    assert list(weights) == ["amy", "bob", "cat", "zed"]
    assert weights == {"amy": 0, "bob": 0, "cat": 1, "zed": 250_000_000}
    assert quantize_weights({"a": 0.75}, scale=4) == {"a": 3}


def test_half_up_on_exact_binary_value() -> None:
    # 0.5 and 2.5 are exact binary fractions: half-up rounds them away from zero.
    assert quantize_value(0.5, scale=1) == 1
    assert quantize_value(2.5, scale=1) == 3
    # 0.0000000015 is slightly below 1.5e-9 in binary, so ·1e9 rounds down to 1 — no float fuzz.
    assert Fraction(0.0000000015) < Fraction(15, 10**10)
    assert quantize_value(0.0000000015) == 1


@given(
    values=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
        max_size=20,
    ),
    scale=st.integers(1, 10**12),
)
def test_property_matches_exact_rational_rounding(values: dict[str, float], scale: int) -> None:
    weights = quantize_weights(values, scale=scale)
    assert list(weights) == sorted(values)
    assert weights == quantize_weights(dict(reversed(list(values.items()))), scale=scale)
    for key, value in values.items():
        exact = Fraction(max(value, 0.0)) * scale
        assert isinstance(weights[key], int)
        assert weights[key] >= 0
        # Half-up: the weight is floor(exact + 1/2), within half a unit of the exact product.
        assert weights[key] == (exact + Fraction(1, 2)).__floor__()
        assert abs(weights[key] - exact) <= Fraction(1, 2)


@pytest.mark.parametrize("scale", [0, -5, 1.5, True])
def test_bad_scale_is_refused(scale) -> None:
    with pytest.raises(ValuationError, match="scale="):
        quantize_weights({"a": 1.0}, scale=scale)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "abc"])
def test_bad_values_are_refused(value) -> None:
    with pytest.raises(ValuationError, match="value"):
        quantize_weights({"a": value})
