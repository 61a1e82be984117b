"""Exact KNN-Shapley (Jia et al., VLDB 2019, "Efficient task-specific data valuation for nearest
neighbor algorithms"): classification (Theorem 1) and regression (their KNN-regression utility).

Sort the ``N`` training points by distance to one test point ``(x, t)``, nearest first, ``α_1 … α_N``.

**Classification**, ``U(S) = (1/K)·#{i among the min(K, |S|) nearest of S : y_i = t}``; with
``m_i = 1[y_{α_i} = t]``:

    s_{α_N} = m_N · min(K, N) / (K · N)
    s_{α_i} = s_{α_{i+1}} + (m_i − m_{i+1}) / K · min(K, i) / i        (i = N−1 … 1)

(the paper states the base case for N ≥ K, where it reads ``m_N / N``; the ``min`` keeps it exact when
there are fewer than K training points).

**Regression**, ``U(S) = −(ŷ_S − t)²`` with ``ŷ_S = (1/K)·Σ y`` over the min(K, |S|) nearest of S (so
``U(∅) = −t²``), ``y_i = y_{α_i}``, ``y_{N+1} = 0``. Comparing ``S ∪ {α_i}`` with ``S ∪ {α_{i+1}}`` over the
Shapley weights and counting when each other point sits in the top K gives, for i = N … 1,

    s_{α_i} = s_{α_{i+1}} + (y_{i+1} − y_i)/K² · [ (y_i + y_{i+1} − 2Kt)·min(K, i)/i + C_i·Σ_{j<i} y_j
                                                   + Σ_{j≥i+2} E_j·y_j ]
    C_i = T(T+1)/(i(i−1)), T = min(K−1, i−1);   E_j = T'(T'+1)/((j−1)(j−2)), T' = min(K−1, j−2)

with ``s_{α_{N+1}} = 0`` (the i = N step is the base case). Either recursion is a reverse cumulative
sum, so a test point costs one sort; the values for a test set are the means over its points.

**Exactness and determinism.** Distances are squared Euclidean, accumulated feature by feature in
float64, elementwise, so a pair's distance is the same bits whatever else is computed with it. Ties
go to the lower training index. The sort packs each distance's leading bits and the index into one
``uint64`` key (a plain ``np.sort``, 2–4× faster than ``argsort`` here); truncation is monotone, so only
keys with equal leading bits can be out of order, and those few groups are re-sorted on the exact
distances (:func:`neighbour_order`). Test points are summed in fixed blocks of :data:`BLOCK` in
index order, block partials in block order: the values are bit-identical whatever ``chunk_size`` and
``n_jobs`` are, and identical to values from a stored or merged :class:`~.incremental.KnnIndex`.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from databright.errors import ValuationError
from databright.valuation.protocol import (
    array_digest as array_digest,  # re-exported: its first home
)
from databright.valuation.protocol import build_result, input_arrays
from databright.valuation.result import ValuationResult

if TYPE_CHECKING:
    from databright.valuation.incremental import KnnIndex

# Test points per reduction block: their contributions are added in index order, then the block
# partials in block order; this fixed grouping is what makes chunking and threads invisible.
BLOCK = 16
# Distances per vectorised step: a step's few float64 arrays stay in a core's L2 cache (2 MiB here),
# 1.3× faster than 16-row steps at 50k training points (and bigger steps page-fault past that).
_CHUNK_ELEMENTS = 1 << 17
# Distances per tile while accumulating features: small enough to stay in a core's L2 cache.
_TILE_ELEMENTS = 1 << 16

T = TypeVar("T")


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


def _check_count(name: str, value: Any, *, hint: str = "", none: str = "") -> int | None:
    """A positive int, or None where ``none`` says what None means."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValuationError(f"{name}={value!r} is not a positive integer; {hint or f'pass None to {none}'}")
    return int(value)


def available_cores() -> int:
    """CPU cores this process may run on (the default thread count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_in_order(fn: Callable[[int, int], T], spans: Iterable[tuple[int, int]], n_jobs: int) -> Iterator[T]:
    """``fn(start, stop)`` for each span, yielded in span order, computed on up to ``n_jobs`` threads.

    At most ``2·n_jobs`` results are pending at once, so memory stays bounded however many spans
    there are. numpy's sorts, ufuncs and indexing release the GIL, so the threads run in parallel.
    """
    if n_jobs <= 1:
        for start, stop in spans:
            yield fn(start, stop)
        return
    with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="knn-shapley") as pool:
        pending: deque[Future[T]] = deque()
        for start, stop in spans:
            pending.append(pool.submit(fn, start, stop))
            if len(pending) >= 2 * n_jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def rows_per_step(n_train: int) -> int:
    """Test points per vectorised step for ``n_train`` training points (memory and cache, not values)."""
    return max(1, min(BLOCK, _CHUNK_ELEMENTS // max(n_train, 1)))


def squared_distances(x_rows: np.ndarray, x_train_t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(rows, N)`` squared Euclidean distances from each row to each training point.

    ``x_train_t`` is the training features transposed, ``(d, N)`` and C-contiguous. Each distance is
    ``((0 + (x_0−v_0)²) + (x_1−v_1)²) + …`` in float64, the same bits wherever and with whatever it is
    computed; tiles of training points keep the running sums in cache.
    """
    rows, (d, n) = x_rows.shape[0], x_train_t.shape
    dist = np.zeros((rows, n), dtype=np.float64) if out is None else out
    dist.fill(0.0)
    width = max(1, _TILE_ELEMENTS // max(rows, 1))
    tmp = np.empty((rows, min(width, n)), dtype=np.float64)
    for a in range(0, n, width):
        b = min(a + width, n)
        acc, t = dist[:, a:b], tmp[:, : b - a]
        for j in range(d):
            np.subtract(x_train_t[j, None, a:b], x_rows[:, j, None], out=t)
            np.multiply(t, t, out=t)
            np.add(acc, t, out=acc)
    return dist


def neighbour_order(dist: np.ndarray) -> np.ndarray:
    """Training indices of each row of ``dist`` sorted by (distance, index): ``(rows, N)`` int64.

    Keys are ``(leading bits of the distance) << b | index`` with ``b`` bits for the index. For
    non-negative floats the bit pattern is monotone in the value, so keys with different leading bits
    are already in distance order; within a run of equal leading bits the keys sort by index, which is
    right unless the exact distances inside the run decrease somewhere. Those runs are rare (distances
    agreeing to about ``52 − b`` bits) and are re-sorted on the exact distances.
    """
    n = dist.shape[1]
    shift = np.uint64(max(1, (n - 1).bit_length()))
    keys = np.right_shift(dist.view(np.uint64), shift)
    np.left_shift(keys, shift, out=keys)
    np.bitwise_or(keys, np.arange(n, dtype=np.uint64), out=keys)
    keys.sort(axis=1)
    shared = np.less(np.bitwise_xor(keys[:, 1:], keys[:, :-1]), np.uint64(1) << shift)
    np.bitwise_and(keys, (np.uint64(1) << shift) - np.uint64(1), out=keys)  # keep the index bits
    order = keys.view(np.int64)
    if shared.any():
        _resort_shared_prefixes(order, dist, shared)
    return order


def _resort_shared_prefixes(order: np.ndarray, dist: np.ndarray, shared: np.ndarray) -> None:
    rows, pos = np.nonzero(shared)  # pair (pos, pos+1) of row `rows` shares its leading bits
    d_left = dist[rows, order[rows, pos]]
    d_right = dist[rows, order[rows, pos + 1]]
    if not (d_right < d_left).any():
        return  # every run is already sorted by exact distance, ties by index
    # A run of consecutive shared pairs is one group; re-sort the groups that hold a descent.
    starts = np.ones(pos.shape[0], dtype=bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (pos[1:] != pos[:-1] + 1)
    group = np.cumsum(starts) - 1
    bad = np.isin(group, np.unique(group[d_right < d_left]))
    flat = rows[bad] * order.shape[1] + pos[bad]
    flat = np.concatenate([flat, flat + 1])
    flat, first = np.unique(flat, return_index=True)
    group_of = np.concatenate([group[bad], group[bad]])[first]
    idx = order.reshape(-1)[flat]
    exact = dist[flat // order.shape[1], idx]
    order.reshape(-1)[flat] = idx[np.lexsort((idx, exact, group_of))]


class _Neighbours:
    """Neighbour order of test rows ``start … stop−1``. Once steps are single rows, each thread
    computes a whole block's distances into a buffer it reuses, so one pass over the training
    features serves 16 test points (12.6 instead of 20 ms per test point at 1M × 20)."""

    def __init__(self, x_test: np.ndarray, x_train_t: np.ndarray) -> None:
        self.x_test, self.x_train_t = x_test, x_train_t
        n = x_train_t.shape[1]
        self.group = BLOCK if rows_per_step(n) == 1 else 0
        self.local = threading.local()

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if not self.group:
            return neighbour_order(squared_distances(self.x_test[start:stop], self.x_train_t))
        my = self.local
        if not (getattr(my, "lo", -1) <= start and stop <= getattr(my, "hi", -1)):
            if not hasattr(my, "dist"):
                my.dist = np.empty((self.group, self.x_train_t.shape[1]), dtype=np.float64)
            my.lo, my.hi = start, min(start + self.group, self.x_test.shape[0])
            squared_distances(self.x_test[my.lo : my.hi], self.x_train_t, out=my.dist[: my.hi - start])
        return neighbour_order(my.dist[start - my.lo : stop - my.lo])


class _KNNShapleyBase(ABC):
    """Shared engine: inputs, neighbour order (computed or from an index), blocked reduction."""

    method = "knn-shapley"
    task = "classification"

    def __init__(self, k: int = 5, *, chunk_size: int | None = None, n_jobs: int | None = None) -> None:
        self.k = int(_check_count("k", k, hint="KNN-Shapley needs k ≥ 1 (default 5)") or 0)
        self.chunk_size = _check_count("chunk_size", chunk_size, none="size chunks by memory")
        self.n_jobs = _check_count("n_jobs", n_jobs, none="use every available core")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, chunk_size={self.chunk_size}, n_jobs={self.n_jobs})"

    @property
    def params(self) -> dict[str, Any]:
        # chunk_size and n_jobs change speed and memory, never the values: not part of the identity.
        return {"k": self.k, "distance": "sqeuclidean", "tie_break": "index", "task": self.task}

    @abstractmethod
    def _labels(self, y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checked and encoded labels: what ``_by_rank`` compares or sums."""

    @abstractmethod
    def _rank_weights(self, n: int) -> tuple[np.ndarray, ...]:
        """Per-rank constants of the recursion, computed once per call."""

    @abstractmethod
    def _by_rank(
        self, order: np.ndarray, train: Any, test: Any, weights: tuple[np.ndarray, ...]
    ) -> np.ndarray:
        """(rows, N): the value of the training point at each rank, per test row."""

    def _inputs(
        self, x_train: Any, y_train: Any, x_test: Any, y_test: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        xt, xv = _as_features("x_train", x_train), _as_features("x_test", x_test)
        yt, yv = _as_labels("y_train", y_train, xt.shape[0]), _as_labels("y_test", y_test, xv.shape[0])
        if xt.shape[0] == 0:
            raise ValuationError("x_train has no rows; there is nothing to value")
        if xv.shape[0] == 0:
            raise ValuationError("x_test has no rows; give at least one validation point to value against")
        _check_label_kinds(yt, yv)
        if xt.shape[1] != xv.shape[1]:
            raise ValuationError(
                f"x_train has {xt.shape[1]} features but x_test has {xv.shape[1]}; "
                "embed both sets with the same model"
            )
        return xt, yt, xv, yv

    def values(
        self, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, index: KnnIndex | None = None
    ) -> np.ndarray:
        """Per-training-point Shapley values (float64, input order), averaged over the test points.

        With ``index`` (a :class:`~.incremental.KnnIndex` of these arrays, e.g. grown from the last
        version's) its neighbour order replaces distances and sort, and the values are the same bits.
        """
        xt, yt, xv, yv = self._inputs(x_train, y_train, x_test, y_test)
        train, test = self._labels(yt, yv)
        neighbours: Callable[[int, int], np.ndarray]
        if index is None:
            neighbours = _Neighbours(xv, np.ascontiguousarray(xt.T))
        else:
            index.check(xt, xv)
            neighbours = index.rows
        return self._reduce(xt.shape[0], xv.shape[0], neighbours, train, test)

    def _reduce(
        self, n_train: int, n_test: int, neighbours: Callable[[int, int], np.ndarray], train: Any, test: Any
    ) -> np.ndarray:
        step = min(BLOCK, self.chunk_size or rows_per_step(n_train))
        weights = self._rank_weights(n_train)

        def block(start: int, stop: int) -> np.ndarray:
            partial = np.zeros(n_train, dtype=np.float64)
            for a in range(start, stop, step):
                b = min(a + step, stop)
                order = neighbours(a, b)
                by_rank = self._by_rank(order, train, test[a:b], weights)
                for r in range(b - a):  # one test point after another: a fixed order of additions
                    partial[order[r]] += by_rank[r]
            return partial

        spans = [(a, min(a + BLOCK, n_test)) for a in range(0, n_test, BLOCK)]
        total = np.zeros(n_train, dtype=np.float64)
        for partial in map_in_order(block, spans, min(self.n_jobs or available_cores(), len(spans))):
            total += partial
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
        index: KnnIndex | None = None,
    ) -> ValuationResult:
        """Values wrapped in a ``ValuationResult`` that names its method, parameters and inputs.

        ``record_ids`` label the training rows (default: their indices); ``input_digests`` may add
        digests of the files the arrays came from. Digests of the four arrays are always included, so
        a result computed through an ``index`` equals (digest and all) one computed from scratch.
        """
        values = self.values(x_train, y_train, x_test, y_test, index=index)
        arrays = input_arrays(x_train, y_train, x_test, y_test)
        return build_result(self, values, arrays=arrays, record_ids=record_ids, input_digests=input_digests)


class KNNShapley(_KNNShapleyBase):
    """Exact Shapley values of the K-nearest-neighbour classification utility.

    ``chunk_size`` caps the test points per vectorised step (default: sized for the cache; at most
    :data:`BLOCK`); ``n_jobs`` is the number of threads (default: every available core). Neither
    changes a single bit of the values.
    """

    def _labels(self, y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            _, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
        except TypeError as exc:
            raise ValuationError(
                f"labels cannot be compared with each other ({exc}); give labels of one type"
            ) from exc
        # Small integer codes keep the per-rank gather of labels inside the cache.
        codes = codes.astype(np.min_scalar_type(max(int(codes.max()), 1)), copy=False)
        return codes[: y_train.shape[0]], codes[y_train.shape[0] :]

    def _rank_weights(self, n: int) -> tuple[np.ndarray, ...]:
        ranks = np.arange(1, n + 1, dtype=np.float64)
        # weight[i-1] = min(K, i) / (K · i) for rank i; it scales both the base case and the steps.
        return (np.minimum(float(self.k), ranks) / (self.k * ranks),)

    def _by_rank(
        self, order: np.ndarray, train: np.ndarray, test: np.ndarray, weights: tuple[np.ndarray, ...]
    ) -> np.ndarray:
        (weight,) = weights
        match = np.equal(train[order], test[:, None]).view(np.int8)
        # steps[:, i-1] = (m_i − m_{i+1}) · w_i for i < N, and the base case m_N · w_N last; the
        # reverse cumulative sum of that row is exactly the recursion in the module docstring.
        steps = np.empty(order.shape, dtype=np.float64)
        np.multiply(np.subtract(match[:, :-1], match[:, 1:]), weight[:-1], out=steps[:, :-1])
        np.multiply(match[:, -1], weight[-1], out=steps[:, -1])
        return np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]


class KNNRegressionShapley(_KNNShapleyBase):
    """Exact Shapley values of the K-nearest-neighbour regression utility ``−(ŷ − y)²``.

    Same engine, options and guarantees as :class:`KNNShapley`; labels must be finite numbers.
    """

    method = "knn-shapley-regression"
    task = "regression"

    def _labels(self, y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for name, y in (("y_train", y_train), ("y_test", y_test)):
            if y.dtype.kind not in "biuf":
                raise ValuationError(
                    f"{name} has dtype {y.dtype}; KNN regression needs numeric targets "
                    "(use KNNShapley for class labels)"
                )
            arr = y.astype(np.float64)
            if not np.isfinite(arr).all():
                row = int(np.argwhere(~np.isfinite(arr))[0][0])
                raise ValuationError(f"{name}[{row}] is {arr[row]!r}; every target must be a finite number")
            out.append(arr)
        return out[0], out[1]

    def _rank_weights(self, n: int) -> tuple[np.ndarray, ...]:
        k = self.k
        i = np.arange(1, n + 1, dtype=np.float64)
        t = np.minimum(float(k - 1), i - 1)
        share = np.minimum(float(k), i) / i
        # C_i for i ≥ 2 (C_1 multiplies an empty prefix); E_j for j ≥ 3 (T' = 0 below that).
        c = np.zeros(n, dtype=np.float64)
        c[1:] = t[1:] * (t[1:] + 1) / (i[1:] * (i[1:] - 1))
        e = np.zeros(n, dtype=np.float64)
        tj = np.minimum(float(k - 1), i[2:] - 2)
        e[2:] = tj * (tj + 1) / ((i[2:] - 1) * (i[2:] - 2))
        return share, c, e

    def _by_rank(
        self, order: np.ndarray, train: np.ndarray, test: np.ndarray, weights: tuple[np.ndarray, ...]
    ) -> np.ndarray:
        rows, n = order.shape
        k = self.k
        share, c, e = weights
        y = train[order]
        y_next = np.zeros((rows, n), dtype=np.float64)
        y_next[:, :-1] = y[:, 1:]
        prefix = np.zeros((rows, n), dtype=np.float64)
        np.cumsum(y[:, :-1], axis=1, out=prefix[:, 1:])
        # far[:, i-1] = Σ_{j ≥ i+2} E_j·y_j: a reverse cumulative sum shifted by two ranks.
        far = np.zeros((rows, n), dtype=np.float64)
        if n > 2:
            np.cumsum((y[:, :1:-1] * e[:1:-1]), axis=1, out=far[:, n - 3 :: -1])
        bracket = (y + y_next - (2.0 * k) * test[:, None]) * share + c * prefix + far
        steps = (y_next - y) / float(k * k) * bracket
        return np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
