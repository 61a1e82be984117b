"""Stored pyDVL 0.10 reference values for ``tests/valuation/test_valuation_pydvl_fixture.py``.

Runs inside ``.venv-peers`` (pyDVL 0.10 needs numpy < 2)::

    .venv-peers/bin/python benchmarks/peers/make_pydvl_fixture.py tests/valuation/fixtures/pydvl_knn_small.npz

and writes two fixtures, each an ``.npz`` of plain arrays (strings as numpy unicode, so the test loads
them with ``allow_pickle=False`` under numpy 2) and a ``.json`` sidecar with the same provenance:

* ``OUT`` (``pydvl_knn_small``): 60 training and 25 test points, d=4, two classes, and pyDVL's exact
  KNN-Shapley values (``KNNShapleyValuation`` with ``KNeighborsClassifier(n_neighbors=k)``) for
  k = 3 and k = 5 as ``values_k3`` and ``values_k5``.
* ``--exact-out`` (default ``pydvl_exact_tiny.npz`` beside ``OUT``): 8 training and 6 test points and
  pyDVL's exact Shapley and Banzhaf values from its exhaustive path: ``ShapleyValuation`` and
  ``BanzhafValuation`` with a ``DeterministicUniformSampler`` (every subset of every complement) over a
  ``ModelUtility`` of ``KNeighborsClassifier(n_neighbors=3)`` scored by test accuracy, which is 0 on
  subsets with fewer than 3 points (sklearn refuses to predict; pyDVL returns the scorer's default).
  The utility of every subset, as pyDVL computed it, is stored too (``utilities``, indexed by bit
  mask), so a disagreement can be pinned on the utility or on the enumeration.

**Ties.** sklearn's neighbour search orders equal distances by its tree's internal order, not by
index, while DataBright breaks ties by the lower index. The features are continuous Gaussian draws,
so there are no ties, and the script refuses to write a fixture unless sklearn's neighbour order is
exactly the (distance, index) order of float64 squared distances and consecutive distances differ by
more than :data:`MIN_RELATIVE_GAP` (so rounding in sklearn's distance formula cannot swap them). It
also refuses odd label votes: with two classes and k = 3 a majority vote never ties.

The module imports nothing from DataBright: it must run where only pyDVL is installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20260601
KNN_SHAPE = {"n_train": 60, "n_test": 25, "d": 4}
KNN_KS = (3, 5)
EXACT_SHAPE = {"n_train": 8, "n_test": 6, "d": 3}
EXACT_K = 3
# Consecutive squared distances must differ by this much relative to the larger: sklearn's brute
# search computes ‖a‖² − 2a·b + ‖b‖², whose rounding error is ~1e-15 relative, far below this.
MIN_RELATIVE_GAP = 1e-9
# Distribution name → key prefix in the .npz (``<prefix>_version``).
VERSIONED = {"pydvl": "pydvl", "numpy": "numpy", "scikit-learn": "sklearn", "joblib": "joblib"}


def make_arrays(rng: np.random.Generator, n_train: int, n_test: int, d: int) -> dict[str, np.ndarray]:
    """Two Gaussian classes 1 SD apart along a random direction: labels that neighbours predict
    only partly, so values spread over both signs."""
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n).astype(np.int64)
        x = rng.normal(size=(n, d)) + np.outer(y - 0.5, direction)
        return x.astype(np.float64), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def exact_order(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, float]:
    """(distance, index) order of squared distances per test point, and the smallest relative gap
    between consecutive sorted distances."""
    dist = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(x_train.shape[0]), dist.shape), dist), axis=1)
    ranked = np.take_along_axis(dist, order, axis=1)
    gaps = np.diff(ranked, axis=1) / np.maximum(ranked[:, 1:], np.finfo(np.float64).tiny)
    return order, float(gaps.min())


def check_unambiguous(arrays: dict[str, np.ndarray], k: int) -> float:
    """Refuse data on which sklearn's neighbour order could differ from DataBright's."""
    from sklearn.neighbors import KNeighborsClassifier

    x_train, y_train, x_test = arrays["x_train"], arrays["y_train"], arrays["x_test"]
    order, gap = exact_order(x_train, x_test)
    if gap <= MIN_RELATIVE_GAP:
        raise SystemExit(f"nearly tied distances (relative gap {gap:.3g}); change SEED")
    model = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
    sk_order = model.kneighbors(x_test, n_neighbors=x_train.shape[0], return_distance=False)
    if not np.array_equal(sk_order, order):
        raise SystemExit("sklearn's neighbour order differs from the (distance, index) order; change SEED")
    return gap


def knn_fixture(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from pydvl.valuation import Dataset, KNNShapleyValuation
    from sklearn.neighbors import KNeighborsClassifier

    arrays = make_arrays(rng, **KNN_SHAPE)
    gap = min(check_unambiguous(arrays, k) for k in KNN_KS)
    train = Dataset(arrays["x_train"], arrays["y_train"])
    test = Dataset(arrays["x_test"], arrays["y_test"])
    out = dict(arrays)
    for k in KNN_KS:
        valuation = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), test, progress=False)
        valuation.fit(train)
        result = valuation.result
        values = np.asarray(result.values[np.argsort(result.indices)], dtype=np.float64)
        out[f"values_k{k}"] = values
    params = {
        **KNN_SHAPE,
        "classes": 2,
        "ks": list(KNN_KS),
        "method": "KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k))",
        "min_relative_distance_gap": gap,
    }
    out["ks"] = np.asarray(KNN_KS, dtype=np.int64)
    return out, params


def exact_fixture(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from pydvl.valuation import (
        BanzhafValuation,
        Dataset,
        DeterministicUniformSampler,
        ModelUtility,
        NoStopping,
        ShapleyValuation,
        SupervisedScorer,
    )
    from pydvl.valuation.types import Sample
    from sklearn.neighbors import KNeighborsClassifier

    arrays = make_arrays(rng, **EXACT_SHAPE)
    gap = check_unambiguous(arrays, EXACT_K)
    train = Dataset(arrays["x_train"], arrays["y_train"])
    test = Dataset(arrays["x_test"], arrays["y_test"])

    def utility() -> Any:
        scorer = SupervisedScorer("accuracy", test, default=0.0, range=(0.0, 1.0))
        model = KNeighborsClassifier(n_neighbors=EXACT_K)
        return ModelUtility(model, scorer, catch_errors=True, show_warnings=False)

    out = dict(arrays)
    for name, cls in (("shapley", ShapleyValuation), ("banzhaf", BanzhafValuation)):
        sampler = DeterministicUniformSampler()
        valuation = cls(utility(), sampler, NoStopping(sampler), progress=False)
        valuation.fit(train)
        result = valuation.result
        visits = 2 ** (EXACT_SHAPE["n_train"] - 1)  # every subset of each point's complement
        if not np.array_equal(result.counts, np.full(len(result.counts), visits)):
            raise SystemExit(f"pyDVL's exhaustive {name} visited {result.counts}, not {visits} per point")
        out[name] = np.asarray(result.values[np.argsort(result.indices)], dtype=np.float64)
    bound = utility().with_dataset(train)
    n = EXACT_SHAPE["n_train"]
    out["utilities"] = np.array(
        [
            bound(Sample(None, np.array([i for i in range(n) if mask >> i & 1], dtype=np.int_)))
            for mask in range(1 << n)
        ],
        dtype=np.float64,
    )
    params = {
        **EXACT_SHAPE,
        "classes": 2,
        "k": EXACT_K,
        "method": "ShapleyValuation / BanzhafValuation with DeterministicUniformSampler and NoStopping",
        "utility": "ModelUtility(KNeighborsClassifier(n_neighbors=3), accuracy, default 0 below 3 points)",
        "min_relative_distance_gap": gap,
    }
    out["k"] = np.asarray(EXACT_K, dtype=np.int64)
    return out, params


def provenance(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "script": "benchmarks/peers/make_pydvl_fixture.py",
        "seed": SEED,
        "versions": {name: metadata.version(name) for name in VERSIONED},
        "python": platform.python_version(),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "parameters": params,
    }


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    strings = {f"{VERSIONED[name]}_version": np.str_(version) for name, version in meta["versions"].items()}
    strings["seed"] = np.asarray(meta["seed"], dtype=np.int64)
    strings["provenance"] = np.str_(json.dumps(meta, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, **strings)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes) and {path.with_suffix('.json').name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the KNN-Shapley fixture, e.g. pydvl_knn_small.npz")
    parser.add_argument("--exact-out", type=Path, default=None, help="the exhaustive Shapley/Banzhaf fixture")
    args = parser.parse_args(argv)
    if args.out.suffix != ".npz":
        raise SystemExit(f"{args.out} does not end in .npz; name the output file like pydvl_knn_small.npz")
    exact_out = args.exact_out or args.out.with_name("pydvl_exact_tiny.npz")
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        print(f"warning: numpy {np.__version__}; pyDVL 0.10 expects numpy < 2", file=sys.stderr)
    # Separate generators: the exact fixture stays the same if the KNN fixture's shape changes.
    knn_rng, exact_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(SEED).spawn(2))
    arrays, params = knn_fixture(knn_rng)
    save(args.out, arrays, provenance(params))
    arrays, params = exact_fixture(exact_rng)
    save(exact_out, arrays, provenance(params))


if __name__ == "__main__":
    main()
