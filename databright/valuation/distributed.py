"""Exact KNN-Shapley fanned out over test-point blocks on a Dask cluster, bit-identical to one process.

The single-process engine (:mod:`databright.valuation.knn_shapley`) sums test points in fixed
blocks of :data:`~databright.valuation.knn_shapley.BLOCK` (16) in index order, then adds the block
partials in block order to a zero vector and divides by the number of test points. That fixed
grouping is what lets the work leave the machine without changing a bit: ``DaskKNNShapley`` sends
one task per block to the cluster, each computing that block's partial sum against the whole
training set, and adds the partials on the client *in block order*, then divides — the same
additions in the same order as one process makes. The result's values, and so its digest, equal
``KNNShapley(k).valuate(...)``'s; the tests check that bit for bit on a two-worker ``LocalCluster``.

**How a task gets its block's partial.** ``knn_shapley`` offers no public per-block function, so a
task calls the public ``KNNShapley(k).values`` on the block's test points alone: one block, so the
result is ``(0 + partial) / 16``, and multiplying by 16 — a power of two — gives back the partial
exactly. The last block usually has fewer than 16 points; it is padded to 16 with copies of its
last point carrying a label no training record has. Such a test point has utility 0 for every
subset, so all its Shapley contributions are exactly ``+0.0`` and, added after the real points,
change nothing. (Should ``knn_shapley`` grow a public block-partial function, a task would call it
directly; the additions on the client stay as they are.) Classification only: a regression test
point has no neutral label.

**Cost.** The training set is scattered to every worker once; each task returns one float64 vector
of the training set's length, so the client receives ``8·N`` bytes per block of 16 test points
(1M records × 1k test points: 63 vectors, 500 MB) and holds at most ``window`` of them while it
adds in order. Dask and distributed are imported by the caller who builds the client; this
module only uses the client's ``scatter``/``submit``/``cancel`` and never imports them itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from databright.errors import ValuationError
from databright.valuation.knn_shapley import BLOCK, KNNShapley
from databright.valuation.protocol import build_result, input_arrays
from databright.valuation.result import ValuationResult


def absent_label(y_train: np.ndarray) -> Any:
    """A label of the training labels' kind that no training record has (padding for test blocks)."""
    kind, labels = y_train.dtype.kind, y_train.tolist()
    candidates: list[Any] = []
    if kind == "b":
        candidates = [2]
    elif kind in "iu":
        candidates = [int(y_train.max()) + 1, int(y_train.min()) - 1]
    elif kind == "f":
        candidates = [c for c in (float(y_train.max()) + 1.0, float(y_train.min()) - 1.0) if np.isfinite(c)]
    elif kind in "US":
        candidates = [max(labels) + ("~" if kind == "U" else b"~")]
    elif kind == "O" and all(isinstance(v, str) for v in labels):
        candidates = [max(labels) + "~"]
    elif kind == "O" and all(isinstance(v, int | float) and not isinstance(v, bool) for v in labels):
        candidates = [max(labels) + 1]
    for label in candidates:
        # max + 1 can round back onto max for huge floats, hence the check.
        if not np.isin(np.asarray([label]), y_train).any():
            return label
    raise ValuationError(
        f"labels of dtype {y_train.dtype} leave no unused label to pad the last block of test points "
        "with; encode the labels as integers or strings"
    )


def _block_partial(
    k: int, x_train: np.ndarray, y_train: Any, x_block: np.ndarray, y_block: Any
) -> np.ndarray:
    """One block's partial sum: the block's mean times its size, exact since the size is ``BLOCK``."""
    values = KNNShapley(k, n_jobs=1).values(x_train, y_train, x_block, y_block)
    return values * float(x_block.shape[0])


class DaskKNNShapley:
    """Exact KNN-Shapley (classification) with test-point blocks computed on a Dask cluster.

    ``client`` is a ``distributed.Client`` (any object with ``scatter``, ``submit`` and ``cancel``).
    ``window`` bounds the block results held or in flight at once (default: four per worker). The
    method name and parameters are ``KNNShapley(k)``'s: the values are the same, bit for bit.
    """

    method = KNNShapley.method

    def __init__(self, client: Any, k: int = 5, *, window: int | None = None) -> None:
        for needed in ("scatter", "submit", "cancel"):
            if not callable(getattr(client, needed, None)):
                raise ValuationError(
                    f"client {client!r} has no {needed}(); pass a distributed.Client, e.g. "
                    "Client(LocalCluster(n_workers=2)) or Client('tcp://scheduler:8786')"
                )
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValuationError(
                f"window={window!r} is not a positive integer; pass None for four per worker"
            )
        if BLOCK & (BLOCK - 1):
            raise ValuationError(
                f"knn_shapley.BLOCK is {BLOCK}, not a power of two, so block partials cannot be recovered "
                "exactly from block means; keep BLOCK a power of two"
            )
        self._local = KNNShapley(k)  # validates k, checks inputs and names the parameters
        self.client = client
        self.k = self._local.k
        self.window = window

    def __repr__(self) -> str:
        return f"DaskKNNShapley(k={self.k}, window={self.window}, client={self.client!r})"

    @property
    def params(self) -> dict[str, Any]:
        return self._local.params

    def _window(self) -> int:
        if self.window is not None:
            return self.window
        try:
            workers = len(self.client.scheduler_info().get("workers", {}))
        except (AttributeError, TypeError):
            workers = 1
        return 4 * max(workers, 1)

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray:
        """Per-training-point values (float64, input order), identical to ``KNNShapley(k).values``."""
        xt, yt, xv, yv = self._local._inputs(x_train, y_train, x_test, y_test)
        n_train, n_test = xt.shape[0], xv.shape[0]
        spans = [(a, min(a + BLOCK, n_test)) for a in range(0, n_test, BLOCK)]
        last_start, last_stop = spans[-1]
        pad = BLOCK - (last_stop - last_start)
        pad_label = absent_label(yt) if pad else None
        x_remote, y_remote = self.client.scatter([xt, yt], broadcast=True, hash=False)
        total = np.zeros(n_train, dtype=np.float64)
        pending: deque[Any] = deque()
        window = self._window()
        try:
            for start, stop in spans:
                x_block, y_block = xv[start:stop], yv[start:stop]
                if stop - start < BLOCK:
                    x_block = np.concatenate([x_block, np.repeat(x_block[-1:], pad, axis=0)])
                    y_block = np.concatenate([y_block, np.asarray([pad_label] * pad)])
                pending.append(
                    self.client.submit(
                        _block_partial, self.k, x_remote, y_remote, x_block, y_block, pure=False
                    )
                )
                if len(pending) >= window:
                    total += pending.popleft().result()
            while pending:
                total += pending.popleft().result()
        finally:
            leftover = [*pending, x_remote, y_remote]
            self.client.cancel(leftover)
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
        """``values`` in a ``ValuationResult``: the same digest as ``KNNShapley(k).valuate`` gives."""
        values = self.values(x_train, y_train, x_test, y_test)
        arrays = input_arrays(x_train, y_train, x_test, y_test)
        return build_result(self, values, arrays=arrays, record_ids=record_ids, input_digests=input_digests)
