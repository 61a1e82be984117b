"""The vectorised near-duplicate search against plain, loop-by-loop statements of its definition.

The finder hashes rows and unit vectors, sorts only shared buckets, skips vectors whose window
lies in one run of linked neighbours, and runs bands on threads. None of that may change a
group or a window cut-off, so each shortcut is checked against a reference written straight from
the module docstring, including with hashes forced to collide and links forced into the
union-find.
"""

from __future__ import annotations

import math
import unicodedata
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.datasets import Column, Schema
from databright.datasets import near_duplicates as nd
from databright.datasets.near_duplicates import NearDuplicateFinder


def _ids(n: int) -> list[str]:
    return [f"r{i:05d}" for i in range(n)]


def _as_indices(groups: tuple[tuple[str, ...], ...]) -> set[frozenset[int]]:
    return {frozenset(int(r[1:]) for r in g) for g in groups}


def _components(n: int, pairs: list[tuple[int, int]]) -> set[frozenset[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[int, set[int]] = defaultdict(set)
    for i in range(n):
        members[find(i)].add(i)
    return {frozenset(g) for g in members.values() if len(g) > 1}


def _reference_text(value: object) -> str:
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", str(value)).casefold())
    return " ".join(text.split())


def _reference_equal_rows(frame: pd.DataFrame, schema: Schema, decimals: int) -> set[frozenset[int]]:
    """(a) by the definition: normalise every value in Python, group rows by the tuple."""
    keys = []
    for row in range(len(frame)):
        key: list[object] = []
        for col in schema.columns:
            value = frame[col.name].iloc[row]
            if pd.isna(value):
                key.append(None)
            elif col.dtype == "float":
                key.append(float(np.round(float(value), decimals)) + 0.0)
            elif col.dtype == "int":
                key.append(int(value))
            else:
                key.append(_reference_text(value))
        keys.append(tuple(key))
    first: dict[tuple[object, ...], int] = {}
    return _components(len(keys), [(first.setdefault(k, i), i) for i, k in enumerate(keys)])


def _reference_lsh(finder: NearDuplicateFinder, x: np.ndarray) -> tuple[set[frozenset[int]], int]:
    """(b) by the LSH rule of the docstring, bucket by bucket and vector by vector, for vectors that
    are all distinct and non-zero (then the finder's vector i is row i)."""
    unit = x / np.linalg.norm(x, axis=1)[:, None] + 0.0
    m, dims = unit.shape
    bits, bands, _ = finder.lsh_parameters(m, dims)
    rng = np.random.default_rng(finder.seed)
    reach = math.sqrt(2.0 * finder.cosine_distance) * (1 + 1e-9) + 1e-6
    links, cutoffs = [], 0
    for _ in range(bands):
        planes, direction = rng.standard_normal((dims, bits)), rng.standard_normal(dims)
        sides = unit @ planes > 0
        projection = unit @ (direction / np.linalg.norm(direction))
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in range(m):
            buckets[sides[i].tobytes()].append(i)
        for bucket in buckets.values():
            bucket.sort(key=lambda i: (projection[i], i))
            for place, i in enumerate(bucket):
                following = [j for j in bucket[place + 1 :] if projection[j] <= projection[i] + reach]
                cutoffs += len(following) > finder.window
                for j in following[: finder.window]:
                    difference = unit[i] - unit[j]
                    if 0.5 * float(difference @ difference) <= finder.cosine_distance:
                        links.append((i, j))
    return _components(m, links), cutoffs


def _vectors_frame(x: np.ndarray) -> tuple[Schema, pd.DataFrame]:
    names = [f"f{i}" for i in range(x.shape[1])]
    schema = Schema((*(Column(n, "float", True) for n in names), Column("y", "int", True)), tuple(names), "y")
    frame = pd.DataFrame({n: pd.array(x[:, i], dtype="Float64") for i, n in enumerate(names)})
    frame["y"] = pd.array(np.arange(len(x)), dtype="Int64")
    return schema, frame


def _clusters(seed: int, centres: int, size: int, dims: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dims))
    return np.vstack([c + rng.normal(scale=spread, size=(size, dims)) for c in middle])


# --- (a) normalised rows ----------------------------------------------------------------------


@given(st.lists(st.text(alphabet=st.characters(codec="ascii"), max_size=12), max_size=30))
def test_ascii_text_is_normalised_exactly_as_the_definition(values: list[str]) -> None:
    array = np.asarray(values, dtype=object)
    assert nd._normal_texts(array).tolist() == [_reference_text(v) for v in values]


@given(st.lists(st.text(max_size=12), max_size=30))
def test_any_text_is_normalised_exactly_as_the_definition(values: list[str]) -> None:
    array = np.asarray(values, dtype=object)
    assert nd._normal_texts(array).tolist() == [_reference_text(v) for v in values]


def test_every_ascii_character_splits_and_folds_as_python_does() -> None:
    values = [f"a{chr(c)}{chr(c)}B{chr(c)}" for c in range(128)] + [chr(c) for c in range(128)]
    assert nd._normal_texts(np.asarray(values, dtype=object)).tolist() == [_reference_text(v) for v in values]


_TEXTS = ["a", "A", " a ", "a\tb", "A B", "Straße", "STRASSE", "é", "e\u0301", "x\u00a0y", "x y", "", "\x1c"]
_FLOATS = [0.0, -0.0, 0.1234564, 0.1234561, 1.5, None]


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([None, -1, 0, 1, 2**62]),
            st.sampled_from(_FLOATS),
            st.sampled_from([None, *_TEXTS]),
        ),
        max_size=40,
    ),
    storage=st.sampled_from(["python", "pyarrow", "object"]),
    collide=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_equal_rows_match_the_definition_even_when_every_hash_collides(
    rows: list[tuple[int | None, float | None, str | None]], storage: str, collide: bool
) -> None:
    schema = Schema(
        (Column("n", "int", True), Column("x", "float", True), Column("s", "string", True)), (), "n"
    )
    texts = [r[2] for r in rows]
    frame = pd.DataFrame(
        {
            "n": pd.array([r[0] for r in rows], dtype="Int64"),
            "x": pd.array([r[1] for r in rows], dtype="Float64"),
            "s": pd.Series(texts, dtype=object)
            if storage == "object"
            else pd.array(texts, dtype=f"string[{storage}]"),
        }
    )
    expected = _reference_equal_rows(frame, schema, decimals=6)
    with pytest.MonkeyPatch.context() as patch:
        if collide:  # every row hashes to its last word: the word-by-word comparison decides alone
            patch.setattr(nd, "_MULTIPLIER", np.uint64(0))
        result = NearDuplicateFinder(schema, decimals=6).find(_ids(len(rows)), frame)
    assert _as_indices(result.groups) == expected
    assert all(list(g) == sorted(g) for g in result.groups)
    assert [g[0] for g in result.groups] == sorted(g[0] for g in result.groups)


def test_rows_apart_in_the_last_bit_stay_apart_when_hashes_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    big = 2.0**60  # whole, so rounding keeps it; its neighbour differs in the lowest bit only
    schema = Schema((Column("x", "float", True), Column("y", "int", True)), (), "y")
    frame = pd.DataFrame(
        {
            "x": pd.array([big, np.nextafter(big, np.inf), big, 3.0, 4.0], dtype="Float64"),
            "y": pd.array([2**62 + 1] * 5, dtype="Int64"),
        }
    )
    monkeypatch.setattr(nd, "_MULTIPLIER", np.uint64(0))
    groups = NearDuplicateFinder(schema, decimals=0).groups(_ids(5), frame)
    assert groups == (("r00000", "r00002"),)


def test_text_of_other_dtypes_is_normalised_through_str(mixed_schema: Schema) -> None:
    frame = pd.DataFrame(
        {
            "n": pd.array([None] * 4, dtype="Int64"),
            "x": pd.array([None] * 4, dtype="Float64"),
            "s": pd.Series([1, "1", 1.0, " 1.0 "], dtype=object),
        }
    )
    groups = NearDuplicateFinder(mixed_schema).groups(_ids(4), frame)
    assert groups == (("r00000", "r00001"), ("r00002", "r00003"))


# --- (b) feature vectors by LSH ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "threads", "few_links"),
    [(64, 1, 65_536), (3, 2, 65_536), (1, 1, 1), (2, 2, 1)],
    ids=["default", "small-window-threads", "window-1-union-find", "window-2-union-find-threads"],
)
def test_lsh_links_and_cutoffs_match_the_rule_vector_by_vector(
    window: int, threads: int, few_links: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tight clusters crowd buckets (cut-offs, runs of linked neighbours); loose ones link some pairs.
    x = np.vstack([_clusters(1, 12, 25, 4, 0.004), _clusters(2, 30, 6, 4, 0.03)])
    monkeypatch.setattr(nd, "_BAND_THREADS", threads)
    monkeypatch.setattr(nd, "_FEW_LINKS", few_links)
    schema, frame = _vectors_frame(x)
    finder = NearDuplicateFinder(schema, exhaustive_below=0, window=window)
    result = finder.find(_ids(len(x)), frame)
    expected, cutoffs = _reference_lsh(finder, x)
    assert result.method == "lsh"
    assert _as_indices(result.groups) == expected
    assert result.window_cutoffs == cutoffs
    assert (cutoffs > 0) == (window < 64)


def test_lsh_results_do_not_depend_on_threads_or_the_union_find(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _clusters(5, 200, 10, 6, 0.01)
    schema, frame = _vectors_frame(x)
    finder = NearDuplicateFinder(schema, exhaustive_below=0, window=4)
    results = []
    for threads, few_links in [(1, 65_536), (2, 65_536), (2, 1), (1, 1)]:
        monkeypatch.setattr(nd, "_BAND_THREADS", threads)
        monkeypatch.setattr(nd, "_FEW_LINKS", few_links)
        results.append(finder.find(_ids(len(x)), frame))
    assert all(r == results[0] for r in results) and results[0].window_cutoffs > 0


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "all-hashes-collide"])
def test_identical_and_scaled_vectors_are_linked_without_hash_trust(
    collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2000, 8))  # in 8 dimensions random points are almost never this close
    x[100], x[1500], x[1900] = x[7], x[7] * 4.0, -x[7]  # same, same direction, opposite
    x[40] = x[41] = 0.0  # zero vectors: linked to each other only
    unit = x / np.maximum(np.linalg.norm(x, axis=1), 1e-300)[:, None]
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, 1.0)
    assert {(int(a), int(b)) for a, b in np.argwhere(distance <= 0.01) if a < b} == {
        (7, 100),
        (7, 1500),
        (100, 1500),
    }  # the independent check: no other pair comes anywhere near the threshold
    if collide:
        monkeypatch.setattr(nd, "_MULTIPLIER", np.uint64(0))
    schema, frame = _vectors_frame(x)
    groups = _as_indices(NearDuplicateFinder(schema, exhaustive_below=0).groups(_ids(2000), frame))
    assert groups == {frozenset({7, 100, 1500}), frozenset({40, 41})}


def test_shared_buckets_sort_by_bucket_projection_then_index(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = np.array([5, 3, 5, 9, 3, 5, 7, 5], dtype=np.int64)
    projection = np.array([0.2, -0.1, 0.2, 0.0, 0.4, -0.3, 0.1, 0.2])  # ties within bucket 5
    monkeypatch.setattr(nd, "_signatures", lambda u, planes, direction: (keys, projection))
    for bits in (8, 63):  # a packed sort, and the stable argsort when key and index do not fit
        members, axis = nd._shared_buckets(np.zeros((8, 3)), np.zeros((3, bits)), np.zeros(3), 0.05)
        assert members.tolist() == [1, 4, 5, 0, 2, 7]  # buckets 3 and 5; 9 and 7 stand alone
        assert np.all(np.diff(axis) >= 0) and axis[2] - axis[1] > 2.0


def test_signatures_pack_the_sides_of_every_hyperplane() -> None:
    rng = np.random.default_rng(4)
    u = rng.normal(size=(5000, 7))
    for bits in (8, 13, 40, 63):
        planes, direction = rng.normal(size=(7, bits)), rng.normal(size=7)
        keys, projection = nd._signatures(u, planes, direction)
        weights = 2 ** np.arange(bits, dtype=object)
        expected = [int(np.dot((row > 0).astype(object), weights)) for row in u @ planes]
        assert keys.tolist() == expected
        assert np.allclose(projection, u @ direction, rtol=0, atol=1e-12)
