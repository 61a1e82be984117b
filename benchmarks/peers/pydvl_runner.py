"""pyDVL 0.10 side of ``benchmarks/valuation.py``; runs inside ``.venv-peers`` (numpy < 2).

``python benchmarks/peers/pydvl_runner.py TASK DIR [options]`` reads the arrays that the benchmark
saved under ``DIR`` (``x_train.npy``, ``y_train.npy``, ``x_test.npy``, ``y_test.npy``), runs one
pyDVL method on them ``--repeats`` times and writes ``DIR/pydvl_<TASK>_values.npy`` (the last run's
values) and ``DIR/pydvl_<TASK>.json`` (every run's seconds, versions). Tasks:

* ``knn``: ``KNNShapleyValuation`` with ``KNeighborsClassifier(n_neighbors=--k)``.
* ``msr``: ``MSRBanzhafValuation`` over a ``ModelUtility`` of sklearn's ``LogisticRegression``
  (accuracy on the test arrays), stopped after ``--samples`` sampled subsets (``MaxSamples``).
* ``tmc``: ``TMCShapleyValuation`` with the same utility, stopped after ``--samples`` permutations
  or ``--max-seconds``, whichever comes first.

The module imports nothing from DataBright: it must run where only pyDVL is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def load(folder: Path) -> tuple[np.ndarray, ...]:
    return tuple(np.load(folder / f"{name}.npy") for name in ("x_train", "y_train", "x_test", "y_test"))


def logistic_utility(x_test: np.ndarray, y_test: np.ndarray, c: float) -> Any:
    from pydvl.valuation import Dataset, ModelUtility, SupervisedScorer
    from sklearn.linear_model import LogisticRegression

    scorer = SupervisedScorer("accuracy", Dataset(x_test, y_test), default=0.0, range=(0.0, 1.0))
    return ModelUtility(LogisticRegression(C=c, max_iter=200), scorer, show_warnings=False)


def run_once(task: str, arrays: tuple[np.ndarray, ...], args: argparse.Namespace) -> np.ndarray:
    from pydvl.valuation import Dataset

    x_train, y_train, x_test, y_test = arrays
    train = Dataset(x_train, y_train)
    if task == "knn":
        from pydvl.valuation import KNNShapleyValuation
        from sklearn.neighbors import KNeighborsClassifier

        model = KNeighborsClassifier(n_neighbors=args.k)
        valuation = KNNShapleyValuation(model, Dataset(x_test, y_test), progress=False)
    elif task == "msr":
        from pydvl.valuation import MaxSamples, MSRBanzhafValuation, NoStopping

        utility = logistic_utility(x_test, y_test, args.c)
        valuation = MSRBanzhafValuation(utility, is_done=NoStopping(), seed=args.seed)
        # MaxSamples needs the sampler the valuation built for itself.
        valuation.is_done = MaxSamples(valuation.sampler, args.samples)
    elif task == "tmc":
        from pydvl.valuation import MaxTime, MaxUpdates, TMCShapleyValuation

        utility = logistic_utility(x_test, y_test, args.c)
        stop = MaxUpdates(args.samples) | MaxTime(args.max_seconds)
        valuation = TMCShapleyValuation(utility, is_done=stop, seed=args.seed)
    else:
        raise SystemExit(f"unknown task {task!r}; use knn, msr or tmc")
    valuation.fit(train)
    result = valuation.result
    return np.asarray(result.values[np.argsort(result.indices)], dtype=np.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("knn", "msr", "tmc"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--c", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = load(args.folder)
    seconds, values = [], np.empty(0)
    for _ in range(args.repeats):
        started = time.perf_counter()
        values = run_once(args.task, arrays, args)
        seconds.append(time.perf_counter() - started)
    np.save(args.folder / f"pydvl_{args.task}_values.npy", values)
    versions = {name: metadata.version(name) for name in ("pydvl", "numpy", "scikit-learn")}
    report = {"task": args.task, "seconds": seconds, "versions": versions, "python": sys.version.split()[0]}
    (args.folder / f"pydvl_{args.task}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
