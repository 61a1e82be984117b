"""The KNN-Shapley engine: the packed-key sort, distances that do not depend on their neighbours,
and the ordered thread map, each against an independent reference."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.valuation.knn_shapley import map_in_order, neighbour_order, squared_distances


def reference_order(dist: np.ndarray) -> np.ndarray:
    """Sorted by exact distance, ties by index: a lexsort, no packing."""
    index = np.arange(dist.shape[1])
    return np.stack([np.lexsort((index, row)) for row in dist])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 4),
    n=st.integers(1, 400),
    kind=st.sampled_from(["continuous", "rounded", "near_ties", "mixed_scales"]),
)
def test_neighbour_order_is_distance_then_index(seed: int, rows: int, n: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        dist = rng.random((rows, n)) * 10
    elif kind == "rounded":  # many exact ties
        dist = np.round(rng.random((rows, n)) * 5, 1)
    elif kind == "near_ties":
        # Distances that share all but their last few bits: the packed keys cannot tell them apart,
        # so only the exact re-sort can order them, and they come in scrambled index order.
        base = np.full((rows, n), 2.0)
        dist = base + rng.integers(0, 6, size=(rows, n)) * np.spacing(2.0)
    else:
        dist = np.exp(rng.normal(scale=20, size=(rows, n)))
        dist[:, ::3] = 0.0
    got = neighbour_order(dist.copy())
    np.testing.assert_array_equal(got, reference_order(dist))


def test_neighbour_order_with_huge_and_infinite_distances() -> None:
    dist = np.array([[np.inf, 1e308, 0.0, np.inf, 1e-308, 1e308, 5e-324]])
    np.testing.assert_array_equal(neighbour_order(dist.copy()), reference_order(dist))


def test_neighbour_order_leaves_the_distances_alone(rng: np.random.Generator) -> None:
    dist = rng.random((3, 50))
    before = dist.copy()
    neighbour_order(dist)
    np.testing.assert_array_equal(dist, before)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 25), n=st.integers(1, 300))
def test_squared_distances_do_not_depend_on_what_else_is_computed(seed: int, d: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    x_train = rng.normal(size=(n, d)) * rng.choice([1e-3, 1.0, 1e3])
    x_test = rng.normal(size=(5, d))
    x_train_t = np.ascontiguousarray(x_train.T)
    together = squared_distances(x_test, x_train_t)
    # Row by row, and against the training points one slice at a time: the same bits.
    for r in range(5):
        alone = squared_distances(x_test[r : r + 1], x_train_t)
        np.testing.assert_array_equal(alone[0], together[r])
    cut = n // 2
    part = squared_distances(x_test, np.ascontiguousarray(x_train[cut:].T))
    np.testing.assert_array_equal(part, together[:, cut:])
    # And they are the feature-by-feature sum, within rounding of a straightforward reference.
    reference = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(together, reference, rtol=1e-13, atol=0)


def test_squared_distances_of_duplicates_are_identical(rng: np.random.Generator) -> None:
    x_train = rng.normal(size=(20000, 3))
    x_train[19_999] = x_train[3]  # in another tile than row 3
    dist = squared_distances(rng.normal(size=(2, 3)), np.ascontiguousarray(x_train.T))
    np.testing.assert_array_equal(dist[:, 3], dist[:, 19_999])


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_map_in_order_yields_in_span_order(jobs: int) -> None:
    seen_threads: set[str] = set()

    def work(start: int, stop: int) -> tuple[int, int]:
        seen_threads.add(threading.current_thread().name)
        time.sleep(0.001 * ((start * 7) % 5))  # finish out of order
        return start, stop

    spans = [(a, a + 3) for a in range(0, 60, 3)]
    assert list(map_in_order(work, spans, jobs)) == spans
    assert len(seen_threads) <= jobs


def test_map_in_order_raises_the_workers_error() -> None:
    def work(start: int, stop: int) -> int:
        if start == 6:
            raise RuntimeError("boom at 6")
        return start

    with pytest.raises(RuntimeError, match="boom at 6"):
        list(map_in_order(work, [(a, a + 3) for a in range(0, 30, 3)], 2))
