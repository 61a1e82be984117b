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
random unit projection (equal projections by first appearance), and each is compared exactly with
the following ones whose projection is within ``sqrt(2·cosine_distance)`` (no pair within the
threshold is further apart than that along any unit direction), at most ``window`` of them. Two
vectors at angle θ share a band's bucket with probability ``(1 − θ/π)^bits``; ``bits`` grows with
the number of vectors and the dimension so that buckets of spread-out vectors hold about one
vector, and ``bands`` is the least that keeps the probability of missing a pair *at* the threshold
below ``miss_probability`` (default 1e-6; a pair at a hundredth of the default threshold, distance
1e-5, is missed with probability below 1e-18).

So the LSH path **can miss a pair**: with that bounded probability, and where more than ``window``
vectors of one bucket lie within reach of each other (vectors that mostly point one way, e.g. all
features positive: the result's ``window_cutoffs`` counts those cut-offs, 0 for spread-out
data). It **never reports a false link**: every link is checked exactly. The result is
deterministic for a given ``seed`` and input.

Cost: ``bands × bits`` projections per vector, one sort per band, and the exact checks — at most
``bands × window`` per vector, about one where a run of neighbours along the projection is already
linked. Measured on the 2-core development machine, 8 features, ``cosine_distance=0.001``, medians
of 3 fresh runs: 1M records like the ingest benchmark's 1.8 s (40 bits × 17 bands, two bands at a
time; about 290 MB of extra peak memory, 2.4 s and 210 MB one band at a time), where the previous,
band-by-band version took 10.4 s and 580 MB; 50k spread-out records 0.07 s (27 bits × 13 bands);
200k records whose features are all positive 1.4 s (uniform in [0, 1): 1.8 s, 690k window
cut-offs); 200k records within about 1° of one direction 0.6 s, ending in one giant group, as the
definition says.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from databright.datasets.contracts import Schema
from databright.errors import ConfigError, DatasetError

_MAX_COSINE_DISTANCE = 0.05
_MAX_BANDS = 256
_MIN_BITS, _MAX_BITS = 8, 63  # a signature is packed into one int64
_BLOCK = 1024  # rows per block of the exhaustive all-pairs products
_PAIRS_PER_BATCH = 262_144  # pairs gathered at once for an exact check (two 16 MB blocks at 8 features)
_FEW_LINKS = 65_536  # links kept as plain pairs, if also under a quarter of the vectors
# Products per block of hyperplane projections (rows × dims × bits): small enough to stay in cache
# and for OpenBLAS to run the block on one thread, which measured fastest and steadiest.
_PRODUCTS_PER_BLOCK = 2048 * 8 * 40
_BAND_THREADS = 2  # LSH bands computed at once: each holds a few arrays the size of the vectors
_ROWS_PER_PASS = 65_536  # rows per block of a pass over all vectors, so no full-size temporary
# The ASCII characters Python's str.split() splits on; all other whitespace is non-ASCII.
_ASCII_SPACE_RUNS = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f ]+"
_NAN_WORD = np.float64(np.nan).view(np.uint64)  # every null and NaN float is this one value
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it loses no bits

Pairs = tuple[np.ndarray, np.ndarray]


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
    """Union-find over ``n`` items with vectorised batches of links (roots only point downwards,
    so a component's root is its smallest item)."""

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


class _Links:
    """Exactly checked links among ``m`` vectors: plain pairs while few, a union-find once many.

    Spread-out data yields a handful of links, for which a pass over all ``m`` vectors per band
    would cost more than the links; vectors that crowd together yield many, which the union-find
    bounds (memory ``O(m)``) and lets later bands skip pairs already joined.
    """

    def __init__(self, m: int) -> None:
        self.m, self.count = m, 0
        self.pending: list[Pairs] = []
        self.components: _Components | None = None

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.pending.append((a, b))
        self.count += len(a)
        if self.count > max(self.m // 4, _FEW_LINKS):
            self.roots()

    def roots(self) -> np.ndarray | None:
        """Each vector's component root once links are many; None while they are few."""
        if self.components is None and self.count <= max(self.m // 4, _FEW_LINKS):
            return None
        self.components = self.components or _Components(self.m)
        self.components.link(*_concat(self.pending))
        self.pending, self.count = [], 0
        return self.components.roots().copy()  # a band on another thread reads it while links grow

    def pairs(self) -> Pairs:
        """Pairs whose connected components are those of every link added."""
        pairs = list(self.pending)
        if self.components is not None:
            roots = self.components.roots()
            joined = np.flatnonzero(roots != np.arange(self.m))
            pairs.append((joined, roots[joined]))
        return _concat(pairs)


def _concat(pairs: list[Pairs]) -> Pairs:
    empty = np.zeros(0, dtype=np.int64)
    return np.concatenate([empty, *(a for a, _ in pairs)]), np.concatenate([empty, *(b for _, b in pairs)])


def _groups(n: int, links: list[Pairs]) -> list[np.ndarray]:
    """Connected components of two or more of ``n`` records, members ascending, by first member."""
    a, b = _concat(links)
    if not len(a):
        return []
    nodes = np.arange(n)
    if 16 * len(a) < n:  # few links: only the records they touch are visited
        nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        a, b = inverse[: len(a)], inverse[len(a) :]
    components = _Components(len(nodes))
    components.link(a, b)
    roots = components.roots()
    grouped = np.flatnonzero(np.bincount(roots, minlength=len(nodes))[roots] > 1)
    order = grouped[np.argsort(roots[grouped], kind="stable")]
    bounds = np.r_[0, np.flatnonzero(roots[order][1:] != roots[order][:-1]) + 1, len(order)]
    # A root is its component's smallest member: ordering by root orders groups by first member.
    return [nodes[order[s:e]] for s, e in pairwise(bounds)]


def _shared_hashes(hashes: np.ndarray) -> np.ndarray:
    """Positions, ascending, whose hash some other position also has."""
    ordered = np.sort(hashes)
    repeated = ordered[1:] == ordered[:-1]
    if not repeated.any():
        return np.zeros(0, dtype=np.int64)
    values = np.unique(ordered[1:][repeated])
    return np.flatnonzero(values[np.minimum(np.searchsorted(values, hashes), len(values) - 1)] == hashes)


def _first_equal(words: np.ndarray) -> np.ndarray:
    """For each row of ``words`` (k, c), the position of the first row equal to it."""
    inverse = np.unique(words, axis=0, return_inverse=True)[1].ravel()
    first = np.full(len(inverse), len(inverse), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return first[inverse]


def _signatures(u: np.ndarray, planes: np.ndarray, direction: np.ndarray) -> Pairs:
    """Each row's sides of the hyperplanes packed into one int64, and its projection on
    ``direction``, in cache-sized blocks. Sides past ``bits`` stay False, so packing 64 sides gives
    the int64 of packing ``bits`` sides padded with zero bytes."""
    dims, bits = planes.shape
    keys, projection = np.empty(len(u), dtype=np.int64), np.empty(len(u))
    block = max(64, _PRODUCTS_PER_BLOCK // (dims * bits))
    products, sides = np.empty((block, bits)), np.zeros((block, 64), dtype=bool)
    for start in range(0, len(u), block):
        rows = min(block, len(u) - start)
        np.matmul(u[start : start + rows], planes, out=products[:rows])
        np.greater(products[:rows], 0, out=sides[:rows, :bits])
        keys[start : start + rows] = np.packbits(sides[:rows], bitorder="little").view("<i8")
        np.matmul(u[start : start + rows], direction, out=projection[start : start + rows])
    return keys, projection


def _shared_buckets(u: np.ndarray, planes: np.ndarray, direction: np.ndarray, reach: float) -> Pairs:
    """The vectors of one band's buckets of two or more, in (bucket, projection, index) order, with
    their places on one axis where the buckets lie end to end, far enough apart that no reach spans
    two: a vector's candidates are the following ones within reach. A vector alone in its bucket
    has none, so only the others are sorted by projection."""
    keys, projection = _signatures(u, planes, direction)
    m, bits = len(keys), planes.shape[1]
    shift = max(1, (m - 1).bit_length())
    if bits + shift <= 63:  # key and position fit one int64: a plain sort is the stable argsort
        packed = keys << shift
        del keys
        packed |= np.arange(m, dtype=np.int64)
        packed.sort()
        order = packed & ((1 << shift) - 1)
        sorted_keys = np.right_shift(packed, shift, out=packed)
    else:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    del sorted_keys
    bucket: np.ndarray = np.zeros(m, dtype=np.int32 if m < 2**31 else np.int64)
    np.cumsum(~same, out=bucket[1:])
    shared = np.zeros(m, dtype=bool)
    shared[1:] = same
    shared[:-1] |= same
    members = order[shared]
    axis = projection[members] + bucket[shared] * (4.0 + 2.0 * reach)
    by_axis = np.argsort(axis)
    if (np.diff(axis[by_axis]) == 0).any():  # rare ties: settle them by projection, then index
        by_axis = np.lexsort((members, projection[members], axis))
    return members[by_axis], axis[by_axis]


def _normal_text(value: Any) -> str:
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", str(value)).casefold())
    return " ".join(folded.split())


def _normal_texts(values: np.ndarray) -> np.ndarray:
    """``_normal_text`` of each string: for ASCII, where NFC changes nothing and case folding is
    lower-casing, vectorised with Arrow; any other string by the definition itself."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(values):
        return values
    text = pa.array(values, type=pa.string())
    spaced = pc.replace_substring_regex(pc.ascii_lower(text), pattern=_ASCII_SPACE_RUNS, replacement=" ")
    out = np.asarray(pc.utf8_trim(spaced, characters=" ").to_pylist(), dtype=object)
    for i in np.flatnonzero(~pc.string_is_ascii(text).to_numpy(zero_copy_only=False)):
        out[i] = _normal_text(values[i])
    return out


def _text_codes(series: pd.Series) -> np.ndarray:
    """A code per row, equal exactly when the normalised texts are; -1 for a missing value."""
    if isinstance(series.dtype, pd.StringDtype):  # each distinct string is normalised once
        codes, uniques = pd.factorize(series)
        normal = _normal_texts(np.asarray(uniques, dtype=object))
    else:  # any other dtype value by value, through str() as the definition says
        missing = series.isna().to_numpy(dtype=bool)
        texts = [None if m else _normal_text(v) for v, m in zip(series.tolist(), missing, strict=True)]
        codes, normal = pd.factorize(np.asarray(texts, dtype=object))
    canonical = np.r_[pd.factorize(np.asarray(normal, dtype=object))[0], -1].astype(np.int64)
    return canonical[codes]  # code -1 (missing) picks the -1 appended last


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
        ids = record_ids if isinstance(record_ids, list | tuple) else list(record_ids)
        self._check_input(ids, frame)
        links = [self._equal_rows(frame)]
        method, parameters, cutoffs = self._link_vectors(frame, links)
        return NearDuplicates(
            groups=tuple(tuple(ids[i] for i in members.tolist()) for members in _groups(len(ids), links)),
            records=len(ids),
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

    def _check_input(self, ids: Sequence[str], frame: pd.DataFrame) -> None:
        if len(ids) != len(frame):
            raise DatasetError(
                f"{len(ids)} record ids for {len(frame)} rows; pass one record id per row, in row order"
            )
        # Only ids whose Python hash is shared are compared as strings: the rest are distinct.
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)).view(np.uint64)
        suspects = Counter(ids[i] for i in _shared_hashes(hashes).tolist())
        repeated = next((i for i, count in suspects.items() if count > 1), None)
        if repeated is not None:
            raise DatasetError(
                f"record id {repeated!r} appears more than once; a version holds each record once — "
                "pass the version's records, not a file's rows"
            )
        missing = [c for c in self.schema.names if c not in frame.columns]
        if missing:
            raise DatasetError(f"frame lacks schema columns {missing}; pass the version's records frame")

    # --- (a) the same row after normalisation -------------------------------------------------

    def _row_words(self, frame: pd.DataFrame) -> Iterator[np.ndarray]:
        """Per schema column, 64-bit words per row, equal exactly when the normalised values are."""
        for col in self.schema.columns:
            series = frame[col.name]
            if col.dtype == "float":
                values = np.round(series.to_numpy(dtype=np.float64, na_value=np.nan), self.decimals) + 0.0
                words = values.view(np.uint64)
                words[np.isnan(values)] = _NAN_WORD
                yield words
            elif col.dtype == "int":
                ints = series.astype("Int64")
                yield ints.to_numpy(dtype=np.int64, na_value=0).view(np.uint64)
                missing = ints.isna().to_numpy(dtype=bool)
                if missing.any():
                    yield missing.astype(np.uint64)
            else:
                yield _text_codes(series).view(np.uint64)

    def _equal_rows(self, frame: pd.DataFrame) -> Pairs:
        """Links from the first of each set of equal rows to the others. Rows get a polynomial hash
        of their words (arithmetic wraps); only rows sharing a hash are compared word by word, so a
        collision costs a comparison, never a false link."""
        hashes = np.zeros(len(frame), dtype=np.uint64)
        for words in self._row_words(frame):
            hashes *= _MULTIPLIER
            hashes += words
        rows = _shared_hashes(hashes)
        first = rows[_first_equal(np.column_stack(list(self._row_words(frame.iloc[rows]))))]
        return first[first != rows], rows[first != rows]

    # --- (b) feature vectors within the cosine distance ---------------------------------------

    def _feature_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        columns = []
        for name in self.schema.features:
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            infinite = np.flatnonzero(np.isinf(values))
            if len(infinite):
                raise DatasetError(
                    f"feature {name!r} is infinite at frame row {int(infinite[0])}; a version's records are "
                    "validated finite — pass the records as the version stores them",
                    column=name,
                )
            columns.append(values)
        x = np.empty((len(frame), len(columns)))
        # A block of rows at a time: writing whole columns would stride through all of x per feature.
        for start in range(0, len(x), _ROWS_PER_PASS):
            for j, values in enumerate(columns):
                x[start : start + _ROWS_PER_PASS, j] = values[start : start + _ROWS_PER_PASS]
        return x

    def _link_vectors(self, frame: pd.DataFrame, links: list[Pairs]) -> tuple[str, dict[str, Any], int]:
        x = self._feature_matrix(frame)
        if not x.shape[1]:
            return "none", {}, 0
        norms = np.empty(len(x))
        for start in range(0, len(x), _ROWS_PER_PASS):
            norms[start : start + _ROWS_PER_PASS] = np.linalg.norm(x[start : start + _ROWS_PER_PASS], axis=1)
        usable = ~np.isnan(norms)  # a null feature makes the norm NaN
        zero = np.flatnonzero(usable & (norms == 0))
        if len(zero) > 1:
            links.append((np.full(len(zero) - 1, zero[0]), zero[1:]))
        rows = np.flatnonzero(usable & (norms > 0))
        if not len(rows):
            return "none", {}, 0
        unit = x if len(rows) == len(x) else x[rows]
        del x
        unit /= norms[rows, None]
        unit += 0.0  # -0.0 becomes 0.0, so that equal vectors have equal bits
        # Identical unit vectors are linked to the first of them here, without a comparison: a
        # linear hash of each row's bits, then a word-by-word comparison of rows sharing a hash.
        words = unit.view(np.uint64)
        shared = _shared_hashes(words @ (np.arange(1, 2 * words.shape[1], 2, dtype=np.uint64) * _MULTIPLIER))
        first = shared[_first_equal(words[shared])]
        links.append((rows[first[first != shared]], rows[shared[first != shared]]))
        keep = np.ones(len(unit), dtype=bool)
        keep[shared[first != shared]] = False
        distinct = np.flatnonzero(keep)
        u = unit if len(distinct) == len(unit) else unit[distinct]
        del unit
        found = _Links(len(u))
        parameters: dict[str, Any] = {}
        cutoffs = 0
        if len(u) <= self.exhaustive_below:
            method = "exhaustive"
            self._exhaustive(u, found)
        elif u.shape[1] <= 2:
            method = "angle"
            self._by_angle(u, found)
        else:
            method = "lsh"
            parameters, cutoffs = self._lsh(u, found)
        a, b = found.pairs()
        links.append((rows[distinct[a]], rows[distinct[b]]))
        return method, parameters, cutoffs

    def _close(self, u: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        difference = np.take(u, a, axis=0) - np.take(u, b, axis=0)
        return 0.5 * np.einsum("ij,ij->i", difference, difference) <= self.cosine_distance

    def _exhaustive(self, u: np.ndarray, found: _Links) -> None:
        slack = self.cosine_distance + 1e-9  # the dot product only preselects; _close decides
        for start in range(0, len(u), _BLOCK):
            gram = u[start : start + _BLOCK] @ u[start:].T
            a, b = np.nonzero(1.0 - gram <= slack)
            a, b = a + start, b + start
            keep = b > a
            a, b = a[keep], b[keep]
            close = self._close(u, a, b)
            found.add(a[close], b[close])

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

    def _by_angle(self, u: np.ndarray, found: _Links) -> None:
        """Exact for one or two features: on a circle, linked vectors are linked through neighbours."""
        plane = np.column_stack([u, np.zeros((len(u), 2 - u.shape[1]))]) if u.shape[1] < 2 else u
        order = np.argsort(np.arctan2(plane[:, 1], plane[:, 0]), kind="stable")
        a, b = order, np.roll(order, -1)
        close = self._close(u, a, b)
        found.add(a[close], b[close])

    def _lsh(self, u: np.ndarray, found: _Links) -> tuple[dict[str, Any], int]:
        m, dims = u.shape
        bits, bands, miss = self.lsh_parameters(m, dims)
        rng = np.random.default_rng(self.seed)
        draws = [
            (rng.standard_normal((dims, bits)), np.asarray(rng.standard_normal(dims))) for _ in range(bands)
        ]
        # Two unit vectors within the threshold are within this distance along any unit direction.
        reach = math.sqrt(2.0 * self.cosine_distance) * (1 + 1e-9) + 1e-6

        def band(planes: np.ndarray, direction: np.ndarray, roots: np.ndarray | None) -> tuple[Any, ...]:
            members, axis = _shared_buckets(u, planes, direction / np.linalg.norm(direction), reach)
            return self._window_pairs(u, members, axis, reach, roots)

        # Bands are independent and numpy leaves the GIL in its loops, so two run at once. Results
        # are taken in band order; the joined pairs a band skips (``roots``) never change groups.
        cutoffs, workers = 0, max(1, min(_BAND_THREADS, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            running: deque[Future[tuple[Any, ...]]] = deque()
            for i in range(bands + workers - 1):
                if i < bands:
                    running.append(pool.submit(band, *draws[i], found.roots()))
                if len(running) == workers or i >= bands:
                    a, b, band_cutoffs = running.popleft().result()
                    found.add(a, b)
                    cutoffs += band_cutoffs
        return {"bits": bits, "bands": bands, "window": self.window, "miss_probability": miss}, cutoffs

    def _window_pairs(
        self, u: np.ndarray, members: np.ndarray, axis: np.ndarray, reach: float, roots: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Checks each vector against its k-th follower along the axis for k = 1..window while within
        reach; returns links (pairs joining the same vectors) and the vectors cut off by the window.

        A vector's followers within reach are contiguous and each is within reach of the one before,
        so vectors with neither neighbour within reach are dropped without changing anyone's
        followers; the rest are gathered in axis order, where k-th followers lie close. Links of
        neighbours (k = 1) join runs of consecutive vectors; a further pair is checked only if its
        ends lie in runs not yet joined (here or in ``roots``): crowded vectors cost about one check.
        """
        limit = axis + reach
        near = axis[1:] <= limit[:-1]
        keep = np.flatnonzero(np.r_[near, False] | np.r_[False, near])
        if not len(keep):
            return keep, keep, 0
        members, axis, limit = members[keep], axis[keep], limit[keep]
        del keep, near
        ordered = np.take(u, members, axis=0)
        near = axis[1:] <= limit[:-1]
        joined = near & self._close_to_follower(ordered, None, 1)
        run = np.r_[0, np.cumsum(~joined)]  # positions joined to the next one share a run
        runs, label, joins = _Components(int(run[-1]) + 1), run, list[Pairs]()
        # A vector is cut off when its (window + 1)-th follower is within reach.
        cutoffs = int(np.count_nonzero(axis[self.window + 1 :] <= limit[: -self.window - 1]))
        # From k = 2 on, active vectors have their first k − 1 followers within reach; one whose
        # window ends in its own run is joined to all of them already.
        active = np.flatnonzero(near[:-1])
        active = active[run[np.minimum(active + self.window, len(run) - 1)] != run[active]]
        for k in range(2, self.window + 1):
            active = active[axis[active + k] <= limit[active]]
            check = active[label[active] != label[active + k]]
            if roots is not None:
                check = check[roots[members[check]] != roots[members[check + k]]]
            close = check[self._close_to_follower(ordered, check, k)]
            joins.append((run[close], run[close + k]))
            if sum(len(a) for a, _ in joins) > max(_FEW_LINKS, len(run)) // 64:
                label = self._relabel(runs, joins, run)  # stale labels cost checks, never links
            active = active[active + k + 1 < len(members)]
            if not len(active):
                break
        first = np.r_[0, np.flatnonzero(~joined) + 1][self._relabel(runs, joins, run)]
        linked = np.flatnonzero(first != np.arange(len(members)))
        return members[first[linked]], members[linked], cutoffs

    def _close_to_follower(self, ordered: np.ndarray, positions: np.ndarray | None, k: int) -> np.ndarray:
        """``_close`` of each of ``positions`` (default: all) and the k-th row after it: gathered in
        batches when few are asked for, else by one pass over all rows in order."""
        if positions is not None and 4 * len(positions) <= len(ordered):
            close = np.empty(len(positions), dtype=bool)
            for start in range(0, len(positions), _PAIRS_PER_BATCH):
                batch = positions[start : start + _PAIRS_PER_BATCH]
                close[start : start + len(batch)] = self._close(ordered, batch, batch + k)
            return close
        close = np.empty(max(len(ordered) - k, 0), dtype=bool)
        for start in range(0, len(close), _ROWS_PER_PASS):
            stop = min(start + _ROWS_PER_PASS, len(close))
            difference = ordered[start:stop] - ordered[start + k : stop + k]
            close[start:stop] = 0.5 * np.einsum("ij,ij->i", difference, difference) <= self.cosine_distance
        return close if positions is None else close[positions]

    @staticmethod
    def _relabel(runs: _Components, joins: list[Pairs], run: np.ndarray) -> np.ndarray:
        """Links the pending joins of runs (emptying the list); each position's label, the smallest
        run joined to its own."""
        runs.link(*_concat(joins))
        joins.clear()
        return runs.roots()[run]
