"""Near-duplicate groups: normalised rows, feature vectors by cosine distance, recall at scale."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.datasets import Column, Schema
from databright.datasets.near_duplicates import NearDuplicateFinder
from databright.errors import ConfigError, DatasetError


def _ids(n: int) -> list[str]:
    return [f"r{i:05d}" for i in range(n)]


def _vectors_frame(x: np.ndarray) -> tuple[Schema, pd.DataFrame]:
    names = [f"f{i}" for i in range(x.shape[1])]
    schema = Schema((*(Column(n, "float", True) for n in names), Column("y", "int", True)), tuple(names), "y")
    frame = pd.DataFrame({n: pd.array(x[:, i], dtype="Float64") for i, n in enumerate(names)})
    frame["y"] = pd.array(np.arange(len(x)), dtype="Int64")  # distinct labels: rows never equal
    return schema, frame


def _at_distance(rng: np.random.Generator, v: np.ndarray, distance: float) -> np.ndarray:
    """A vector whose cosine distance to ``v`` is exactly ``distance`` (up to rounding), scaled randomly."""
    u = v / np.linalg.norm(v)
    r = rng.normal(size=len(v))
    r -= r.dot(u) * u
    r /= np.linalg.norm(r)
    theta = math.acos(1.0 - distance)
    return (math.cos(theta) * u + math.sin(theta) * r) * rng.uniform(0.5, 20.0)


def _brute_force_groups(x: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """Connected components of the cosine-distance graph, by all pairs: the independent reference."""
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms == 0, 1.0, norms)[:, None]
    diff = unit[:, None, :] - unit[None, :, :]
    linked = 0.5 * np.einsum("ijk,ijk->ij", diff, diff) <= threshold
    zero = norms == 0
    linked[zero, :] = False
    linked[:, zero] = False
    linked[np.ix_(zero, zero)] = True
    seen, groups = set(), set()
    for start in range(len(x)):
        if start in seen:
            continue
        stack, component = [start], set()
        while stack:
            i = stack.pop()
            if i in component:
                continue
            component.add(i)
            stack.extend(np.flatnonzero(linked[i]).tolist())
        seen |= component
        if len(component) > 1:
            groups.add(frozenset(component))
    return groups


def _as_indices(groups: tuple[tuple[str, ...], ...]) -> set[frozenset[int]]:
    return {frozenset(int(r[1:]) for r in g) for g in groups}


# --- (a) the same row after normalisation ----------------------------------------------------


def test_rows_equal_after_normalisation_are_grouped(mixed_schema: Schema) -> None:
    frame = pd.DataFrame(
        {
            "n": pd.array([1, 1, 1, 2, None, None, 1, 1], dtype="Int64"),
            "x": pd.array([0.1234564, 0.1234561, -0.0, 0.0, None, None, 0.5, 0.5], dtype="Float64"),
            "s": [
                "Crème  Brûlée",  # NFC
                "CRE\u0300ME brûle\u0301e ",  # decomposed accents, other case, other spaces
                None,
                None,
                "Straße",
                "STRASSE",  # case folding turns ß into ss
                "a\tb",
                "a b",
            ],
        }
    )
    finder = NearDuplicateFinder(mixed_schema, cosine_distance=0.0, decimals=6)
    result = finder.find(_ids(8), frame)
    # Rows 3 and 4 differ in n, yet their feature vectors (n, x) = (1, -0.0) and (2, 0.0) point the
    # same way: grouped by (b). Rows 5 and 6 have no vector (null n): grouped by their text alone.
    assert result.groups == (
        ("r00000", "r00001"),
        ("r00002", "r00003"),
        ("r00004", "r00005"),
        ("r00006", "r00007"),
    )
    assert (result.group_count, result.records_in_groups, result.largest_group) == (4, 8, 2)
    coarse = NearDuplicateFinder(mixed_schema, cosine_distance=0.0, decimals=2).find(_ids(8), frame)
    assert coarse.groups[0] == ("r00000", "r00001")
    fine = NearDuplicateFinder(mixed_schema, cosine_distance=0.0, decimals=7).find(_ids(8), frame)
    assert ("r00000", "r00001") not in fine.groups  # 0.1234564 and 0.1234561 differ at 7 places


# --- (b) feature vectors within the cosine distance ------------------------------------------


def test_vectors_within_the_distance_are_grouped_and_chains_join() -> None:
    rng = np.random.default_rng(7)
    base = np.array([3.0, -1.0, 2.0])
    near = _at_distance(rng, base, 0.0009)
    x = np.array(
        [
            base,
            near,  # 0.0009 from base: linked
            _at_distance(rng, base, 0.0011),  # 0.0011 from base: not linked to it ...
            2.5 * base,  # same direction, other length: distance 0
            [0.0, 0.0, 0.0],
            [-3.0, 1.0, -2.0],  # opposite: distance 2
            [0.0, 0.0, 0.0],  # zero vectors: grouped with each other only
            [1.0, 1.0, 1.0],
        ]
    )
    schema, frame = _vectors_frame(x)
    groups = NearDuplicateFinder(schema, cosine_distance=0.001).groups(_ids(8), frame)
    d_near_far = 0.5 * np.sum((x[1] / np.linalg.norm(x[1]) - x[2] / np.linalg.norm(x[2])) ** 2)
    expected = {frozenset({0, 1, 3}), frozenset({4, 6})}
    if d_near_far <= 0.001:  # ... but possibly to `near`: a chain puts it in the group
        expected = {frozenset({0, 1, 2, 3}), frozenset({4, 6})}
    assert _as_indices(groups) == expected == _brute_force_groups(x, 0.001)
    assert groups[0][0] == "r00000" and list(groups[0]) == sorted(groups[0])


def test_null_features_only_join_by_equal_rows(mixed_schema: Schema) -> None:
    frame = pd.DataFrame(
        {
            "n": pd.array([1, 1, 2, 2], dtype="Int64"),
            "x": pd.array([None, None, None, 4.0], dtype="Float64"),
            "s": ["a", "a", "b", "c"],
        }
    )
    groups = NearDuplicateFinder(mixed_schema).groups(_ids(4), frame)
    assert groups == (("r00000", "r00001"),)  # equal rows; row 3 has no vector to compare


@pytest.mark.parametrize("exhaustive_below", [100_000, 0], ids=["exhaustive", "lsh"])
def test_methods_agree_with_all_pairs_on_clustered_points(exhaustive_below: int) -> None:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(150, 5))
    x = np.vstack([rng.normal(size=(1500, 5))] + [c + rng.normal(scale=0.01, size=(4, 5)) for c in centres])
    schema, frame = _vectors_frame(x)
    finder = NearDuplicateFinder(schema, cosine_distance=0.0005, exhaustive_below=exhaustive_below)
    result = finder.find(_ids(len(x)), frame)
    assert result.method == ("exhaustive" if exhaustive_below else "lsh")
    assert _as_indices(result.groups) == _brute_force_groups(x, 0.0005)


def test_two_features_are_grouped_exactly_by_angle() -> None:
    rng = np.random.default_rng(5)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 3000))
    x = np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(0.1, 9, (3000, 1))
    schema, frame = _vectors_frame(x)
    result = NearDuplicateFinder(schema, cosine_distance=1e-6).find(_ids(3000), frame)
    assert result.method == "angle"
    assert _as_indices(result.groups) == _brute_force_groups(x, 1e-6)


@given(
    points=st.lists(
        st.tuples(*[st.integers(-3, 3)] * 3).map(lambda t: np.array(t, dtype=float)), min_size=2, max_size=25
    ),
    copies=st.lists(st.tuples(st.integers(0, 24), st.sampled_from([1e-7, 3.0, 0.0])), max_size=8),
)
@settings(max_examples=60, deadline=None)
def test_lsh_finds_the_all_pairs_components(
    points: list[np.ndarray], copies: list[tuple[int, float]]
) -> None:
    # Planted neighbours sit at 1e-7 (a hundredth of the threshold's 1e-5: missed with probability
    # far below 1e-18) or scaled copies; lattice points are otherwise at least ~0.003 apart.
    rng = np.random.default_rng(0)
    x = list(points)
    for index, distance in copies:
        source = x[index % len(x)]
        if not source.any():
            x.append(np.zeros(3))
        elif distance == 0.0:
            x.append(source * 2.0)
        elif distance == 3.0:
            x.append(-source)
        else:
            x.append(_at_distance(rng, source, distance))
    matrix = np.array(x)
    schema, frame = _vectors_frame(matrix)
    finder = NearDuplicateFinder(schema, cosine_distance=1e-5, exhaustive_below=0)
    assert _as_indices(finder.groups(_ids(len(x)), frame)) == _brute_force_groups(matrix, 1e-5)


def test_recall_of_planted_pairs_among_50k_random_points() -> None:
    rng = np.random.default_rng(2018)
    n, dims, threshold = 50_000, 8, 0.001
    x = rng.normal(0.0, 5.0, size=(n, dims))
    sources = rng.choice(n, 100, replace=False)
    targets = rng.choice(np.setdiff1d(np.arange(n), sources), 100, replace=False)
    for s, t in zip(sources, targets, strict=True):
        x[t] = _at_distance(rng, x[s], 1e-5)
    schema, frame = _vectors_frame(x)
    result = NearDuplicateFinder(schema, cosine_distance=threshold).find(_ids(n), frame)
    assert result.method == "lsh" and result.parameters["miss_probability"] < 1e-6
    assert result.window_cutoffs == 0
    group_of = {int(r[1:]): k for k, g in enumerate(result.groups) for r in g}
    assert all(
        s in group_of and group_of[s] == group_of.get(t) for s, t in zip(sources, targets, strict=True)
    )
    # Precision: every reported group is connected by exactly checked links.
    for group in _as_indices(result.groups):
        members = np.array(sorted(group))
        assert _brute_force_groups(x[members], threshold) == {frozenset(range(len(members)))}
    assert result.group_count >= 100 and result.to_dict()["group_count"] == result.group_count


def test_groups_are_ordered_by_record_order_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 8))  # in 8 dimensions random points are almost never this close
    x[2999], x[10], x[500] = x[7] * 3, x[7], _at_distance(rng, x[2], 1e-6)
    schema, frame = _vectors_frame(x)
    finder = NearDuplicateFinder(schema, exhaustive_below=0)
    ids = [f"id-{(i * 7919) % 3000:04d}" for i in range(3000)]  # ids in no sorted order
    result = finder.find(ids, frame)
    assert result.groups == ((ids[2], ids[500]), (ids[7], ids[10], ids[2999]))
    assert finder.find(ids, frame) == result
    summary = result.to_dict()
    assert summary["groups"] == [list(g) for g in result.groups]
    assert (summary["records"], summary["records_in_groups"], summary["method"]) == (3000, 5, "lsh")


def test_bad_input_is_refused(mixed_schema: Schema) -> None:
    frame = pd.DataFrame({"n": pd.array([1, 2], dtype="Int64"), "x": [0.5, 1.5], "s": ["a", "b"]})
    finder = NearDuplicateFinder(mixed_schema)
    with pytest.raises(DatasetError, match="3 record ids for 2 rows"):
        finder.find(["a", "b", "c"], frame)
    with pytest.raises(DatasetError, match="record id 'a' appears more than once"):
        finder.find(["a", "a"], frame)
    empty = finder.find([], frame.iloc[:0])
    assert (empty.groups, empty.records, empty.method) == ((), 0, "none")
    with pytest.raises(DatasetError, match=r"frame lacks schema columns \['s'\]"):
        finder.find(["a", "b"], frame.drop(columns=["s"]))
    with pytest.raises(DatasetError, match="feature 'x' is infinite at frame row 1"):
        finder.find(["a", "b"], frame.assign(x=[0.5, math.inf]))
    text = Schema((Column("s", "string"), Column("y", "int")), ("s",), "y")
    with pytest.raises(ConfigError, match=r"features \['s'\] are text"):
        NearDuplicateFinder(text)
    for kwargs, fragment in [
        ({"cosine_distance": 0.2}, "outside 0..0.05"),
        ({"cosine_distance": -1e-3}, "outside 0..0.05"),
        ({"decimals": 16}, "decimals must be an integer from 0 to 15"),
        ({"window": 0}, "window must be an integer"),
        ({"miss_probability": 0.9}, "miss_probability must be from"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            NearDuplicateFinder(mixed_schema, **kwargs)
