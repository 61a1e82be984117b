"""Replication robustness: an owner who adds k copies never receives more than with one copy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.datasets.contracts import Column, Schema
from databright.datasets.near_duplicates import NearDuplicateFinder
from databright.errors import ValuationError
from databright.valuation.enumeration import exact_shapley
from databright.valuation.knn_shapley import KNNShapley
from databright.valuation.owners import RecordGroups, owner_values
from databright.valuation.result import ValuationResult
from databright.valuation.robust import ReplicationRobust

OWNERS = ("ann", "bob", "cat")


def knn_utility(rows: tuple[int, ...], x, y, x_test, y_test, k: int) -> float:
    """U(S): mean over test points of (1/k)·#matching labels among the min(k, |S|) nearest of S."""
    if not rows:
        return 0.0
    total = 0.0
    for xv, yv in zip(x_test, y_test, strict=True):
        ranked = sorted(rows, key=lambda i: (float(np.sum((x[i] - xv) ** 2)), i))
        total += sum(1 for i in ranked[:k] if y[i] == yv) / k
    return total / len(x_test)


def test_plain_shapley_pays_copies_and_robust_does_not() -> None:
    # ann's record sits next to the one validation point and has its label. With K = 3, near-copies
    # take the other nearest places: plain KNN-Shapley pays ann 1/3, 2/3, 3/4, 4/5 for 1..4 copies.
    x = np.array([[0.1], [1.0], [2.0], [3.0]])
    y = np.array([1, 1, 0, 0])
    x_val, y_val = np.array([[0.0]]), np.array([1])
    owners = ["ann", "bob", "cat", "cat"]
    base = KNNShapley(k=3)
    single = ReplicationRobust(base, RecordGroups(["a0", "b0", "c0", "c1"], owners)).valuate(
        x, y, x_val, y_val
    )
    assert single.per_owner(owners)["ann"] == pytest.approx(1 / 3, abs=1e-15)
    for copies in (1, 2, 3):
        xs = np.vstack([x, x[:1] + 1e-9 * np.arange(1, copies + 1)[:, None]])
        ys = np.r_[y, [1] * copies]
        ids = ["a0", "b0", "c0", "c1", *(f"a0-copy{i}" for i in range(copies))]
        all_owners = [*owners, *["ann"] * copies]
        plain = math.fsum(base.values(xs, ys, x_val, y_val)[[0, *range(4, 4 + copies)]].tolist())
        assert plain == pytest.approx((copies + 1) / (copies + 2), abs=1e-15)
        groups = RecordGroups(ids, all_owners, [["a0", *ids[4:]]])
        robust = ReplicationRobust(base, groups).valuate(xs, ys, x_val, y_val)
        assert robust.per_owner(all_owners) == single.per_owner(owners)
        assert owner_values(robust, groups).values == single.per_owner(owners)


@st.composite
def copied_datasets(draw: st.DrawFn) -> dict:
    """A small dataset with near-duplicate groups, and the same with one owner's copies added."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(2, 9))
    classes = draw(st.integers(1, 3))
    n_test = draw(st.integers(1, 4))
    # Integer grids make ties, which the index tie-break must settle the same way with copies.
    grid = draw(st.booleans())
    x = rng.integers(0, 3, size=(n, 2)).astype(float) if grid else rng.normal(size=(n, 2))
    x_test = rng.integers(0, 3, size=(n_test, 2)).astype(float) if grid else rng.normal(size=(n_test, 2))
    data = {
        "x": x,
        "y": rng.integers(0, classes, size=n),
        "x_test": x_test,
        "y_test": rng.integers(0, classes, size=n_test),
        "owners": [OWNERS[i] for i in rng.integers(0, draw(st.integers(1, 3)), size=n)],
        "ids": [f"r{i}" for i in range(n)],
        "k": draw(st.integers(1, 5)),
    }
    # Base groups (possibly across owners): rows sharing a label in {0, 1}; -1 is no group.
    label = rng.integers(-1, 2, size=n)
    data["groups"] = [[f"r{i}" for i in np.flatnonzero(label == g)] for g in (0, 1)]
    data["groups"] = [g for g in data["groups"] if len(g) >= 2]
    copier = data["owners"][draw(st.integers(0, n - 1))]
    theirs = [i for i in range(n) if data["owners"][i] == copier]
    copied = draw(st.lists(st.sampled_from(theirs), min_size=1, max_size=len(theirs), unique=True))
    counts = [draw(st.integers(1, 3)) for _ in copied]
    exact = draw(st.booleans())
    data.update(copier=copier, copied=copied, counts=counts, exact=exact, rng_seed=seed)
    return data


def extend_with_copies(data: dict) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[list[str]]]:
    """Rows with the copies inserted at random places (base rows keep their order) and the groups
    the manifest would record: each copy joins its original's group, after its members."""
    rng = np.random.default_rng(data["rng_seed"] + 1)
    rows: list[tuple[np.ndarray, int, str, str]] = [
        (data["x"][i], int(data["y"][i]), data["ids"][i], data["owners"][i]) for i in range(len(data["ids"]))
    ]
    groups = [list(g) for g in data["groups"]]
    group_of = {rid: g for g in groups for rid in g}
    for original, count in zip(data["copied"], data["counts"], strict=True):
        rid = data["ids"][original]
        if rid not in group_of:
            group_of[rid] = [rid]
            groups.append(group_of[rid])
        for c in range(count):
            features = data["x"][original].copy()
            if not data["exact"]:
                features = features * (1 + 1e-7 * (c + 1)) + 1e-9  # a near-copy, not the same row
            copy_id = f"{rid}-copy{c}"
            group_of[rid].append(copy_id)
            at = int(rng.integers(0, len(rows) + 1))
            rows.insert(at, (features, int(data["y"][original]), copy_id, data["copier"]))
    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    return x, y, [r[2] for r in rows], [r[3] for r in rows], groups


@settings(max_examples=120, deadline=None)
@given(data=copied_datasets(), split=st.sampled_from(["owners", "first"]))
def test_copies_never_pay_more_than_one_copy(data: dict, split: str) -> None:
    base = KNNShapley(k=data["k"])
    once = ReplicationRobust(base, RecordGroups(data["ids"], data["owners"], data["groups"], split=split))
    single = once.valuate(data["x"], data["y"], data["x_test"], data["y_test"])
    x, y, ids, owners, groups = extend_with_copies(data)
    many = ReplicationRobust(base, RecordGroups(ids, owners, groups, split=split))
    copied = many.valuate(x, y, data["x_test"], data["y_test"])
    before, after = single.per_owner(data["owners"]), copied.per_owner(owners)
    assert after[data["copier"]] <= before[data["copier"]]
    # In fact nothing moves, for anyone, bit for bit: the players and their game are unchanged.
    assert after == before
    assert owner_values(copied, many.groups).values == before
    # Each original keeps its value when it was alone; copies share it when they join it.
    for original in data["copied"]:
        rid = data["ids"][original]
        members = next(g for g in groups if rid in g)
        value = math.fsum(copied.values[[ids.index(m) for m in members]].tolist())
        single_members = next((g for g in data["groups"] if rid in g), [rid])
        assert value == math.fsum(single.values[[data["ids"].index(m) for m in single_members]].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_value_is_the_shapley_value_of_the_group_as_one_player(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    x, y = rng.normal(size=(n, 2)), rng.integers(0, 2, size=n)
    x_test, y_test = rng.normal(size=(3, 2)), rng.integers(0, 2, size=3)
    ids = [f"r{i}" for i in range(n)]
    owners = [OWNERS[i % 3] for i in range(n)]
    groups = RecordGroups(ids, owners, [["r5", "r2", "r6"], ["r1", "r7"]])
    values = ReplicationRobust(KNNShapley(k=3), groups).values(x, y, x_test, y_test)
    # The game of the players (representatives r0, r1, r3, r4, r5): exact Shapley by enumeration.
    reps = groups.representatives.tolist()
    assert reps == [0, 1, 3, 4, 5]
    expected = exact_shapley(
        len(reps), lambda s: knn_utility(tuple(reps[i] for i in s), x, y, x_test, y_test, 3)
    )
    for player, row in enumerate(reps):
        group = next((g for g in groups.groups if g[0] == row), (row,))
        assert math.fsum(values[list(group)].tolist()) == pytest.approx(expected[player], abs=1e-12)


def test_copies_found_by_the_ingest_finder_earn_nothing_extra(rng: np.random.Generator) -> None:
    # End to end with the grouping the manifest records: near-copies scaled by 1 + 1e-6.
    n = 30
    x, y = rng.normal(size=(n, 3)), rng.integers(0, 2, size=n)
    x_test, y_test = rng.normal(size=(10, 3)), rng.integers(0, 2, size=10)
    owners = [OWNERS[i % 3] for i in range(n)]
    ids = [f"r{i:02d}" for i in range(n)]
    schema = Schema((*(Column(c, "float") for c in "abc"), Column("y", "int")), ("a", "b", "c"), "y")

    def manifest_groups(x_rows: np.ndarray, y_rows: np.ndarray, row_ids: list[str]) -> list[list[str]]:
        frame = pd.DataFrame({"a": x_rows[:, 0], "b": x_rows[:, 1], "c": x_rows[:, 2], "y": y_rows})
        return [list(g) for g in NearDuplicateFinder(schema).groups(row_ids, frame)]

    base = KNNShapley(k=5)
    single = ReplicationRobust(base, RecordGroups(ids, owners, manifest_groups(x, y, ids)))
    before = single.valuate(x, y, x_test, y_test).per_owner(owners)
    top = int(np.argmax(base.values(x, y, x_test, y_test)))  # copy the most valuable record, 4 times
    copies = x[top] * (1 + 1e-6 * np.arange(1, 5))[:, None]
    xs, ys = np.vstack([x, copies]), np.r_[y, [y[top]] * 4]
    more_ids, more_owners = [*ids, *(f"c{i}" for i in range(4))], [*owners, *[owners[top]] * 4]
    found = manifest_groups(xs, ys, more_ids)
    assert [ids[top], "c0", "c1", "c2", "c3"] in found
    after = ReplicationRobust(base, RecordGroups(more_ids, more_owners, found)).valuate(
        xs, ys, x_test, y_test
    )
    assert after.per_owner(more_owners) == before
    plain = base.values(xs, ys, x_test, y_test)
    plain_owner = math.fsum(plain[[i for i, o in enumerate(more_owners) if o == owners[top]]].tolist())
    assert plain_owner > before[owners[top]]  # what the copies would have gained without the rule


def test_no_groups_is_the_base_method_bit_for_bit(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(50, 3)), rng.integers(0, 3, size=50)
    x_test, y_test = rng.normal(size=(7, 3)), rng.integers(0, 3, size=7)
    ids = [f"r{i}" for i in range(50)]
    robust = ReplicationRobust(KNNShapley(k=4), RecordGroups(ids, ["ann"] * 50))
    np.testing.assert_array_equal(
        robust.values(x, y, x_test, y_test), KNNShapley(k=4).values(x, y, x_test, y_test)
    )


def test_valuate_names_the_rule_and_the_players(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(6, 2)), rng.integers(0, 2, size=6)
    x_test, y_test = rng.normal(size=(2, 2)), rng.integers(0, 2, size=2)
    ids = [f"r{i}" for i in range(6)]
    owners = ["ann", "bob", "ann", "bob", "cat", "cat"]
    groups = RecordGroups(ids, owners, [["r0", "r1"]])
    robust = ReplicationRobust(KNNShapley(k=2), groups)
    result = robust.valuate(x, y, x_test, y_test, input_digests={"manifest": "ab"})
    assert isinstance(result, ValuationResult)
    assert result.method == "knn-shapley+replication-robust"
    assert result.params["k"] == 2 and result.params["replication"]["split"] == "owners"
    assert result.input_digests["record_groups"] == groups.digest and result.input_digests["manifest"] == "ab"
    assert result.record_ids == tuple(ids)
    again = ReplicationRobust(KNNShapley(k=2), RecordGroups(ids, owners, [["r0", "r1"]])).valuate(
        x, y, x_test, y_test, input_digests={"manifest": "ab"}
    )
    assert again.digest == result.digest
    first = ReplicationRobust(KNNShapley(k=2), RecordGroups(ids, owners, [["r0", "r1"]], split="first"))
    assert first.valuate(x, y, x_test, y_test, input_digests={"manifest": "ab"}).digest != result.digest
    assert "ReplicationRobust(KNNShapley(k=2" in repr(robust)


def test_bad_inputs_are_refused() -> None:
    groups = RecordGroups(["a", "b", "c"], ["ann", "bob", "cat"])
    with pytest.raises(ValuationError, match="no values"):
        ReplicationRobust(object(), groups)
    with pytest.raises(ValuationError, match="groups is a list"):
        ReplicationRobust(KNNShapley(k=1), [["a", "b"]])  # type: ignore[arg-type]
    robust = ReplicationRobust(KNNShapley(k=1), groups)
    with pytest.raises(ValuationError, match="x_train has 2 rows but the groups name 3"):
        robust.values(np.zeros((2, 1)), np.zeros(3), np.zeros((1, 1)), np.zeros(1))
    with pytest.raises(ValuationError, match="y_train has a scalar"):
        robust.values(np.zeros((3, 1)), 0, np.zeros((1, 1)), np.zeros(1))
    with pytest.raises(ValuationError, match="2-D"):  # the base method's own checks still apply
        robust.values(np.zeros(3), np.zeros(3), np.zeros((1, 1)), np.zeros(1))


def test_valuate_checks_record_ids_and_digest_names() -> None:
    groups = RecordGroups(["a", "b", "c"], ["ann", "bob", "cat"])
    robust = ReplicationRobust(KNNShapley(k=1), groups)
    args = (np.eye(3), np.array([0, 1, 0]), np.ones((1, 3)), np.array([1]))
    assert robust.valuate(*args, record_ids=["a", "b", "c"]).record_ids == ("a", "b", "c")
    with pytest.raises(ValuationError, match="record_ids differ"):
        robust.valuate(*args, record_ids=["c", "b", "a"])
    with pytest.raises(ValuationError, match="'record_groups'"):
        robust.valuate(*args, input_digests={"record_groups": "ff"})
