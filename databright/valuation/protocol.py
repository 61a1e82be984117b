"""The ``Valuator`` protocol: what every valuation method offers, and the one way results are built.

A method is a small object configured up front (``KNNShapley(k=5)``, ``TMCShapley(utility, ...)``)
whose ``values(x_train, y_train, x_test, y_test)`` returns one float64 value per training record in
input order, and whose ``valuate(...)`` wraps the same numbers in a :class:`ValuationResult` that
names the method, its parameters, its seed and the digests of its inputs. ``params`` holds only what
changes the values (``k``, the utility, the stopping rule); knobs that change speed or memory
(chunk sizes, threads) stay out of it, so a result's digest is the same whatever machine made it.

:func:`build_result` is the single place a method turns its values into a result, and
:func:`array_digest` the one digest of an input array, so every method records its inputs the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from databright.crypto import sha256_hex
from databright.errors import ValuationError
from databright.valuation.result import ValuationResult


def array_digest(arr: np.ndarray) -> str:
    """sha256 over an array's dtype, shape and C-order bytes: the identity of a valuation input."""
    arr = np.ascontiguousarray(arr)
    # Object arrays (string labels) have no stable buffer; their text, unit-separated, stands in.
    is_object = arr.dtype == object
    body = "\x1f".join(str(v) for v in arr.ravel()).encode("utf-8") if is_object else arr.tobytes()
    header = f"{arr.dtype.str}|{arr.shape}|".encode()
    return sha256_hex(header + body)


@runtime_checkable
class Valuator(Protocol):
    """A valuation method: per-record values of the training set against a test (validation) set."""

    @property
    def method(self) -> str:
        """Stable name recorded in every result, e.g. ``"knn-shapley"``."""
        ...

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able parameters that determine the values (not speed or memory knobs)."""
        ...

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray:
        """One float64 value per training row, in input order."""
        ...

    def valuate(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        record_ids: Sequence[str] | None = None,
        input_digests: Mapping[str, str] | None = None,
    ) -> ValuationResult:
        """The values wrapped in a :class:`ValuationResult` (see :func:`build_result`)."""
        ...


def input_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> dict[str, np.ndarray]:
    """The four arrays a valuation reads, named and typed as every method digests them."""
    return {
        "x_train": np.asarray(x_train, dtype=np.float64),
        "y_train": np.asarray(y_train),
        "x_test": np.asarray(x_test, dtype=np.float64),
        "y_test": np.asarray(y_test),
    }


def build_result(
    valuator: Valuator,
    values: np.ndarray,
    *,
    arrays: Mapping[str, Any],
    record_ids: Sequence[str] | None = None,
    input_digests: Mapping[str, str] | None = None,
    seed: int | None = None,
) -> ValuationResult:
    """Wrap ``values`` in a :class:`ValuationResult` for ``valuator``.

    ``arrays`` are the method's input arrays by name (``x_train``, ``y_train``, ...); the digest of
    each is recorded. ``record_ids`` label the training rows (default: their indices as text);
    ``input_digests`` add digests of the files the arrays came from and may not reuse an array's name.
    """
    values = np.asarray(values, dtype=np.float64)
    if record_ids is None:
        ids = tuple(str(i) for i in range(values.shape[0]))
    else:
        ids = tuple(str(r) for r in record_ids)
        if len(ids) != values.shape[0]:
            raise ValuationError(
                f"{len(ids)} record ids for {values.shape[0]} training rows; give one id per row"
            )
    digests = {name: array_digest(np.asarray(arr)) for name, arr in arrays.items()}
    extra = dict(input_digests or {})
    clash = sorted(set(extra) & set(digests))
    if clash:
        raise ValuationError(
            f"input_digests names {clash[0]!r}, which is already the digest of an input array; "
            "name file digests differently (e.g. 'x_train_file')"
        )
    digests.update(extra)
    return ValuationResult(
        method=valuator.method,
        params=valuator.params,
        seed=seed,
        input_digests=digests,
        values=values,
        record_ids=ids,
    )
