"""Exact KNN-Shapley for classification (Jia et al., VLDB 2019, "Efficient task-specific data
valuation for nearest neighbor algorithms", Theorem 1).

The utility of a training subset ``S`` for one test point ``(x, y)`` is

    U(S) = (1/K) · #{ i among the min(K, |S|) points of S nearest to x : y_i = y },

and the utility of ``S`` for a test set is the mean over its points. For this utility the Shapley
value of every training point has a closed form. Sort the ``N`` training points by distance to
the test point, nearest first, ``α_1 … α_N``, write ``m_i = 1[y_{α_i} = y]``; then

    s_{α_N} = m_N · min(K, N) / (K · N)
    s_{α_i} = s_{α_{i+1}} + (m_i − m_{i+1}) / K · min(K, i) / i        (i = N−1 … 1)

(the paper states the base case for N ≥ K, where it reads ``m_N / N``; the ``min`` keeps it exact
when there are fewer than K training points). The recursion is a reverse cumulative sum, so one
test point costs a sort; the values for a test set are the means over its points.

Distances are squared Euclidean, accumulated feature by feature in float64 so that identical rows
get bit-identical distances whatever the chunking; ties are broken by training index (a stable
sort puts the lower index nearer), which makes the values deterministic and exactly equal to the
Shapley values of the utility above with the same tie-break.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from databright.crypto import sha256_hex
from databright.errors import ValuationError
from databright.valuation.result import ValuationResult

# Distances held at once per chunk when no chunk size is given: 2**22 float64 (32 MiB), plus the
# sort order and the per-rank values of the same shape.
_CHUNK_ELEMENTS = 1 << 22


def _as_features(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValuationError(
            f"{name} must be a 2-D array (rows × features), got shape {arr.shape}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValuationError(f"{name} has dtype {arr.dtype}; KNN-Shapley needs real numeric features")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValuationError(f"{name} row {row} holds NaN or infinity; impute or drop it before valuation")
    return arr


def _as_labels(name: str, y: Any, rows: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValuationError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise ValuationError(f"{name} has {arr.shape[0]} labels for {rows} rows; give one label per row")
    return arr


def _check_label_kinds(y_train: np.ndarray, y_test: np.ndarray) -> None:
    # Comparing numbers with text is silently all-False in numpy, which would value every record at 0.
    kinds = {"b": "numeric", "i": "numeric", "u": "numeric", "f": "numeric", "U": "text", "S": "text"}
    train_kind, test_kind = kinds.get(y_train.dtype.kind), kinds.get(y_test.dtype.kind)
    if train_kind and test_kind and train_kind != test_kind:
        raise ValuationError(
            f"y_train holds {train_kind} labels ({y_train.dtype}) but y_test holds {test_kind} labels "
            f"({y_test.dtype}); encode both label columns the same way"
        )


def array_digest(arr: np.ndarray) -> str:
    """sha256 over an array's dtype, shape and C-order bytes: the identity of a valuation input."""
    arr = np.ascontiguousarray(arr)
    # Object arrays (string labels) have no stable buffer; their text, unit-separated, stands in.
    is_object = arr.dtype == object
    body = "\x1f".join(str(v) for v in arr.ravel()).encode("utf-8") if is_object else arr.tobytes()
    header = f"{arr.dtype.str}|{arr.shape}|".encode()
    return sha256_hex(header + body)


class KNNShapley:
    """Exact Shapley values of the K-nearest-neighbour classification utility.

    ``chunk_size`` is the number of test points handled per vectorised step; ``None`` picks it so
    that one chunk holds about 2**22 distances, which keeps memory bounded for large training sets.
    """

    method = "knn-shapley"

    def __init__(self, k: int = 5, chunk_size: int | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValuationError(f"k={k!r} is not a positive integer; KNN-Shapley needs k ≥ 1 (default 5)")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1
        ):
            raise ValuationError(
                f"chunk_size={chunk_size!r} is not a positive integer; pass None to size chunks by memory"
            )
        self.k = int(k)
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def __repr__(self) -> str:
        return f"KNNShapley(k={self.k}, chunk_size={self.chunk_size})"

    @property
    def params(self) -> dict[str, Any]:
        # chunk_size changes memory, never the values, so it is not part of the result's identity.
        return {"k": self.k, "distance": "sqeuclidean", "tie_break": "index"}

    def _rows_per_chunk(self, n_train: int, n_test: int) -> int:
        if self.chunk_size is not None:
            return min(self.chunk_size, n_test)
        return max(1, min(n_test, _CHUNK_ELEMENTS // max(n_train, 1)))

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray:
        """Per-training-point Shapley values (float64, input order), averaged over the test points."""
        xt = _as_features("x_train", x_train)
        xv = _as_features("x_test", x_test)
        yt = _as_labels("y_train", y_train, xt.shape[0])
        yv = _as_labels("y_test", y_test, xv.shape[0])
        n_train, n_test = xt.shape[0], xv.shape[0]
        if n_train == 0:
            raise ValuationError("x_train has no rows; there is nothing to value")
        if n_test == 0:
            raise ValuationError("x_test has no rows; give at least one validation point to value against")
        _check_label_kinds(yt, yv)
        if xt.shape[1] != xv.shape[1]:
            raise ValuationError(
                f"x_train has {xt.shape[1]} features but x_test has {xv.shape[1]}; "
                "embed both sets with the same model"
            )

        k = self.k
        ranks = np.arange(1, n_train + 1, dtype=np.float64)
        # weight[i-1] = min(K, i) / (K · i) for rank i; it scales both the base case and the steps.
        weight = np.minimum(float(k), ranks) / (k * ranks)
        total = np.zeros(n_train, dtype=np.float64)
        step = self._rows_per_chunk(n_train, n_test)
        for start in range(0, n_test, step):
            stop = min(start + step, n_test)
            dist = np.zeros((stop - start, n_train), dtype=np.float64)
            for j in range(xt.shape[1]):
                dist += np.square(xv[start:stop, j, None] - xt[None, :, j])
            order = np.argsort(dist, axis=1, kind="stable")
            del dist
            match = (yt[order] == yv[start:stop, None]).astype(np.float64)
            # steps[:, i-1] = (m_i − m_{i+1}) · w_i for i < N, and the base case m_N · w_N last; the
            # reverse cumulative sum of that row is exactly the recursion above.
            steps = np.empty_like(match)
            steps[:, :-1] = (match[:, :-1] - match[:, 1:]) * weight[:-1]
            steps[:, -1] = match[:, -1] * weight[-1]
            by_rank = np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
            by_point = np.empty_like(by_rank)
            np.put_along_axis(by_point, order, by_rank, axis=1)
            total += by_point.sum(axis=0)
        return total / n_test

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
        """Values wrapped in a ``ValuationResult`` that names its method, parameters and inputs.

        ``record_ids`` label the training rows (default: their indices); ``input_digests`` may add
        digests of the files the arrays came from. Digests of the four arrays are always included.
        """
        values = self.values(x_train, y_train, x_test, y_test)
        if record_ids is None:
            ids = tuple(str(i) for i in range(values.shape[0]))
        else:
            ids = tuple(str(r) for r in record_ids)
            if len(ids) != values.shape[0]:
                raise ValuationError(
                    f"{len(ids)} record ids for {values.shape[0]} training rows; give one id per row"
                )
        digests = {
            "x_train": array_digest(np.asarray(x_train, dtype=np.float64)),
            "y_train": array_digest(np.asarray(y_train)),
            "x_test": array_digest(np.asarray(x_test, dtype=np.float64)),
            "y_test": array_digest(np.asarray(y_test)),
        }
        digests.update(dict(input_digests or {}))
        return ValuationResult(
            method=self.method,
            params=self.params,
            seed=None,
            input_digests=digests,
            values=values,
            record_ids=ids,
        )
