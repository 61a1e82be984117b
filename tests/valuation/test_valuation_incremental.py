"""Incremental KNN-Shapley: a merged or shrunk index gives the values of a full recompute, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import ValuationError
from databright.valuation.incremental import KnnIndex
from databright.valuation.knn_shapley import KNNRegressionShapley, KNNShapley


def dataset(seed: int, n: int, n_test: int, grid: bool) -> tuple[np.ndarray, ...]:
    """Features on a small integer grid (many tied distances, exact duplicates) or continuous."""
    rng = np.random.default_rng(seed)
    if grid:
        x = rng.integers(0, 3, size=(n, 2)).astype(float)
        x_test = rng.integers(0, 3, size=(n_test, 2)).astype(float)
    else:
        x = rng.normal(size=(n, 3))
        x[n // 2 :: 5] = x[0]  # exact duplicates of an early record among the later ones
        x_test = rng.normal(size=(n_test, 3))
    y = rng.integers(0, 3, size=n)
    y_test = rng.integers(0, 3, size=n_test)
    return x, y, x_test, y_test


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 120),
    n_test=st.integers(1, 40),
    cuts=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=3),
    grid=st.booleans(),
    k=st.integers(1, 6),
)
def test_adding_records_gives_the_values_of_a_full_recompute(
    seed: int, n: int, n_test: int, cuts: list[float], grid: bool, k: int
) -> None:
    x, y, x_test, y_test = dataset(seed, n, n_test, grid)
    bounds = sorted({max(1, min(n - 1, int(c * n))) for c in cuts})
    index = KnnIndex.build(x[: bounds[0]], x_test)
    for lo, hi in zip(bounds, [*bounds[1:], n], strict=True):
        index = index.add(x[lo:hi])  # several versions, merged lazily on read
    for method in (KNNShapley(k=k), KNNRegressionShapley(k=k, chunk_size=3, n_jobs=2)):
        y_num = y.astype(float) if isinstance(method, KNNRegressionShapley) else y
        y_test_num = y_test.astype(float) if isinstance(method, KNNRegressionShapley) else y_test
        full = method.values(x, y_num, x_test, y_test_num)
        np.testing.assert_array_equal(method.values(x, y_num, x_test, y_test_num, index=index), full)
    # The merged arrays are exactly those of an index built from scratch.
    rebuilt, merged = KnnIndex.build(x, x_test), index.materialize(n_jobs=2)
    np.testing.assert_array_equal(merged.order, rebuilt.order)
    np.testing.assert_array_equal(merged.distances, rebuilt.distances)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 100),
    n_test=st.integers(1, 20),
    grid=st.booleans(),
    data=st.data(),
)
def test_removing_records_gives_the_values_of_a_full_recompute(
    seed: int, n: int, n_test: int, grid: bool, data: st.DataObject
) -> None:
    x, y, x_test, y_test = dataset(seed, n, n_test, grid)
    gone = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 1, unique=True))
    keep = np.setdiff1d(np.arange(n), gone)
    # Remove from an index that still has records pending a merge: both steps compose.
    index = KnnIndex.build(x[: n // 2 + 1], x_test).add(x[n // 2 + 1 :]).remove(np.array(gone))
    knn = KNNShapley(k=3)
    expected = knn.values(x[keep], y[keep], x_test, y_test)
    np.testing.assert_array_equal(knn.values(x[keep], y[keep], x_test, y_test, index=index), expected)


def test_valuation_result_through_an_index_equals_the_full_one(rng: np.random.Generator) -> None:
    x, y, x_test, y_test = dataset(5, 300, 25, grid=False)
    ids = [f"r{i}" for i in range(300)]
    index = KnnIndex.build(x[:270], x_test, n_jobs=2).add(x[270:])
    full = KNNShapley(k=5).valuate(x, y, x_test, y_test, record_ids=ids)
    through = KNNShapley(k=5).valuate(x, y, x_test, y_test, record_ids=ids, index=index)
    assert through == full and through.digest == full.digest


def test_save_load_and_memory_map_round_trip(tmp_path) -> None:
    x, y, x_test, y_test = dataset(9, 200, 12, grid=True)
    index = KnnIndex.build(x[:150], x_test).add(x[150:])
    saved = index.save(tmp_path / "v2")
    assert sorted(p.name for p in saved.iterdir()) == [
        "distances.npy",
        "index.json",
        "order.npy",
        "x_test.npy",
    ]
    loaded = KnnIndex.load(saved, mmap=True)
    assert isinstance(loaded.order, np.memmap) and loaded.n_train == 200 and loaded.n_base == 200
    knn = KNNShapley(k=2)
    np.testing.assert_array_equal(
        knn.values(x, y, x_test, y_test, index=loaded), knn.values(x, y, x_test, y_test)
    )
    # A memory-mapped index grows like any other; writing it over its own files is refused.
    grown = loaded.add(x[:5])
    x3, y3 = np.concatenate([x, x[:5]]), np.concatenate([y, y[:5]])
    np.testing.assert_array_equal(
        knn.values(x3, y3, x_test, y_test, index=grown), knn.values(x3, y3, x_test, y_test)
    )
    with pytest.raises(ValuationError, match="reads from"):
        grown.save(saved)
    # Built straight to disk: the same arrays as in memory.
    on_disk = KnnIndex.build(x, x_test, out=tmp_path / "direct")
    np.testing.assert_array_equal(KnnIndex.load(tmp_path / "direct").order, on_disk.order)
    np.testing.assert_array_equal(on_disk.order, index.materialize().order)


def test_an_index_of_other_data_is_refused(rng: np.random.Generator) -> None:
    x, y, x_test, y_test = dataset(3, 80, 6, grid=False)
    index = KnnIndex.build(x[:70], x_test).add(x[70:])
    knn = KNNShapley(k=3)
    moved = x.copy()
    moved[int(index.order[2, 0])] += 1e-9  # the nearest neighbour of test point 2 moved a little
    with pytest.raises(ValuationError, match="does not match x_train: test point 2"):
        knn.values(moved, y, x_test, y_test, index=index)
    tampered = x.copy()
    tampered[75] += 1.0
    with pytest.raises(ValuationError, match="differ from the records added"):
        knn.values(tampered, y, x_test, y_test, index=index)
    with pytest.raises(ValuationError, match="x_test differs"):
        knn.values(x, y, x_test + 1.0, y_test, index=index)
    with pytest.raises(ValuationError, match="does not fit 79 training"):
        knn.values(x[:79], y[:79], x_test, y_test, index=index)


def test_bad_edits_are_refused() -> None:
    x, _, x_test, _ = dataset(4, 30, 3, grid=False)
    index = KnnIndex.build(x, x_test)
    with pytest.raises(ValuationError, match="outside 0…29"):
        index.remove([30])
    with pytest.raises(ValuationError, match="repeat"):
        index.remove([1, 1])
    with pytest.raises(ValuationError, match="leaves nothing"):
        index.remove(np.arange(30))
    with pytest.raises(ValuationError, match="integers"):
        index.remove([0.5])
    with pytest.raises(ValuationError, match="x_new has 2 features"):
        index.add(np.zeros((4, 2)))
    assert index.add(np.zeros((0, 3))) is index and index.remove([]) is index
    with pytest.raises(ValuationError, match="features but x_test"):
        KnnIndex.build(x, x_test[:, :2])
    with pytest.raises(ValuationError, match="both need rows"):
        KnnIndex.build(x[:0], x_test)


def test_unreadable_index_directories_are_refused(tmp_path) -> None:
    with pytest.raises(ValuationError, match="cannot read a KNN index"):
        KnnIndex.load(tmp_path / "missing")
    x, _, x_test, _ = dataset(4, 30, 3, grid=False)
    path = KnnIndex.build(x, x_test).save(tmp_path / "idx")
    (path / "index.json").write_text('{"format": "something-else", "n_test": 3, "n_train": 30}')
    with pytest.raises(ValuationError, match="not a databright-knn-index-v1"):
        KnnIndex.load(path)
