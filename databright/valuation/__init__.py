"""Valuation: how much each training record was worth to the job that used it.

Every method implements the ``Valuator`` protocol (``protocol.py``): ``values(x_train, y_train,
x_test, y_test)`` returns one float per training record, measured against the trainer's validation
set, and ``valuate(...)`` wraps the same numbers in a ``ValuationResult`` naming the method, its
parameters, seed, input digests and library versions::

    result = KNNShapley(k=5).valuate(x_train, y_train, x_val, y_val, record_ids=ids)
    by_owner = owner_values(result, RecordGroups(ids, owners, near_duplicate_groups))
    weights = quantize_weights(by_owner.values)  # integers: the only float→int step

One method per module:

* ``knn_shapley`` — exact KNN-Shapley (Jia et al. 2019), classification and regression, chunked
  and threaded with bit-identical results; ``incremental`` — ``KnnIndex``, the sorted neighbour
  order kept between dataset versions so new records are merged in rather than re-sorted;
  ``distributed`` — the same exact values fanned out over test-point blocks on a Dask cluster.
* ``tmc_shapley`` and ``banzhaf`` — Monte Carlo TMC-Shapley and Data Banzhaf (MSR) over
  ``utility.LogisticUtility``, which trains a batch of small models at once (torch), with
  composable ``stopping`` rules, per-point standard errors and a convergence status.
* ``inrun`` — in-run first-order contributions recorded during training (each record's gradient
  dotted with the validation-loss gradient at every step that reads it; ghost dot product, closed
  form for logistic regression): what a usage receipt records per record.
* ``robust`` — replication robustness: near-duplicate groups are valued as one player, so copies
  never earn more than one copy; ``owners`` — per-owner aggregation and the group-sharing rule.
* ``enumeration`` — exact Shapley / Banzhaf by enumerating subsets (n ≤ 16): the tests' reference.
* ``result`` (``ValuationResult``), ``quantize`` (values → integer weights for settlement).
"""

from __future__ import annotations

from databright.valuation.banzhaf import BanzhafMSR
from databright.valuation.distributed import DaskKNNShapley
from databright.valuation.enumeration import exact_banzhaf, exact_shapley
from databright.valuation.incremental import KnnIndex
from databright.valuation.inrun import METHOD as INRUN_METHOD
from databright.valuation.inrun import (
    InRunContributions,
    LogisticInRun,
    LogisticValidation,
    ghost_dot,
    inrun_result,
    logistic_residual,
)
from databright.valuation.knn_shapley import KNNRegressionShapley, KNNShapley, array_digest
from databright.valuation.owners import OwnerValues, RecordGroups, SplitRule, owner_values, split_exactly
from databright.valuation.protocol import Valuator, build_result
from databright.valuation.quantize import DEFAULT_SCALE, quantize_value, quantize_weights
from databright.valuation.result import ValuationResult, library_versions
from databright.valuation.robust import ReplicationRobust
from databright.valuation.stopping import Convergence, MaxTime, MaxUpdates, RankStable, StoppingRule
from databright.valuation.tmc_shapley import MonteCarloValuator, TMCShapley
from databright.valuation.utility import BatchUtility, FunctionUtility, LogisticUtility

__all__ = [
    "DEFAULT_SCALE",
    "INRUN_METHOD",
    "BanzhafMSR",
    "BatchUtility",
    "Convergence",
    "DaskKNNShapley",
    "FunctionUtility",
    "InRunContributions",
    "KNNRegressionShapley",
    "KNNShapley",
    "KnnIndex",
    "LogisticInRun",
    "LogisticUtility",
    "LogisticValidation",
    "MaxTime",
    "MaxUpdates",
    "MonteCarloValuator",
    "OwnerValues",
    "RankStable",
    "RecordGroups",
    "ReplicationRobust",
    "SplitRule",
    "StoppingRule",
    "TMCShapley",
    "ValuationResult",
    "Valuator",
    "array_digest",
    "build_result",
    "exact_banzhaf",
    "exact_shapley",
    "ghost_dot",
    "inrun_result",
    "library_versions",
    "logistic_residual",
    "owner_values",
    "quantize_value",
    "quantize_weights",
    "split_exactly",
]
