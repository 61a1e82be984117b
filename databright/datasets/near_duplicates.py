"""Near-duplicate groups: recorded, never refused, so valuation can let a group share one value.

Exact duplicates are refused at ingest; near-duplicates are kept and grouped in the version
manifest (``near_duplicate_groups``). Over all records of a version, two records are linked when

(a) **their rows are the same after normalisation**: every schema column, with strings in Unicode
    NFC, case-folded and runs of whitespace collapsed to one space (trimmed), floats rounded to
    ``decimals`` places (``numpy.round``; ``-0.0`` is ``0.0``), ints as they are, null equal to
    null; or
(b) **their feature vectors point the same way**: the schema's ``features`` (numeric columns) have
    cosine distance ``1 − u·v / (‖u‖‖v‖) ≤ cosine_distance``, computed as ``½‖û − v̂‖²`` on the
    unit vectors for accuracy near zero. Cosine distance ignores length: ``(1, 2)`` and ``(2, 4)``
    are linked. A **zero vector** has no direction, so it is linked to every other zero vector and
    to no non-zero one. A record with a null feature has no vector and takes part in (a) only.

A group is a connected component of those links (so ``a~b`` and ``b~c`` put ``a, b, c`` in one
group even when ``a`` and ``c`` are further apart), listed in the order of ``record_ids``; groups
are ordered by their first member. Only groups of two or more are reported.

**Finding (b) without comparing all pairs.** Identical unit vectors are linked directly. Up to
``exhaustive_below`` distinct ones are compared exactly, all pairs (blocked matrix products). With
one or two features, sorting by angle is exact: on a circle, linked vectors are linked through
their neighbours. Otherwise random-hyperplane LSH picks candidates: each of ``bands`` bands hashes
a unit vector to its sides of ``bits`` random hyperplanes; within a bucket, vectors are sorted by a
random unit projection, and each is compared exactly with the following ones whose projection is
within ``sqrt(2·cosine_distance)`` (no pair within the threshold is further apart than that along
any unit direction), at most ``window`` of them. Two vectors at angle θ share a band's bucket with
probability ``(1 − θ/π)^bits``; ``bits`` grows with the number of vectors and the dimension so
that buckets of spread-out vectors hold about one vector, and ``bands`` is the least that keeps
the probability of missing a pair *at* the threshold below ``miss_probability`` (default 1e-6;
a pair at a hundredth of the default threshold, distance 1e-5, is missed with probability below
1e-18).

So the LSH path **can miss a pair**: with that bounded probability, and where more than ``window``
vectors of one bucket lie within reach of each other (vectors that mostly point one way, e.g. all
features positive: the result's ``window_cutoffs`` counts those cut-offs, 0 for spread-out
data). It **never reports a false link**: every link is checked exactly. The result is
deterministic for a given ``seed`` and input.

Cost: ``bands × bits`` projections per vector, one sort per band, and the exact checks — at most
``bands × window`` per vector. Measured on the 2-core development machine, 8 features,
``cosine_distance=0.001``: 50k spread-out records 0.3 s (27 bits × 13 bands); 1M records 12-17 s
(40 bits × 17 bands; about 600 MB of extra peak memory); 200k records whose vectors all point one
way (every feature positive) 12 s, ending in one giant group, as the definition says.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from databright.datasets.contracts import Schema
from databright.errors import ConfigError, DatasetError

_MAX_COSINE_DISTANCE = 0.05
_MAX_BANDS = 256
_MIN_BITS, _MAX_BITS = 8, 63  # a signature is packed into one int64
_BLOCK = 1024  # rows per block of the exhaustive all-pairs products
_PAIRS_PER_BATCH = 4_000_000  # bounds the memory of one exact check
_ROWS_PER_BLOCK = 32_768  # rows per block of hyperplane projections


@dataclass(frozen=True)
class NearDuplicates:
    """The groups and how they were found; ``to_dict()`` is what a manifest or artifact records."""

    groups: tuple[tuple[str, ...], ...]
    records: int
    method: str  # "exhaustive", "angle", "lsh", or "none" (no record has a usable vector)
    parameters: dict[str, Any] = field(hash=False)
    window_cutoffs: int = 0  # LSH candidate lists the window cut short, over all bands (0: none)

    @property
    def group_count(self) -> int:
        return len(self.groups)

    @property
    def records_in_groups(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def largest_group(self) -> int:
        return max((len(g) for g in self.groups), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [list(g) for g in self.groups],
            "group_count": self.group_count,
            "records_in_groups": self.records_in_groups,
            "largest_group": self.largest_group,
            "records": self.records,
            "method": self.method,
            "parameters": dict(self.parameters),
            "window_cutoffs": self.window_cutoffs,
        }

    def __repr__(self) -> str:
        return (
            f"NearDuplicates({self.group_count} groups, {self.records_in_groups} of {self.records} records, "
            f"{self.method})"
        )


class _Components:
    """Union-find over ``n`` items with vectorised batches of links (roots only point downwards)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self) -> np.ndarray:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent[:] = grand

    def link(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        while len(a):
            roots = self.roots()
            ra, rb = roots[a], roots[b]
            apart = ra != rb
            a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
            # Hook the larger root under the smaller: no cycles; a root claimed twice keeps the
            # smallest claim and the other links are retried on the next pass.
            np.minimum.at(self.parent, np.maximum(ra, rb), np.minimum(ra, rb))

    def link_equal(self, labels: np.ndarray, members: np.ndarray | None = None) -> None:
        """Link every item of ``members`` (default: all) to the others with the same label."""
        if not len(labels):
            return
        members = np.arange(len(labels)) if members is None else members
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
        first = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
        self.link(members[first], members[order])


def _signatures(u: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Each row's side of every hyperplane, packed into one int64, computed in cache-sized blocks."""
    keys = np.empty(len(u), dtype=np.int64)
    for start in range(0, len(u), _ROWS_PER_BLOCK):
        sides = u[start : start + _ROWS_PER_BLOCK] @ planes > 0
        packed = np.packbits(sides, axis=1, bitorder="little")
        padded = np.zeros((len(packed), 8), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        keys[start : start + _ROWS_PER_BLOCK] = padded.view("<i8").ravel()
    return keys


def _normal_text(value: Any) -> str:
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", str(value)).casefold())
    return " ".join(folded.split())


class NearDuplicateFinder:
    """Finds near-duplicate groups among a version's records; see the module docstring."""

    def __init__(
        self,
        schema: Schema,
        *,
        cosine_distance: float = 0.001,
        decimals: int = 6,
        seed: int = 0,
        miss_probability: float = 1e-6,
        exhaustive_below: int = 2048,
        window: int = 64,
    ) -> None:
        number = (int, float)
        if isinstance(cosine_distance, bool) or not isinstance(cosine_distance, number):
            raise ConfigError(f"cosine_distance must be a number, got {cosine_distance!r}")
        if not 0 <= cosine_distance <= _MAX_COSINE_DISTANCE:
            raise ConfigError(
                f"cosine_distance {cosine_distance!r} is outside 0..{_MAX_COSINE_DISTANCE} (about 18°); "
                "vectors further apart are not near-duplicates — use e.g. 0.001"
            )
        for name, value, low, high in (
            ("decimals", decimals, 0, 15),
            ("exhaustive_below", exhaustive_below, 0, 100_000),
            ("window", window, 1, 10_000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(miss_probability, bool) or not isinstance(miss_probability, number):
            raise ConfigError(f"miss_probability must be a number, got {miss_probability!r}")
        if not 1e-15 <= miss_probability <= 0.5:
            raise ConfigError(f"miss_probability must be from 1e-15 to 0.5, got {miss_probability!r}")
        text_features = [f for f in schema.features if schema.column(f).dtype == "string"]
        if text_features:
            raise ConfigError(
                f"features {text_features} are text; feature vectors need numeric (int or float) columns — "
                "fix the schema's features"
            )
        self.schema = schema
        self.cosine_distance = float(cosine_distance)
        self.decimals = decimals
        self.seed = seed
        self.miss_probability = float(miss_probability)
        self.exhaustive_below = exhaustive_below
        self.window = window

    # --- the public calls ---------------------------------------------------------------------

    def groups(self, record_ids: Sequence[str], frame: pd.DataFrame) -> tuple[tuple[str, ...], ...]:
        return self.find(record_ids, frame).groups

    def find(self, record_ids: Sequence[str], frame: pd.DataFrame) -> NearDuplicates:
        """Group ``record_ids`` (one per row of ``frame``, which holds the schema's columns)."""
        ids = list(record_ids)
        self._check_input(ids, frame)
        n = len(ids)
        components = _Components(n)
        components.link_equal(self._row_keys(frame))
        method, parameters, cutoffs = self._link_vectors(frame, components)
        roots = components.roots()
        order = np.argsort(roots, kind="stable")
        starts = np.r_[0, np.flatnonzero(roots[order][1:] != roots[order][:-1]) + 1]
        groups = [order[s:e] for s, e in zip(starts, np.r_[starts[1:], n], strict=True) if e - s > 1]
        groups.sort(key=lambda members: int(members[0]))
        return NearDuplicates(
            groups=tuple(tuple(ids[i] for i in members.tolist()) for members in groups),
            records=n,
            method=method,
            parameters={
                "cosine_distance": self.cosine_distance,
                "decimals": self.decimals,
                "seed": self.seed,
                "features": list(self.schema.features),
                **parameters,
            },
            window_cutoffs=cutoffs,
        )

    def _check_input(self, ids: list[str], frame: pd.DataFrame) -> None:
        if len(ids) != len(frame):
            raise DatasetError(
                f"{len(ids)} record ids for {len(frame)} rows; pass one record id per row, in row order"
            )
        if len(set(ids)) != len(ids):
            repeated = next(i for i, count in Counter(ids).items() if count > 1)
            raise DatasetError(
                f"record id {repeated!r} appears more than once; a version holds each record once — "
                "pass the version's records, not a file's rows"
            )
        missing = [c for c in self.schema.names if c not in frame.columns]
        if missing:
            raise DatasetError(f"frame lacks schema columns {missing}; pass the version's records frame")

    # --- (a) the same row after normalisation -------------------------------------------------

    def _row_keys(self, frame: pd.DataFrame) -> np.ndarray:
        columns: dict[str, Any] = {}
        for col in self.schema.columns:
            series = frame[col.name].reset_index(drop=True)
            if col.dtype == "float":
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                columns[col.name] = np.round(values, self.decimals) + 0.0
            elif col.dtype == "int":
                columns[col.name] = series.astype("Int64")
            else:
                missing = series.isna().to_numpy(dtype=bool)
                texts = [
                    None if m else _normal_text(v) for v, m in zip(series.tolist(), missing, strict=True)
                ]
                columns[col.name] = pd.Series(texts, dtype=object)
        keys = pd.DataFrame(columns)
        if keys.empty:
            return np.zeros(len(frame), dtype=np.int64)
        return keys.groupby(list(keys.columns), dropna=False, sort=False).ngroup().to_numpy(dtype=np.int64)

    # --- (b) feature vectors within the cosine distance ---------------------------------------

    def _feature_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        columns = []
        for name in self.schema.features:
            values = frame[name].reset_index(drop=True).to_numpy(dtype=np.float64, na_value=np.nan)
            infinite = np.flatnonzero(np.isinf(values))
            if len(infinite):
                raise DatasetError(
                    f"feature {name!r} is infinite at frame row {int(infinite[0])}; a version's records are "
                    "validated finite — pass the records as the version stores them",
                    column=name,
                )
            columns.append(values)
        return np.column_stack(columns) if columns else np.zeros((len(frame), 0))

    def _link_vectors(self, frame: pd.DataFrame, components: _Components) -> tuple[str, dict[str, Any], int]:
        x = self._feature_matrix(frame)
        usable = np.flatnonzero(~np.isnan(x).any(axis=1)) if x.shape[1] else np.zeros(0, dtype=np.int64)
        norms = np.linalg.norm(x[usable], axis=1)
        zero = usable[norms == 0]
        if len(zero) > 1:
            components.link(np.full(len(zero) - 1, zero[0]), zero[1:])
        rows = usable[norms > 0]
        if not len(rows):
            return "none", {}, 0
        unit = np.ascontiguousarray(x[rows] / norms[norms > 0, None] + 0.0)  # + 0.0: -0.0 becomes 0.0
        flat = unit.view(np.dtype((np.void, unit.dtype.itemsize * unit.shape[1]))).ravel()
        _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        distinct = unit[first]  # identical unit vectors are linked below without a comparison
        vectors = _Components(len(distinct))
        parameters: dict[str, Any] = {}
        cutoffs = 0
        if len(distinct) <= self.exhaustive_below:
            method = "exhaustive"
            self._exhaustive(distinct, vectors)
        elif distinct.shape[1] <= 2:
            method = "angle"
            self._by_angle(distinct, vectors)
        else:
            method = "lsh"
            parameters, cutoffs = self._lsh(distinct, vectors)
        components.link_equal(vectors.roots()[inverse.ravel()], rows)
        return method, parameters, cutoffs

    def _close(self, u: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        difference = u[a] - u[b]
        return 0.5 * np.einsum("ij,ij->i", difference, difference) <= self.cosine_distance

    def _exhaustive(self, u: np.ndarray, vectors: _Components) -> None:
        slack = self.cosine_distance + 1e-9  # the dot product only preselects; _close decides
        for start in range(0, len(u), _BLOCK):
            gram = u[start : start + _BLOCK] @ u[start:].T
            a, b = np.nonzero(1.0 - gram <= slack)
            a, b = a + start, b + start
            keep = b > a
            a, b = a[keep], b[keep]
            close = self._close(u, a, b)
            vectors.link(a[close], b[close])

    def lsh_parameters(self, m: int, dims: int) -> tuple[int, int, float]:
        """(bits, bands, miss probability at the threshold) for ``m`` distinct vectors of ``dims``.

        ``bits`` hyperplanes through the origin cut ``dims``-space into at most
        ``2·Σ_{i<dims} C(bits−1, i)`` regions; ``bits`` is the least that makes that 32 times
        ``m`` (buckets of spread-out vectors then hold about one vector), ``bands`` the least that
        keeps the miss probability at the threshold under ``miss_probability``.
        """
        theta = math.acos(max(-1.0, 1.0 - self.cosine_distance))
        keep = 1.0 - theta / math.pi  # one hyperplane leaves both vectors on one side
        bits = _MIN_BITS
        while bits < _MAX_BITS and 2 * sum(math.comb(bits - 1, i) for i in range(min(dims, bits))) < 32 * m:
            bits += 1
        while True:
            same = keep**bits
            bands = (
                1 if same >= 1.0 else max(1, math.ceil(math.log(self.miss_probability) / math.log1p(-same)))
            )
            if bands <= _MAX_BANDS or bits == 1:
                return bits, bands, (1.0 - same) ** bands
            bits -= 1

    def _by_angle(self, u: np.ndarray, vectors: _Components) -> None:
        """Exact for one or two features: on a circle, linked vectors are linked through neighbours."""
        plane = np.column_stack([u, np.zeros((len(u), 2 - u.shape[1]))]) if u.shape[1] < 2 else u
        order = np.argsort(np.arctan2(plane[:, 1], plane[:, 0]), kind="stable")
        a, b = order, np.roll(order, -1)
        close = self._close(u, a, b)
        vectors.link(a[close], b[close])

    def _lsh(self, u: np.ndarray, vectors: _Components) -> tuple[dict[str, Any], int]:
        m, dims = u.shape
        bits, bands, miss = self.lsh_parameters(m, dims)
        rng = np.random.default_rng(self.seed)
        # Two unit vectors within the threshold are within this distance along any unit direction.
        reach = math.sqrt(2.0 * self.cosine_distance) * (1 + 1e-9) + 1e-6
        positions = np.arange(m)
        cutoffs = 0
        for _ in range(bands):
            keys = _signatures(u, rng.standard_normal((dims, bits)))
            direction = rng.standard_normal(dims)
            projection = u @ (direction / np.linalg.norm(direction))
            order = np.lexsort((projection, keys))
            sorted_keys = keys[order]
            bucket = np.cumsum(np.r_[False, sorted_keys[1:] != sorted_keys[:-1]])
            # Buckets laid end to end along one axis, far enough apart that no reach spans two:
            # each vector's candidates are the following ones of its bucket within reach.
            axis = projection[order] + bucket * (4.0 + 2.0 * reach)
            reachable = np.searchsorted(axis, axis + reach, side="right") - positions - 1
            cutoffs += int((reachable > self.window).sum())
            successors = np.minimum(reachable, self.window)
            first = np.repeat(positions, successors)
            step = np.arange(len(first)) - np.repeat(np.cumsum(successors) - successors, successors) + 1
            a, b = order[first], order[first + step]
            roots = vectors.roots()
            apart = roots[a] != roots[b]  # pairs linked in an earlier band need no check
            a, b = a[apart], b[apart]
            for lo in range(0, len(a), _PAIRS_PER_BATCH):
                batch_a, batch_b = a[lo : lo + _PAIRS_PER_BATCH], b[lo : lo + _PAIRS_PER_BATCH]
                close = self._close(u, batch_a, batch_b)
                vectors.link(batch_a[close], batch_b[close])
        return {"bits": bits, "bands": bands, "window": self.window, "miss_probability": miss}, cutoffs
