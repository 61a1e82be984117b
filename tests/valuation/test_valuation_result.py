"""ValuationResult: per-owner sums, digest, table and repr."""

from __future__ import annotations

import math

import numpy as np
import pytest

from databright.errors import ValuationError
from databright.valuation import ValuationResult


def make(values, ids=("a", "b", "c", "d")) -> ValuationResult:
    return ValuationResult(
        method="knn-shapley",
        params={"k": 3},
        seed=None,
        input_digests={"x_train": "00"},
        values=np.asarray(values, dtype=float),
        record_ids=tuple(ids),
    )


def test_per_owner_by_sequence_and_mapping() -> None:
    result = make([0.1, 0.2, -0.05, 0.3])
    by_seq = result.per_owner(["bob", "alice", "bob", "alice"])
    assert list(by_seq) == ["alice", "bob"]
    assert math.isclose(by_seq["alice"], 0.5, abs_tol=1e-15)
    assert math.isclose(by_seq["bob"], 0.05, abs_tol=1e-15)
    by_map = result.per_owner({"a": "bob", "b": "alice", "c": "bob", "d": "alice"})
    assert by_map == by_seq
    assert math.isclose(math.fsum(by_seq.values()), result.total(), abs_tol=1e-15)


def test_per_owner_refuses_incomplete_owners() -> None:
    result = make([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValuationError, match="3 owners for 4 records"):
        result.per_owner(["x", "y", "z"])
    with pytest.raises(ValuationError, match="no owner for record 'd'"):
        result.per_owner({"a": "x", "b": "x", "c": "y"})


def test_digest_binds_values_exactly() -> None:
    base = make([0.1, 0.2, 0.3, 0.4])
    assert base.digest == make([0.1, 0.2, 0.3, 0.4]).digest
    assert base == make([0.1, 0.2, 0.3, 0.4])
    nudged = make([0.1, 0.2, 0.3, np.nextafter(0.4, 1.0)])
    assert nudged.digest != base.digest
    assert make([0.1, 0.2, 0.3, 0.4], ids=("a", "b", "c", "e")).digest != base.digest
    assert len(base.digest) == 64


def test_values_are_read_only_copies() -> None:
    source = np.array([0.1, 0.2, 0.3, 0.4])
    result = make(source)
    source[0] = 9.0
    assert result.values[0] == 0.1
    with pytest.raises(ValueError):
        result.values[0] = 1.0


def test_to_dataframe_and_repr() -> None:
    result = make([0.1, 0.2, 0.3, 0.4])
    frame = result.to_dataframe()
    assert list(frame.columns) == ["record_id", "value"]
    assert list(frame["record_id"]) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(frame["value"].to_numpy(), [0.1, 0.2, 0.3, 0.4], rtol=0, atol=0)
    text = repr(result)
    assert "knn-shapley" in text and "records=4" in text and result.digest[:12] in text
    summary = result.summary()
    assert summary["digest"] == result.digest and summary["records"] == 4


@pytest.mark.parametrize(
    ("values", "ids", "fragment"),
    [
        ([0.1, float("nan")], ("a", "b"), "finite"),
        ([0.1, 0.2], ("a",), "1 record ids for 2"),
        ([0.1, 0.2], ("a", "a"), "repeat"),
        ([[0.1, 0.2]], ("a",), "1-D"),
    ],
)
def test_invalid_results_are_refused(values, ids, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment):
        make(values, ids)
