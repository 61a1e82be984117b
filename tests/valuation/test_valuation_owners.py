"""Per-owner values: exact division, near-duplicate groups sharing one value, owner sums."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.datasets.contracts import Column, Schema
from databright.datasets.near_duplicates import NearDuplicateFinder
from databright.errors import DatabrightError, ValuationError
from databright.valuation.owners import OwnerValues, RecordGroups, owner_values, split_exactly
from databright.valuation.quantize import quantize_weights
from databright.valuation.result import ValuationResult

finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(total=finite, parts=st.integers(1, 1000))
def test_split_exactly_sums_exactly_and_is_equal_to_one_unit(total: float, parts: int) -> None:
    shares = split_exactly(total, parts)
    assert len(shares) == parts
    assert sum((Fraction(s) for s in shares), Fraction(0)) == Fraction(total)
    assert math.fsum(shares) == total
    assert max(shares) - min(shares) <= math.ulp(total / parts)
    # Larger parts first, and each part is the exact share rounded up or down by under one unit.
    assert all(abs(a) >= abs(b) for a, b in itertools.pairwise(shares))
    for share in shares:
        assert abs(Fraction(share) - Fraction(total) / parts) < Fraction(math.ulp(total / parts))


def test_split_exactly_small_cases() -> None:
    assert split_exactly(1.0, 4) == [0.25] * 4
    thirds = split_exactly(1.0, 3)
    assert thirds[1:] == [1 / 3, 1 / 3] and thirds[0] == math.nextafter(1 / 3, 1.0)
    assert split_exactly(-0.0, 2) == [-0.0, -0.0]
    assert split_exactly(5e-324, 2) == [5e-324, 0.0]  # the smallest float cannot be halved
    assert split_exactly(-3.0, 1) == [-3.0]


@pytest.mark.parametrize(("total", "parts"), [(1.0, 0), (1.0, -2), (1.0, 2.0), (1.0, True), (math.inf, 2)])
def test_split_exactly_refuses_bad_input(total: float, parts) -> None:
    with pytest.raises(ValuationError):
        split_exactly(total, parts)


IDS = ("r0", "r1", "r2", "r3", "r4", "r5")
OWNERS = ("ann", "bob", "ann", "cat", "bob", "ann")


def test_groups_index_rows_and_choose_the_first_listed_member() -> None:
    # The manifest lists r5 before r2 (r5 registered first); r9 was not valued (ignored).
    groups = RecordGroups(IDS, OWNERS, [["r5", "r1", "r2"], ["r3", "r9"], ["r8", "r7"]])
    assert groups.groups == ((5, 1, 2),)
    assert groups.ignored_members == 3
    np.testing.assert_array_equal(groups.representatives, [0, 3, 4, 5])
    assert len(groups) == 6 and "1 groups holding 3" in repr(groups)


def test_owners_rule_shares_equally_per_owner_then_per_member() -> None:
    groups = RecordGroups(IDS, OWNERS, [["r5", "r1", "r2"]])
    # Group value 0.9: ann (r5, r2) and bob (r1) get 0.45 each; ann's part halves again.
    spread = groups.spread([0.1, 0.3, 0.4, 0.9])
    assert spread.tolist() == [0.1, 0.45, 0.225, 0.3, 0.4, 0.225]
    assert math.fsum(spread[[5, 1, 2]].tolist()) == 0.9


def test_first_rule_values() -> None:
    groups = RecordGroups(IDS, OWNERS, [["r1", "r5", "r4", "r2"]], split="first")
    # Players: r0, the group (its first listed member r1 stands for it), r3.
    np.testing.assert_array_equal(groups.representatives, [0, 1, 3])
    spread = groups.spread([0.1, 0.6, 0.3])
    # bob registered r1 first: bob's members r1 and r4 share 0.6; ann's r5 and r2 get nothing.
    assert spread.tolist() == [0.1, 0.3, 0.0, 0.3, 0.3, 0.0]


def test_owners_from_a_mapping_and_from_a_manifest() -> None:
    mapping = dict(zip(IDS, OWNERS, strict=True))
    manifest = {"format": "databright.dataset-manifest/v2", "near_duplicate_groups": [["r0", "r3"]]}
    groups = RecordGroups.from_manifest(manifest, IDS, mapping)
    assert groups.owners == OWNERS and groups.groups == ((0, 3),)
    assert RecordGroups.from_manifest({}, IDS, OWNERS).groups == ()


def test_owner_values_pool_each_group_into_one_value() -> None:
    groups = RecordGroups(IDS, OWNERS, [["r0", "r3"], ["r1", "r4"]])
    values = np.array([0.5, 0.2, 0.1, 0.1, 0.4, -0.3])
    owned = owner_values(values, groups)
    # Group r0(ann)+r3(cat) = 0.6 → 0.3 each; group r1+r4 (both bob) = 0.6 stays bob's.
    assert owned.values == pytest.approx({"ann": 0.3 + 0.1 - 0.3, "bob": 0.6, "cat": 0.3}, abs=1e-15)
    assert owned.records == {"ann": 3, "bob": 2, "cat": 1}
    assert owned.split == "owners" and owned.valuation_digest is None
    # Pooling moves value inside groups only: the exact total is unchanged.
    assert owned.total() == pytest.approx(math.fsum(values.tolist()), abs=1e-15)
    assert owned.weights() == quantize_weights(owned.values)
    assert owned.weights()["ann"] == 100_000_000


def test_pooling_is_idempotent_on_shared_values(rng: np.random.Generator) -> None:
    ids = tuple(f"r{i}" for i in range(40))
    owners = tuple(str(o) for o in rng.choice(["ann", "bob", "cat"], size=40))
    members = rng.permutation(40)[:24].tolist()
    groups = RecordGroups(ids, owners, [[ids[m] for m in members[i : i + 4]] for i in range(0, 24, 4)])
    player_values = rng.normal(size=len(groups.representatives)) / 7
    spread = groups.spread(player_values)
    np.testing.assert_array_equal(groups.pool(spread), spread)
    # Each group's members add up, exactly, to the player's value.
    player_of_row = dict(zip(groups.representatives.tolist(), player_values.tolist(), strict=True))
    for group in groups.groups:
        value = player_of_row[group[0]]
        assert math.fsum(spread[list(group)].tolist()) == value


def test_owner_values_from_a_result_in_another_order() -> None:
    groups = RecordGroups(IDS, OWNERS, [["r2", "r3"]])
    order = [3, 0, 5, 1, 4, 2]
    result = ValuationResult(
        method="knn-shapley",
        params={"k": 1},
        seed=None,
        input_digests={},
        values=np.array([0.4, 0.1, 0.0, 0.2, 0.3, 0.5])[order],
        record_ids=tuple(IDS[i] for i in order),
    )
    owned = owner_values(result, groups)
    assert owned.valuation_digest == result.digest
    assert owned.values == owner_values(np.array([0.4, 0.1, 0.0, 0.2, 0.3, 0.5]), groups).values
    frame = owned.to_dataframe()
    assert list(frame.columns) == ["owner", "records", "value", "weight"]
    assert list(frame["owner"]) == ["ann", "bob", "cat"]
    assert isinstance(owned, OwnerValues) and "3 owners" in repr(owned)
    assert len(owned.digest) == 64
    other = ValuationResult(
        method="knn-shapley", params={}, seed=None, input_digests={}, values=[0.0] * 6,
        record_ids=("r0", "r1", "r2", "r3", "r4", "zz"),
    )  # fmt: skip
    with pytest.raises(ValuationError, match="different records"):
        owner_values(other, groups)


def test_groups_found_by_the_ingest_finder_share_one_value() -> None:
    # Near-copies (scaled features: cosine distance 0) are grouped by the finder the manifest uses.
    schema = Schema((Column("a", "float"), Column("b", "float"), Column("y", "int")), ("a", "b"), "y")
    frame = pd.DataFrame({"a": [1.0, 5.0, 2.0, -1.0], "b": [2.0, 0.0, 4.0, 3.0], "y": [1, 0, 1, 0]})
    ids = ["r0", "r1", "r2", "r3"]
    found = NearDuplicateFinder(schema).groups(ids, frame)
    assert found == (("r0", "r2"),)
    groups = RecordGroups(ids, ["ann", "bob", "cat", "bob"], found)
    owned = owner_values([0.25, 0.5, 0.75, 0.0], groups)
    assert owned.values == {"ann": 0.5, "bob": 0.5, "cat": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"record_ids": "r0"}, "one string"),
        ({"record_ids": ("r0", "r0", "r2", "r3", "r4", "r5")}, "'r0' repeats"),
        ({"record_ids": ("r0", "", "r2", "r3", "r4", "r5")}, "record_ids\\[1\\]"),
        ({"owners": ("ann",)}, "1 owners for 6 records"),
        ({"owners": {"r0": "ann"}}, "no owner for record 'r1'"),
        ({"owners": ("ann", "bob", "", "cat", "bob", "ann")}, "non-empty string"),
        ({"near_duplicate_groups": [["r0"]]}, "two or more"),
        ({"near_duplicate_groups": "r0r1"}, "one string"),
        ({"near_duplicate_groups": [["r0", "r1"], ["r1", "r2"]]}, "merge them"),
        ({"near_duplicate_groups": [["r0", 3]]}, "not a record id"),
        ({"split": "members"}, "split='members'"),
    ],
)
def test_bad_groups_are_refused(kwargs, fragment: str) -> None:
    arguments = {"record_ids": IDS, "owners": OWNERS, "near_duplicate_groups": (), **kwargs}
    split = arguments.pop("split", "owners")
    with pytest.raises(ValuationError, match=fragment) as info:
        RecordGroups(**arguments, split=split)
    assert isinstance(info.value, DatabrightError)


def test_bad_values_are_refused() -> None:
    groups = RecordGroups(IDS, OWNERS)
    with pytest.raises(ValuationError, match="shape \\(5,\\)"):
        owner_values(np.zeros(5), groups)
    with pytest.raises(ValuationError, match="'r2' is nan"):
        owner_values([0.0, 0.0, math.nan, 0.0, 0.0, 0.0], groups)
    with pytest.raises(ValuationError, match="player values for 6 players"):
        groups.spread(np.zeros(3))
    with pytest.raises(ValuationError, match="not a list"):
        RecordGroups.from_manifest({"near_duplicate_groups": "x"}, IDS, OWNERS)
