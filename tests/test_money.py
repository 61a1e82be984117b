"""Money at the edges: exact decimal text ↔ integer minor units."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.money import format_amount, parse_amount


@pytest.mark.parametrize(
    ("text", "minor"), [("10", 10_000_000), ("12.5", 12_500_000), ("0.000001", 1), ("1_000", 1_000_000_000)]
)
def test_parse_amount(text, minor):
    assert parse_amount(text) == minor


@pytest.mark.parametrize("text", ["-1", "0", "abc", "0.0000001", "nan", "inf"])
def test_parse_amount_refuses(text):
    with pytest.raises(ValueError):
        parse_amount(text)


@given(st.integers(min_value=1, max_value=10**30))
def test_format_then_parse_is_the_identity(minor):
    assert parse_amount(format_amount(minor, currency="")) == minor


def test_parse_is_exact_beyond_decimal_precision():
    # 29 significant digits: more than Decimal's default context keeps.
    assert parse_amount("10000000000000000000000.000001") == 10**28 + 1


def test_format_refuses_floats():
    with pytest.raises(TypeError):
        format_amount(1.5)  # type: ignore[arg-type]
