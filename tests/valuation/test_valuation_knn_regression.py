"""Exact KNN-Shapley for regression against Shapley values by enumeration of every subset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import ValuationError
from databright.valuation.enumeration import exact_shapley
from databright.valuation.knn_shapley import KNNRegressionShapley, KNNShapley


def regression_utility(subset, x_train, y_train, x_test, y_test, k: int) -> float:
    """U(S): mean over test points of −(ŷ − t)², ŷ = (1/k)·Σ y over the min(k, |S|) nearest of S."""
    total = 0.0
    for xv, t in zip(x_test, y_test, strict=True):
        ranked = sorted(subset, key=lambda i: (float(np.sum((x_train[i] - xv) ** 2)), i))
        prediction = sum(float(y_train[i]) for i in ranked[:k]) / k
        total += -((prediction - float(t)) ** 2)
    return total / len(x_test)


def by_enumeration(x_train, y_train, x_test, y_test, k: int) -> np.ndarray:
    return exact_shapley(len(x_train), lambda s: regression_utility(s, x_train, y_train, x_test, y_test, k))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_matches_enumeration(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    x_train = rng.normal(size=(n, 3))
    y_train = rng.normal(size=n) * 2.0
    x_test = rng.normal(size=(3, 3))
    y_test = rng.normal(size=3)
    got = KNNRegressionShapley(k=k).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, by_enumeration(x_train, y_train, x_test, y_test, k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_matches_enumeration_with_ties_and_duplicates(k: int) -> None:
    rng = np.random.default_rng(11)
    x_train = rng.integers(0, 3, size=(8, 2)).astype(float)
    x_train[6] = x_train[2]
    x_train[7] = x_train[2]
    y_train = rng.integers(-3, 4, size=8).astype(float)
    x_test = rng.integers(0, 3, size=(3, 2)).astype(float)
    y_test = np.array([0.5, -1.0, 2.0])
    got = KNNRegressionShapley(k=k, chunk_size=1).values(x_train, y_train, x_test, y_test)
    np.testing.assert_allclose(got, by_enumeration(x_train, y_train, x_test, y_test, k), rtol=0, atol=1e-12)


def test_hand_worked_case() -> None:
    # K = 1, one test point at 0 with target t = 1; training points at 1 (y = 3) and 2 (y = 0).
    # U(∅) = −1, U({0}) = −(3−1)² = −4, U({1}) = −(0−1)² = −1, U({0,1}) = U({0}) = −4 (0 is nearer).
    # s_0 = ½(−4 − (−1)) + ½(−4 − (−1)) = −3;  s_1 = ½(−1 − (−1)) + ½(−4 − (−4)) = 0.
    got = KNNRegressionShapley(k=1).values([[1.0], [2.0]], [3.0, 0.0], [[0.0]], [1.0])
    np.testing.assert_allclose(got, [-3.0, 0.0], rtol=0, atol=1e-15)


def test_fewer_training_points_than_k() -> None:
    # K = 3 > N = 2: ŷ_S = Σ_S y / 3 always. t = 0: U(S) = −(Σ_S y)²/9, a quadratic game whose Shapley
    # value is −(y_i² + y_i·y_j)/9 for the pair {i, j}.
    got = KNNRegressionShapley(k=3).values([[0.0], [1.0]], [3.0, 6.0], [[0.0]], [0.0])
    np.testing.assert_allclose(got, [-(9 + 18) / 9, -(36 + 18) / 9], rtol=0, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    n_test=st.integers(1, 10),
    k=st.integers(1, 8),
)
def test_efficiency_axiom(seed: int, n: int, n_test: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    x_train = rng.normal(size=(n, 2))
    y_train = rng.normal(size=n)
    x_test = rng.normal(size=(n_test, 2))
    y_test = rng.normal(size=n_test)
    values = KNNRegressionShapley(k=k).values(x_train, y_train, x_test, y_test)
    full = regression_utility(tuple(range(n)), x_train, y_train, x_test, y_test, k)
    empty = regression_utility((), x_train, y_train, x_test, y_test, k)
    assert abs(math.fsum(values.tolist()) - (full - empty)) <= 1e-11


def test_bit_identical_across_chunks_and_threads(rng: np.random.Generator) -> None:
    x_train = rng.normal(size=(257, 3))
    x_train[::9] = x_train[4]
    y_train = rng.normal(size=257)
    x_test = rng.normal(size=(41, 3))
    y_test = rng.normal(size=41)
    reference = KNNRegressionShapley(k=4, chunk_size=1, n_jobs=1).values(x_train, y_train, x_test, y_test)
    for chunk, jobs in [(3, 2), (16, 3), (None, None), (7, 1)]:
        again = KNNRegressionShapley(k=4, chunk_size=chunk, n_jobs=jobs).values(
            x_train, y_train, x_test, y_test
        )
        np.testing.assert_array_equal(again, reference)


def test_valuate_names_the_method(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    result = KNNRegressionShapley(k=2).valuate(x, y, x[:2], y[:2])
    classification = KNNShapley(k=2).valuate(x, (y > 0).astype(int), x[:2], (y[:2] > 0).astype(int))
    assert result.method == "knn-shapley-regression"
    assert result.params["task"] == "regression" and classification.params["task"] == "classification"


@pytest.mark.parametrize(
    ("y_train", "y_test", "fragment"),
    [
        (np.array(["a", "b", "c"]), np.array(["a"]), "numeric targets"),
        (np.array([1.0, np.nan, 2.0]), np.array([1.0]), r"y_train\[1\]"),
        (np.array([1.0, 2.0, 3.0]), np.array([np.inf]), r"y_test\[0\]"),
    ],
)
def test_bad_targets_are_refused(y_train, y_test, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment):
        KNNRegressionShapley(k=1).values(np.zeros((3, 1)), y_train, np.zeros((1, 1)), y_test)
