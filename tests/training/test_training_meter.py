"""UsageMeter: exact visit counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.errors import TrainingError
from databright.training import UsageMeter


def test_counts_repeats_and_batches() -> None:
    meter = UsageMeter(5)
    meter.record([0, 1, 1, 4])
    meter.record(np.array([1, 3], dtype=np.int32))
    meter.record([])
    np.testing.assert_array_equal(meter.visits, [1, 3, 0, 1, 1])
    assert meter.visits.dtype == np.int64
    assert meter.total == 6
    assert "total_visits=6" in repr(meter)


def test_visits_is_a_copy() -> None:
    meter = UsageMeter(2)
    meter.visits[0] = 99
    assert meter.total == 0


@given(st.lists(st.lists(st.integers(0, 9), max_size=12), max_size=15))
def test_property_matches_counting(batches: list[list[int]]) -> None:
    meter = UsageMeter(10)
    for batch in batches:
        meter.record(batch)
    expected = [sum(b.count(i) for b in batches) for i in range(10)]
    assert meter.visits.tolist() == expected
    assert meter.total == sum(len(b) for b in batches)


@pytest.mark.parametrize(("indices", "fragment"), [([5], "index 5"), ([-1], "index -1"), ([0.5], "integers")])
def test_bad_indices_are_refused(indices, fragment: str) -> None:
    with pytest.raises(TrainingError, match=fragment):
        UsageMeter(5).record(indices)


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_bad_size_is_refused(n) -> None:
    with pytest.raises(TrainingError, match="record count"):
        UsageMeter(n)
