"""DataBright against pyDVL 0.10 on fixtures that pyDVL computed offline
(``benchmarks/peers/make_pydvl_fixture.py``).

pyDVL needs numpy < 2 and lives only in ``.venv-peers``; its values are stored in
``tests/valuation/fixtures/`` so this test runs in the main environment without it.

* ``pydvl_knn_small.npz``: pyDVL's exact KNN-Shapley (``KNNShapleyValuation``) for k = 3 and 5 on
  60 training × 25 test points; ours must agree to 1e-12.
* ``pydvl_exact_tiny.npz``: pyDVL's exhaustive Shapley and Banzhaf (``DeterministicUniformSampler``)
  of a 3-NN majority-vote accuracy utility on 8 points, with the utility of every subset as pyDVL
  computed it; ``enumeration.exact_shapley`` / ``exact_banzhaf`` must agree to 1e-12, both from
  pyDVL's utility table and from our own re-implementation of that utility.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from databright.valuation.enumeration import exact_banzhaf, exact_shapley
from databright.valuation.knn_shapley import KNNShapley

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-12


def load(name: str) -> dict[str, np.ndarray]:
    # allow_pickle=False: the fixture must be plain arrays (numbers and numpy unicode strings).
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def knn_small() -> dict[str, np.ndarray]:
    return load("pydvl_knn_small")


@pytest.fixture(scope="module")
def exact_tiny() -> dict[str, np.ndarray]:
    return load("pydvl_exact_tiny")


def mask_of(subset: tuple[int, ...]) -> int:
    return sum(1 << i for i in subset)


def members(n: int) -> Iterator[tuple[int, tuple[int, ...]]]:
    for mask in range(1 << n):
        yield mask, tuple(i for i in range(n) if mask >> i & 1)


def majority_knn_accuracy(subset: tuple[int, ...], fx: dict[str, np.ndarray], k: int) -> float:
    """sklearn's ``KNeighborsClassifier(n_neighbors=k).score`` on the test set after fitting on
    ``subset``, as pyDVL's ``ModelUtility`` uses it: 0 (the scorer's default) when sklearn refuses to
    predict from fewer than k points. Votes cannot tie: two classes and odd k (checked below)."""
    if len(subset) < k:
        return 0.0
    x_train, y_train = fx["x_train"], fx["y_train"]
    correct = 0
    for xv, yv in zip(fx["x_test"], fx["y_test"], strict=True):
        nearest = sorted(subset, key=lambda i: (float(np.sum((x_train[i] - xv) ** 2)), i))[:k]
        votes = np.bincount(y_train[list(nearest)], minlength=2)
        correct += int(np.argmax(votes) == yv)
    return correct / len(fx["y_test"])


@pytest.mark.parametrize("name", ["pydvl_knn_small", "pydvl_exact_tiny"])
def test_fixture_provenance(name: str) -> None:
    fx = load(name)
    assert str(fx["pydvl_version"]).startswith("0.10"), fx["pydvl_version"]
    assert fx["pydvl_version"].dtype.kind == "U"
    assert str(fx["numpy_version"]).startswith("1."), "pyDVL 0.10 runs on numpy < 2"
    meta = json.loads(str(fx["provenance"]))
    assert meta["script"] == "benchmarks/peers/make_pydvl_fixture.py"
    assert meta["versions"]["pydvl"] == str(fx["pydvl_version"])
    assert meta["seed"] == int(fx["seed"])
    # The sidecar is the same record in readable form.
    assert json.loads((FIXTURES / f"{name}.json").read_text()) == meta
    params = meta["parameters"]
    assert fx["x_train"].shape == (params["n_train"], params["d"])
    assert fx["x_test"].shape == (params["n_test"], params["d"])
    # The generator refused near-ties, so sklearn's neighbour order is ours (distance, then index).
    assert params["min_relative_distance_gap"] > 1e-9


@pytest.mark.parametrize("k", [3, 5])
def test_knn_shapley_matches_pydvl(knn_small: dict[str, np.ndarray], k: int) -> None:
    fx = knn_small
    assert k in fx["ks"].tolist()
    expected = fx[f"values_k{k}"]
    got = KNNShapley(k=k).values(fx["x_train"], fx["y_train"], fx["x_test"], fx["y_test"])
    assert got.shape == expected.shape == (fx["x_train"].shape[0],)
    diff = float(np.max(np.abs(got - expected)))
    assert diff <= TOLERANCE, f"k={k}: max abs difference {diff:.3g} from pyDVL"
    # Not a vacuous match: the values are spread out.
    assert np.ptp(expected) > 0.01


def test_knn_shapley_matches_pydvl_chunked_and_threaded(knn_small: dict[str, np.ndarray]) -> None:
    fx = knn_small
    got = KNNShapley(k=5, chunk_size=1, n_jobs=2).values(
        fx["x_train"], fx["y_train"], fx["x_test"], fx["y_test"]
    )
    np.testing.assert_allclose(got, fx["values_k5"], rtol=0, atol=TOLERANCE)


def test_pydvl_knn_values_differ_between_k(knn_small: dict[str, np.ndarray]) -> None:
    # Guards against a fixture that stored one k twice.
    assert np.max(np.abs(knn_small["values_k3"] - knn_small["values_k5"])) > 1e-3


def test_our_utility_is_pydvls_utility(exact_tiny: dict[str, np.ndarray]) -> None:
    fx, k = exact_tiny, int(exact_tiny["k"])
    assert k % 2 == 1 and set(np.unique(fx["y_train"]).tolist()) <= {0, 1}
    n = fx["x_train"].shape[0]
    ours = np.array([majority_knn_accuracy(subset, fx, k) for _, subset in members(n)])
    np.testing.assert_allclose(ours, fx["utilities"], rtol=0, atol=1e-15)
    assert len(np.unique(fx["utilities"])) > 2  # a game with structure, not a constant


@pytest.mark.parametrize(("method", "name"), [(exact_shapley, "shapley"), (exact_banzhaf, "banzhaf")])
def test_enumeration_matches_pydvl_exhaustive(
    exact_tiny: dict[str, np.ndarray], method: Callable[..., np.ndarray], name: str
) -> None:
    fx, k = exact_tiny, int(exact_tiny["k"])
    n = fx["x_train"].shape[0]
    table = fx["utilities"]
    from_table = method(n, lambda subset: float(table[mask_of(subset)]))
    from_ours = method(n, lambda subset: majority_knn_accuracy(subset, fx, k))
    for got in (from_table, from_ours):
        diff = float(np.max(np.abs(got - fx[name])))
        assert diff <= TOLERANCE, f"{name}: max abs difference {diff:.3g} from pyDVL"


def test_pydvl_exact_shapley_is_efficient(exact_tiny: dict[str, np.ndarray]) -> None:
    # Shapley values sum to U(N) − U(∅): a check of the stored fixture independent of our code.
    table = exact_tiny["utilities"]
    assert abs(float(np.sum(exact_tiny["shapley"])) - (table[-1] - table[0])) <= TOLERANCE
