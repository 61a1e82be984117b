"""KNN-Shapley fanned out on a two-worker Dask LocalCluster: bit-identical to the single process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from databright.errors import ValuationError
from databright.valuation.distributed import DaskKNNShapley, absent_label
from databright.valuation.knn_shapley import BLOCK, KNNShapley

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    # Worker processes, not threads: the arrays are pickled, shipped and valued in other
    # interpreters, as on a real cluster (starts in about 2 s).
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as dask_client,
    ):
        yield dask_client


def data(rng: np.random.Generator, n_train: int, n_test: int, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    x_train = rng.normal(size=(n_train, 5))
    x_train[::11] = x_train[4]  # exact duplicates: ties must break by index on every worker
    x_test = rng.normal(size=(n_test, 5))
    return (
        x_train,
        labels[rng.integers(0, len(labels), n_train)],
        x_test,
        labels[rng.integers(0, len(labels), n_test)],
    )


@pytest.mark.parametrize(
    ("n_test", "labels"),
    [
        (77, np.array([0, 1, 2])),  # 4 full blocks and a ragged one of 13
        (2 * BLOCK, np.array([3, 7])),  # full blocks only
        (5, np.array(["cat", "dog", "eel"])),  # one ragged block, text labels
        (21, np.array([True, False])),
    ],
)
def test_bit_identical_to_one_process(
    client, rng: np.random.Generator, n_test: int, labels: np.ndarray
) -> None:
    x_train, y_train, x_test, y_test = data(rng, 500, n_test, labels)
    ids = [f"r{i}" for i in range(500)]
    local = KNNShapley(k=5).valuate(x_train, y_train, x_test, y_test, record_ids=ids)
    fanned = DaskKNNShapley(client, k=5, window=3).valuate(x_train, y_train, x_test, y_test, record_ids=ids)
    assert fanned.values.tobytes() == local.values.tobytes()
    assert fanned.digest == local.digest
    assert fanned.method == "knn-shapley" and fanned.params == local.params


def test_bad_inputs_are_refused_before_anything_is_shipped(client) -> None:
    fan = DaskKNNShapley(client, k=3)
    with pytest.raises(ValuationError, match="2 features but x_test has 3"):
        fan.values(np.zeros((4, 2)), np.zeros(4), np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValuationError, match="no rows"):
        fan.values(np.zeros((0, 2)), np.zeros(0), np.zeros((2, 2)), np.zeros(2))


def test_bad_setup_is_refused(client) -> None:
    with pytest.raises(ValuationError, match="no scatter"):
        DaskKNNShapley(object(), k=3)
    with pytest.raises(ValuationError, match="k=0"):
        DaskKNNShapley(client, k=0)
    with pytest.raises(ValuationError, match="window=0"):
        DaskKNNShapley(client, k=3, window=0)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 5, -2], dtype=np.int8),
        np.array([127, -128], dtype=np.int8),
        np.array([0.5, 1.5]),
        np.array(["a", "b"]),
        np.array([b"a", b"zz"]),
        np.array([True, False]),
        np.array(["x", "y"], dtype=object),
        np.array([1, 2], dtype=object),
    ],
)
def test_padding_label_is_unused_and_of_the_same_kind(labels: np.ndarray) -> None:
    label = absent_label(labels)
    assert not np.isin(np.asarray([label]), labels).any()
    # The label fits beside the training labels (knn_shapley compares them after concatenating).
    np.unique(np.concatenate([labels, np.asarray([label])]))


def test_padding_label_refused_when_none_exists() -> None:
    with pytest.raises(ValuationError, match="no unused label"):
        absent_label(np.array([1.7976931348623157e308, -1.7976931348623157e308]))
    with pytest.raises(ValuationError, match="no unused label"):
        absent_label(np.array([1, "a"], dtype=object))
