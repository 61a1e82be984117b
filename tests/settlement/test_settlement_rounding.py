"""largest_remainder: exact integer apportionment, checked against a Fraction reference."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.errors import SettlementError
from databright.settlement import largest_remainder

keys = st.text(alphabet="abcdefghij:_-0123456789", min_size=1, max_size=6)
weights_st = st.dictionaries(
    keys, st.integers(min_value=0, max_value=10**12), min_size=1, max_size=12
).filter(lambda w: sum(w.values()) > 0)
totals = st.integers(min_value=0, max_value=10**20)


def hamilton_reference(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Independent reference: exact shares as Fractions, extras by largest fractional part, then key."""
    whole = sum(weights.values())
    shares = {k: Fraction(total * w, whole) for k, w in weights.items()}
    parts = {k: math.floor(s) for k, s in shares.items()}
    left = total - sum(parts.values())
    order = sorted(shares, key=lambda k: (-(shares[k] - parts[k]), k))
    for k in order[:left]:
        parts[k] += 1
    return parts


@given(totals, weights_st)
def test_parts_sum_exactly_and_stay_within_one_unit_of_the_exact_share(total, weights):
    parts = largest_remainder(total, weights)
    assert sum(parts.values()) == total
    whole = sum(weights.values())
    for key, part in parts.items():
        share = Fraction(total * weights[key], whole)
        assert math.floor(share) <= part <= math.ceil(share)
        if weights[key] == 0:
            assert part == 0


@given(totals, weights_st)
def test_matches_the_fraction_reference(total, weights):
    assert largest_remainder(total, weights) == hamilton_reference(total, weights)


@given(totals, weights_st, st.randoms(use_true_random=False))
def test_order_of_the_input_dict_does_not_matter(total, weights, rnd: random.Random):
    items = list(weights.items())
    rnd.shuffle(items)
    assert largest_remainder(total, dict(items)) == largest_remainder(total, weights)


@given(totals, weights_st)
def test_deterministic_and_keeps_input_key_order(total, weights):
    first = largest_remainder(total, weights)
    assert first == largest_remainder(total, dict(weights))
    assert list(first) == list(weights)


def test_ties_go_to_the_smaller_key_and_closed_forms():
    assert largest_remainder(10, {"c": 1, "b": 1, "a": 1}) == {"c": 3, "b": 3, "a": 4}
    assert largest_remainder(2, {"x": 1, "y": 1, "z": 1}) == {"x": 1, "y": 1, "z": 0}
    assert largest_remainder(1_000_000, {"data": 7000, "compute": 2000, "fee": 1000}) == {
        "data": 700_000,
        "compute": 200_000,
        "fee": 100_000,
    }
    # 333 333 * 7000 / 10000 = 233 333.1, * 2000 = 66 666.6, * 1000 = 33 333.3: compute rounds up.
    assert largest_remainder(333_333, {"data": 7000, "compute": 2000, "fee": 1000}) == {
        "data": 233_333,
        "compute": 66_667,
        "fee": 33_333,
    }
    assert largest_remainder(0, {"a": 5, "b": 0}) == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    ("total", "weights", "needle"),
    [
        (10, {"a": 0, "b": 0}, "all zero"),
        (10, {}, "all zero"),
        (10, {"a": 1.5}, "float"),
        (10, {"a": True}, "bool"),
        (10, {"a": -1}, "negative"),
        (10.0, {"a": 1}, "float"),
        (-1, {"a": 1}, "negative"),
    ],
)
def test_bad_inputs_are_refused_with_the_value(total, weights, needle):
    with pytest.raises(SettlementError, match=needle):
        largest_remainder(total, weights)
