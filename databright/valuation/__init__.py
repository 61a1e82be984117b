"""Valuation: how much each training record was worth to the job that used it.

A valuation method is a small object with a ``values(x_train, y_train, x_test, y_test)`` method
(the ``Valuator`` protocol) that returns one float per training record, measured against the
trainer's validation set; ``valuate(...)`` wraps the same numbers in a ``ValuationResult`` that
names the method, its parameters and the digests of its inputs::

    result = KNNShapley(k=5).valuate(x_train, y_train, x_val, y_val, record_ids=ids)
    by_owner = result.per_owner(owners)          # float sums, exactly rounded
    weights = quantize_weights(by_owner)         # integers: the only float→int step

Modules: ``knn_shapley`` (exact KNN-Shapley, the default), ``result`` (``ValuationResult``),
``quantize`` (values → integer weights for settlement).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from databright.valuation.knn_shapley import KNNShapley, array_digest
from databright.valuation.quantize import DEFAULT_SCALE, quantize_value, quantize_weights
from databright.valuation.result import ValuationResult


@runtime_checkable
class Valuator(Protocol):
    """What every valuation method offers: per-record values of the training set, in input order."""

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray: ...


__all__ = [
    "DEFAULT_SCALE",
    "KNNShapley",
    "ValuationResult",
    "Valuator",
    "array_digest",
    "quantize_value",
    "quantize_weights",
]
