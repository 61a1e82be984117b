"""Exact KNN-Shapley against Shapley values by enumeration of every subset."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import DatabrightError, ValuationError
from databright.valuation.incremental import KnnIndex
from databright.valuation.knn_shapley import KNNShapley
from databright.valuation.protocol import Valuator
from databright.valuation.result import ValuationResult


def knn_utility(subset: tuple[int, ...], x_train, y_train, x_test, y_test, k: int) -> float:
    """U(S): mean over test points of (1/k)·#matching labels among the min(k,|S|) nearest of S."""
    if not subset:
        return 0.0
    total = 0.0
    for xv, yv in zip(x_test, y_test, strict=True):
        # Nearest first; equal distances go to the lower index, the same rule as the fast method.
        ranked = sorted(subset, key=lambda i: (float(np.sum((x_train[i] - xv) ** 2)), i))
        total += sum(1 for i in ranked[:k] if y_train[i] == yv) / k
    return total / len(x_test)


def shapley_by_enumeration(x_train, y_train, x_test, y_test, k: int) -> np.ndarray:
    n = len(x_train)
    cache = {
        s: knn_utility(s, x_train, y_train, x_test, y_test, k)
        for size in range(n + 1)
        for s in itertools.combinations(range(n), size)
    }
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                with_i = tuple(sorted((*s, i)))
                values[i] += weight * (cache[with_i] - cache[s])
    return values


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_enumeration(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    x_train = rng.normal(size=(n, 3))
    y_train = rng.integers(0, 2, size=n)
    x_test = rng.normal(size=(4, 3))
    y_test = rng.integers(0, 2, size=4)
    expected = shapley_by_enumeration(x_train, y_train, x_test, y_test, k)
    got = KNNShapley(k=k).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_enumeration_with_ties_and_duplicates(k: int) -> None:
    # Integer grid points make many distances equal; duplicated rows are exactly tied.
    rng = np.random.default_rng(7)
    x_train = rng.integers(0, 3, size=(7, 2)).astype(float)
    x_train[5] = x_train[1]
    y_train = np.array([0, 1, 1, 0, 2, 1, 2])
    x_test = rng.integers(0, 3, size=(3, 2)).astype(float)
    y_test = np.array([1, 0, 2])
    expected = shapley_by_enumeration(x_train, y_train, x_test, y_test, k)
    got = KNNShapley(k=k, chunk_size=2).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_fewer_training_points_than_k_is_additive() -> None:
    # With N < K every subset keeps all its points, so U is additive and each match is worth 1/K.
    x_train = np.array([[0.0], [1.0], [2.0]])
    y_train = np.array([1, 0, 1])
    got = KNNShapley(k=5).values(x_train, y_train, np.array([[0.5]]), np.array([1]))
    np.testing.assert_allclose(got, [0.2, 0.0, 0.2], rtol=0, atol=1e-15)


def test_hand_worked_case() -> None:
    # One test point at 0 with label 1; training points at 1, 2, 3 (labels 1, 0, 1), K = 2.
    # Sorted by distance: α1 = 0 (match), α2 = 1 (miss), α3 = 2 (match). N = 3.
    # s3 = 1·min(2,3)/(2·3) = 1/3
    # s2 = s3 + (0 − 1)/2 · min(2,2)/2 = 1/3 − 1/2 = −1/6
    # s1 = s2 + (1 − 0)/2 · min(2,1)/1 = −1/6 + 1/2 = 1/3
    x_train = np.array([[1.0], [2.0], [3.0]])
    y_train = np.array([1, 0, 1])
    got = KNNShapley(k=2).values(x_train, y_train, np.array([[0.0]]), np.array([1]))
    np.testing.assert_allclose(got, [1 / 3, -1 / 6, 1 / 3], rtol=0, atol=1e-15)
    # Efficiency: U(full) = (1/2)·(1 + 0) = 1/2 = 1/3 − 1/6 + 1/3.
    assert math.isclose(float(got.sum()), 0.5, abs_tol=1e-15)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    n_test=st.integers(1, 12),
    k=st.integers(1, 8),
    classes=st.integers(1, 4),
)
def test_efficiency_axiom(seed: int, n: int, n_test: int, k: int, classes: int) -> None:
    rng = np.random.default_rng(seed)
    x_train = rng.normal(size=(n, 2))
    y_train = rng.integers(0, classes, size=n)
    x_test = rng.normal(size=(n_test, 2))
    y_test = rng.integers(0, classes, size=n_test)
    values = KNNShapley(k=k, chunk_size=5).values(x_train, y_train, x_test, y_test)
    full = knn_utility(tuple(range(n)), x_train, y_train, x_test, y_test, k)
    assert abs(math.fsum(values.tolist()) - (full - 0.0)) <= 1e-12


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    chunk=st.one_of(st.none(), st.integers(1, 20)),
    jobs=st.integers(1, 4),
)
def test_bit_identical_whatever_the_chunking_and_threads(seed: int, chunk: int | None, jobs: int) -> None:
    rng = np.random.default_rng(seed)
    x_train = rng.normal(size=(300, 4))
    x_train[::7] = x_train[0]  # exact duplicates: ties must break the same way every time
    y_train = rng.integers(0, 3, size=300)
    x_test = rng.normal(size=(53, 4))
    y_test = rng.integers(0, 3, size=53)
    reference = KNNShapley(k=5, chunk_size=1, n_jobs=1).values(x_train, y_train, x_test, y_test)
    again = KNNShapley(k=5, chunk_size=chunk, n_jobs=jobs).values(x_train, y_train, x_test, y_test)
    np.testing.assert_array_equal(again, reference)


def test_string_labels(rng: np.random.Generator) -> None:
    x_train = rng.normal(size=(6, 2))
    labels = np.array(["cat", "dog"])
    y_train = labels[rng.integers(0, 2, size=6)]
    x_test = rng.normal(size=(3, 2))
    y_test = labels[rng.integers(0, 2, size=3)]
    expected = shapley_by_enumeration(x_train, y_train, x_test, y_test, 3)
    got = KNNShapley(k=3).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_valuate_wraps_values(rng: np.random.Generator) -> None:
    x_train = rng.normal(size=(5, 2))
    y_train = np.array([0, 1, 0, 1, 1])
    x_test = rng.normal(size=(2, 2))
    y_test = np.array([1, 0])
    method = KNNShapley(k=3)
    assert isinstance(method, Valuator)
    ids = [f"r{i}" for i in range(5)]
    result = method.valuate(x_train, y_train, x_test, y_test, record_ids=ids, input_digests={"file": "ab"})
    assert isinstance(result, ValuationResult)
    assert result.method == "knn-shapley"
    assert result.params["k"] == 3
    assert result.record_ids == tuple(ids)
    assert set(result.input_digests) == {"x_train", "y_train", "x_test", "y_test", "file"}
    np.testing.assert_array_equal(result.values, method.values(x_train, y_train, x_test, y_test))
    # Same inputs, same digest; a different test label, a different digest.
    again = KNNShapley(k=3, chunk_size=1).valuate(
        x_train, y_train, x_test, y_test, record_ids=ids, input_digests={"file": "ab"}
    )
    assert again.digest == result.digest
    other = method.valuate(x_train, y_train, x_test, 1 - y_test, record_ids=ids, input_digests={"file": "ab"})
    assert other.digest != result.digest


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((np.zeros(3), np.zeros(3), np.zeros((1, 1)), np.zeros(1)), "2-D"),
        ((np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1)), "2 labels for 3 rows"),
        ((np.zeros((3, 2)), np.zeros(3), np.zeros((1, 3)), np.zeros(1)), "2 features but x_test has 3"),
        ((np.zeros((0, 2)), np.zeros(0), np.zeros((1, 2)), np.zeros(1)), "no rows"),
        ((np.zeros((3, 2)), np.zeros(3), np.zeros((0, 2)), np.zeros(0)), "validation point"),
        ((np.array([[0.0], [np.nan]]), np.zeros(2), np.zeros((1, 1)), np.zeros(1)), "row 1"),
        ((np.array([["a"], ["b"]]), np.zeros(2), np.zeros((1, 1)), np.zeros(1)), "numeric"),
        ((np.zeros((2, 1)), np.array([0, 1]), np.zeros((1, 1)), np.array(["1"])), "text labels"),
    ],
)
def test_bad_inputs_are_refused(args, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment) as info:
        KNNShapley(k=1).values(*args)
    assert isinstance(info.value, DatabrightError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "5"])
def test_bad_k_is_refused(k) -> None:
    with pytest.raises(ValuationError, match="k="):
        KNNShapley(k=k)


@pytest.mark.parametrize(("option", "value"), [("chunk_size", 0), ("n_jobs", 0), ("n_jobs", 1.5)])
def test_bad_chunk_size_or_threads_are_refused(option: str, value) -> None:
    with pytest.raises(ValuationError, match=f"{option}={value}"):
        KNNShapley(k=1, **{option: value})


def test_file_digests_may_not_shadow_array_digests() -> None:
    with pytest.raises(ValuationError, match="'x_train'"):
        KNNShapley(k=1).valuate(
            np.zeros((2, 1)), np.zeros(2), np.zeros((1, 1)), np.zeros(1), input_digests={"x_train": "ab"}
        )


def textbook_values(x_train, y_train, x_test, y_test, k: int) -> np.ndarray:
    """An independent reference: one stable argsort per test point, the recursion as a reverse
    cumulative sum, values placed with put_along_axis and averaged (the module's first version)."""
    n = x_train.shape[0]
    ranks = np.arange(1, n + 1)
    weight = np.minimum(k, ranks) / (k * ranks)
    total = np.zeros(n)
    for xv, yv in zip(x_test, y_test, strict=True):
        dist = ((x_train - xv) ** 2).sum(axis=1)
        order = np.argsort(dist, kind="stable")
        match = (y_train[order] == yv).astype(float)
        steps = np.append((match[:-1] - match[1:]) * weight[:-1], match[-1] * weight[-1])
        by_point = np.empty(n)
        by_point[order] = np.cumsum(steps[::-1])[::-1]
        total += by_point
    return total / len(x_test)


def test_matches_the_textbook_computation_on_larger_data(rng: np.random.Generator) -> None:
    x_train = rng.normal(size=(2000, 5))
    x_train[1500:] = x_train[:500]  # exact duplicates in the upper half
    y_train = rng.integers(0, 4, size=2000)
    x_test = rng.normal(size=(40, 5))
    y_test = rng.integers(0, 4, size=40)
    expected = textbook_values(x_train, y_train, x_test, y_test, 5)
    got = KNNShapley(k=5).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_large_training_sets_take_the_grouped_distance_path(rng: np.random.Generator) -> None:
    # Past 2**16 training points a step is one test point and distances are computed per block in a
    # reused per-thread buffer; the values must not notice.
    x_train = rng.integers(0, 40, size=(70_000, 2)).astype(float)  # many exact ties
    y_train = rng.integers(0, 3, size=70_000)
    x_test = rng.integers(0, 40, size=(35, 2)).astype(float)
    y_test = rng.integers(0, 3, size=35)
    one = KNNShapley(k=3, n_jobs=1).values(x_train, y_train, x_test, y_test)
    np.testing.assert_array_equal(KNNShapley(k=3, n_jobs=2).values(x_train, y_train, x_test, y_test), one)
    np.testing.assert_allclose(one, textbook_values(x_train, y_train, x_test, y_test, 3), rtol=0, atol=1e-15)
    index = KnnIndex.build(x_train[:69_300], x_test).add(x_train[69_300:])
    np.testing.assert_array_equal(KNNShapley(k=3).values(x_train, y_train, x_test, y_test, index=index), one)


def test_record_ids_must_match_rows() -> None:
    with pytest.raises(ValuationError, match="2 record ids for 3"):
        KNNShapley(k=1).valuate(
            np.zeros((3, 1)), np.zeros(3), np.zeros((1, 1)), np.zeros(1), record_ids=["a", "b"]
        )
