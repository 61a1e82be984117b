"""Incremental KNN-Shapley: keep each test point's sorted neighbours, merge new records in.

Exact KNN-Shapley spends most of its time computing distances and sorting them. A :class:`KnnIndex`
keeps what that work produced, per test point the training indices sorted by (distance, index) and
the sorted distances themselves, so the next dataset version does not redo it:

    index = KnnIndex.build(x_v1, x_test)                          # distances + sort, once
    values_v1 = KNNShapley(k=5).values(x_v1, y_v1, x_test, y_test, index=index)
    index = index.add(x_new)                                      # v1 → v2: nothing sorted yet
    values_v2 = KNNShapley(k=5).values(x_v2, y_v2, x_test, y_test, index=index)
    index.save("knn-index/v2")                                    # merged once, for v3

The new records get the next indices (``N … N+m−1``). Reading a row merges them in: their ``m``
distances to that test point, a sort of those ``m``, ``np.searchsorted`` on the stored distances
(``side="right"``: an old record at an equal distance has the lower index, so it stays nearer) and
one masked copy, O(N + m log N) per test point instead of O(N·d + N log N). ``remove`` drops
withdrawn records and renumbers the rest in order, which keeps the tie-break. Rows read this way are
exactly the rows a rebuild would hold, so values through the index are bit-identical to values from
scratch; :meth:`KnnIndex.check` refuses an index that does not belong to the arrays it is used with.

Every value still changes with a new version (each record's rank moves), so the per-test-point
value pass is redone in full; what the index saves is the distances and the sort. The index holds
``12 · n_test · N`` bytes (int32 indices, float64 distances); ``save`` writes ``.npy`` files that
``load`` can memory-map, so a large one need not fit in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from databright.errors import ValuationError
from databright.valuation.knn_shapley import (
    BLOCK,
    _as_features,
    available_cores,
    map_in_order,
    neighbour_order,
    rows_per_step,
    squared_distances,
)

_FORMAT = "databright-knn-index-v1"
# Neighbours a consistency check recomputes per test point, beyond the K nearest.
_CHECK_PER_ROW = 8


def _index_dtype(n: int) -> type[np.signedinteger[Any]]:
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def _jobs(n_jobs: int | None, spans: int) -> int:
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValuationError(f"n_jobs={n_jobs!r} is not a positive integer; pass None for every core")
    return max(1, min(n_jobs or available_cores(), spans))


@dataclass(frozen=True, eq=False)
class KnnIndex:
    """Per test point, training indices sorted by (squared distance, index), and those distances.

    ``order`` and ``distances`` are ``(n_test, n_base)``. ``appended`` holds the features of records
    added since they were written (indices ``n_base …``); they are merged in as rows are read, so
    ``add`` itself costs only a copy of the new features. ``x_test`` is kept because merging needs
    the new records' distances to the same test points.
    """

    x_test: np.ndarray
    order: np.ndarray
    distances: np.ndarray
    appended: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_test, d = self.x_test.shape
        if self.order.shape != self.distances.shape or self.order.shape[0] != n_test:
            raise ValuationError(
                f"index arrays disagree: x_test {self.x_test.shape}, order {self.order.shape}, "
                f"distances {self.distances.shape}; rebuild the index with KnnIndex.build"
            )
        appended = np.empty((0, d)) if self.appended is None else self.appended
        object.__setattr__(self, "appended", appended)

    @property
    def n_base(self) -> int:
        """Records whose order and distances are stored."""
        return int(self.order.shape[1])

    @property
    def n_train(self) -> int:
        return self.n_base + self._appended.shape[0]

    @property
    def n_test(self) -> int:
        return int(self.order.shape[0])

    @property
    def _appended(self) -> np.ndarray:
        assert self.appended is not None  # set in __post_init__
        return self.appended

    @cached_property
    def _appended_t(self) -> np.ndarray:
        return np.ascontiguousarray(self._appended.T)

    def __repr__(self) -> str:
        pending = f", pending={self._appended.shape[0]}" if self._appended.shape[0] else ""
        return (
            f"KnnIndex(n_test={self.n_test}, n_train={self.n_train}{pending}, "
            f"features={self.x_test.shape[1]})"
        )

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Sorted training indices of test points ``start … stop−1`` (nearest first), as ``intp``."""
        return self.merged(start, stop, with_distances=False)[0]

    def merged(
        self, start: int, stop: int, *, with_distances: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Order (``intp``) and, if asked, distances of test points ``start … stop−1`` with the
        appended records merged in: the exact arrays a full rebuild would hold."""
        m, n_base = self._appended.shape[0], self.n_base
        if m == 0:
            # numpy converts narrower index arrays on every fancy-indexing call; converting once is cheaper.
            order = np.asarray(self.order[start:stop], dtype=np.intp)
            return order, np.asarray(self.distances[start:stop]) if with_distances else None
        new_dist = squared_distances(self.x_test[start:stop], self._appended_t)
        new_order = np.argsort(new_dist, axis=1, kind="stable")  # m is small; ties by index
        new_dist = np.take_along_axis(new_dist, new_order, axis=1)
        new_order += n_base
        n, rows = n_base + m, stop - start
        order = np.empty((rows, n), dtype=np.intp)
        distances = np.empty((rows, n), dtype=np.float64) if with_distances else None
        offsets = np.arange(m, dtype=np.intp)
        is_new = np.zeros(n, dtype=bool)
        for r in range(rows):
            old_dist = self.distances[start + r]
            # side="right": an old record at an equal distance has the lower index, so it stays nearer.
            at = np.searchsorted(old_dist, new_dist[r], side="right") + offsets
            is_new[at] = True
            is_old = ~is_new
            order[r, at] = new_order[r]
            order[r, is_old] = self.order[start + r]
            if distances is not None:
                distances[r, at] = new_dist[r]
                distances[r, is_old] = old_dist
            is_new[at] = False
        return order, distances

    @classmethod
    def build(
        cls, x_train: Any, x_test: Any, *, n_jobs: int | None = None, out: str | Path | None = None
    ) -> KnnIndex:
        """Distances from every test point to every training point, sorted, ties by index.

        ``out`` writes the arrays as ``.npy`` files in that directory (memory-mapped) instead of memory.
        """
        xt, xv = _as_features("x_train", x_train), _as_features("x_test", x_test)
        if xt.shape[0] == 0 or xv.shape[0] == 0:
            raise ValuationError(
                f"cannot index {xt.shape[0]} training against {xv.shape[0]} test points; both need rows"
            )
        if xt.shape[1] != xv.shape[1]:
            raise ValuationError(
                f"x_train has {xt.shape[1]} features but x_test has {xv.shape[1]}; "
                "embed both sets with the same model"
            )
        n = xt.shape[0]
        order, distances = _allocate(out, xv, n)
        x_train_t = np.ascontiguousarray(xt.T)

        def fill(start: int, stop: int) -> None:
            dist = squared_distances(xv[start:stop], x_train_t)
            rows = neighbour_order(dist)
            order[start:stop] = rows
            distances[start:stop] = np.take_along_axis(dist, rows, axis=1)

        _run(fill, xv.shape[0], n, n_jobs)
        _flush(order, distances)
        return cls(x_test=xv, order=order, distances=distances)

    def add(self, x_new: Any) -> KnnIndex:
        """The index of the training set with ``x_new`` appended (indices ``n_train …``).

        Nothing is sorted here: the new records are merged into each test point's order when rows
        are read (``rows``, ``merged``), or once for all by :meth:`materialize` / :meth:`save`.
        """
        xn = _as_features("x_new", x_new)
        if xn.shape[1] != self.x_test.shape[1]:
            raise ValuationError(
                f"x_new has {xn.shape[1]} features but the index was built on {self.x_test.shape[1]}; "
                "embed the new records with the same model"
            )
        if xn.shape[0] == 0:
            return self
        appended = np.concatenate([self._appended, xn]) if self._appended.shape[0] else xn.copy()
        return KnnIndex(x_test=self.x_test, order=self.order, distances=self.distances, appended=appended)

    def materialize(self, *, n_jobs: int | None = None, out: str | Path | None = None) -> KnnIndex:
        """An index with the appended records merged into stored arrays (in memory, or under ``out``)."""
        if self._appended.shape[0] == 0 and out is None:
            return self
        if out is not None and self._stored_in(Path(out)):
            raise ValuationError(
                f"{out} holds the arrays this index reads from; materialize into another directory"
            )
        n = self.n_train
        order, distances = _allocate(out, self.x_test, n)

        def fill(start: int, stop: int) -> None:
            rows, dist = self.merged(start, stop)
            order[start:stop] = rows
            distances[start:stop] = dist

        _run(fill, self.n_test, n, n_jobs)
        _flush(order, distances)
        return KnnIndex(x_test=self.x_test, order=order, distances=distances)

    def _stored_in(self, directory: Path) -> bool:
        files = [getattr(arr, "filename", None) for arr in (self.order, self.distances)]
        return any(f is not None and Path(f).resolve().parent == directory.resolve() for f in files)

    def remove(self, indices: Any, *, n_jobs: int | None = None) -> KnnIndex:
        """The index without the training records ``indices``; the others keep their relative order
        and are renumbered ``0 … n_train − len(indices) − 1``, as ``np.delete`` would renumber rows."""
        raw = np.asarray(indices)
        if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
            raise ValuationError(f"indices must be a 1-D array of integers, got {raw.dtype} {raw.shape}")
        drop = np.zeros(self.n_train, dtype=bool)
        if raw.size:
            bad = raw[(raw < 0) | (raw >= self.n_train)]
            if bad.size:
                raise ValuationError(
                    f"index {int(bad[0])} is outside 0…{self.n_train - 1}; remove only indexed records"
                )
            if np.unique(raw).size != raw.size:
                raise ValuationError("indices repeat; name each withdrawn record once")
            drop[raw] = True
        keep_count = self.n_train - int(drop.sum())
        if keep_count == 0:
            raise ValuationError("removing every training record leaves nothing to value")
        if keep_count == self.n_train:
            return self
        renumber = (np.cumsum(~drop) - 1).astype(_index_dtype(keep_count))
        order = np.empty((self.n_test, keep_count), dtype=_index_dtype(keep_count))
        distances = np.empty((self.n_test, keep_count), dtype=np.float64)

        def compact(start: int, stop: int) -> None:
            rows, dist = self.merged(start, stop)
            keep = ~drop[rows]
            order[start:stop] = renumber[rows[keep]].reshape(stop - start, keep_count)
            distances[start:stop] = np.asarray(dist)[keep].reshape(stop - start, keep_count)

        _run(compact, self.n_test, self.n_train, n_jobs)
        return KnnIndex(x_test=self.x_test, order=order, distances=distances)

    def check(self, x_train: np.ndarray, x_test: np.ndarray) -> None:
        """Refuse this index unless it was built from ``x_train`` and ``x_test``.

        Shapes, the test features and the appended records must match exactly, and for each test
        point the stored distances of its 16 nearest and of a few evenly spaced ranks are recomputed
        and must equal the stored ones bit for bit. That catches a stale or foreign index; it is not
        a proof.
        """
        if x_train.shape[0] != self.n_train or x_test.shape[0] != self.n_test:
            raise ValuationError(
                f"{self!r} does not fit {x_train.shape[0]} training × {x_test.shape[0]} test points; "
                "use the index built (or grown with add) for this dataset version"
            )
        if x_test.shape != self.x_test.shape or not np.array_equal(x_test, self.x_test):
            raise ValuationError("x_test differs from the test points the index was built on; rebuild it")
        if not np.array_equal(x_train[self.n_base :], self._appended):
            raise ValuationError(
                f"x_train rows {self.n_base}… differ from the records added to the index; "
                "add exactly the new records, in order"
            )
        ranks = np.unique(
            np.concatenate(
                [np.arange(min(BLOCK, self.n_base)), np.linspace(0, self.n_base - 1, _CHECK_PER_ROW)]
            ).astype(np.int64)
        )
        picked = np.asarray(self.order[:, ranks]).astype(np.intp)
        stored = np.asarray(self.distances[:, ranks])
        diff = x_train[picked] - x_test[:, None, :]
        again = np.zeros(picked.shape, dtype=np.float64)
        for j in range(x_train.shape[1]):  # the same feature-by-feature sum as squared_distances
            again += diff[:, :, j] * diff[:, :, j]
        if not np.array_equal(again, stored):
            t, r = (int(v) for v in np.argwhere(again != stored)[0])
            raise ValuationError(
                f"index does not match x_train: test point {t}, rank {int(ranks[r])} (training row "
                f"{int(picked[t, r])}) is stored at distance {stored[t, r]!r}, recomputed {again[t, r]!r}; "
                "rebuild the index from this dataset version"
            )

    def save(self, directory: str | Path, *, n_jobs: int | None = None) -> Path:
        """Write the index, appended records merged in, as ``.npy`` files and ``index.json``."""
        path = Path(directory)
        if self._appended.shape[0]:
            self.materialize(n_jobs=n_jobs, out=path)
        elif not self._stored_in(path):
            _write_header(path, self.x_test, self.n_train)
            np.save(path / "order.npy", np.asarray(self.order), allow_pickle=False)
            np.save(path / "distances.npy", np.asarray(self.distances), allow_pickle=False)
        return path

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = False) -> KnnIndex:
        """Read an index written by :meth:`save`; ``mmap=True`` maps the large arrays read-only."""
        path = Path(directory)
        try:
            meta = json.loads((path / "index.json").read_text())
            mode: Literal["r"] | None = "r" if mmap else None
            x_test = np.load(path / "x_test.npy", allow_pickle=False)
            order = np.load(path / "order.npy", mmap_mode=mode, allow_pickle=False)
            distances = np.load(path / "distances.npy", mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValuationError(
                f"cannot read a KNN index from {path}: {exc}; write one with KnnIndex.save"
            ) from exc
        if meta.get("format") != _FORMAT or order.shape != (meta.get("n_test"), meta.get("n_train")):
            raise ValuationError(
                f"{path} holds {meta.get('format')!r} with shape {order.shape}, not a {_FORMAT} index "
                f"of {meta.get('n_test')}×{meta.get('n_train')}; rebuild it with KnnIndex.build"
            )
        return cls(x_test=x_test, order=order, distances=distances)


def _run(fn: Callable[[int, int], None], n_test: int, n: int, n_jobs: int | None) -> None:
    step = rows_per_step(n)
    spans = [(a, min(a + step, n_test)) for a in range(0, n_test, step)]
    for _ in map_in_order(fn, spans, _jobs(n_jobs, len(spans))):
        pass


def _flush(*arrays: np.ndarray) -> None:
    for arr in arrays:
        if isinstance(arr, np.memmap):
            arr.flush()


def _write_header(path: Path, x_test: np.ndarray, n: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "x_test.npy", x_test, allow_pickle=False)
    meta = {"format": _FORMAT, "n_test": x_test.shape[0], "n_train": n}
    (path / "index.json").write_text(json.dumps(meta, sort_keys=True) + "\n")


def _allocate(out: str | Path | None, x_test: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Empty ``(n_test, n)`` order and distance arrays, in memory or as ``.npy`` files under ``out``."""
    shape = (x_test.shape[0], n)
    if out is None:
        return np.empty(shape, dtype=_index_dtype(n)), np.empty(shape, dtype=np.float64)
    path = Path(out)
    _write_header(path, x_test, n)
    open_memmap = np.lib.format.open_memmap
    return (
        open_memmap(path / "order.npy", mode="w+", dtype=_index_dtype(n), shape=shape),
        open_memmap(path / "distances.npy", mode="w+", dtype=np.float64, shape=shape),
    )
