"""AllocationPolicy: the repository's policy file, validation, the payment split, amount text."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from databright.errors import ConfigError
from databright.settlement import AllocationPolicy, format_amount


def test_repository_policy_loads_with_the_documented_shares(policy: AllocationPolicy):
    assert (policy.data_share_bps, policy.compute_share_bps, policy.fee_bps) == (7000, 2000, 1000)
    assert policy.currency == "DBX"
    assert policy.minor_units_per_unit == 1_000_000
    assert policy.decimals == 6
    assert len(policy.digest) == 64


def test_digest_is_stable_and_changes_with_any_field(policy: AllocationPolicy):
    same = AllocationPolicy.from_mapping(policy.to_dict())
    assert same.digest == policy.digest
    bumped = AllocationPolicy.from_mapping({**policy.to_dict(), "version": policy.version + 1})
    shifted = AllocationPolicy.from_mapping({**policy.to_dict(), "data_share_bps": 6900, "fee_bps": 1100})
    assert len({policy.digest, bumped.digest, shifted.digest}) == 3


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"fee_bps": 1001}, "= 10001, but the shares must sum to 10000"),
        ({"data_share_bps": -1, "fee_bps": 3001}, "non-negative int"),
        ({"compute_share_bps": 2000.0}, "non-negative int"),
        ({"minor_units_per_unit": 1500}, "power of ten"),
        ({"name": ""}, "empty"),
    ],
)
def test_invalid_policies_raise_config_error(policy: AllocationPolicy, changes, needle):
    with pytest.raises(ConfigError, match=needle):
        AllocationPolicy.from_mapping({**policy.to_dict(), **changes})


def test_policy_file_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        AllocationPolicy.load(tmp_path / "missing.yaml")
    extra = tmp_path / "extra.yaml"
    extra.write_text("name: x\nversion: 1\nsurprise: 3\n")
    with pytest.raises(ConfigError, match=r"unknown allocation policy keys \['surprise'\]"):
        AllocationPolicy.load(extra)
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("data_share_bps: 7000\n")
    with pytest.raises(ConfigError, match="lacks"):
        AllocationPolicy.load(unnamed)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        AllocationPolicy.load(listed)


@given(st.integers(min_value=0, max_value=10**24))
def test_split_payment_is_exact_and_each_part_within_one_unit(payment: int):
    policy = AllocationPolicy(name="p", version=1)
    parts = policy.split_payment(payment)
    assert sum(parts.values()) == payment
    for role, bps in (("data", 7000), ("compute", 2000), ("fee", 1000)):
        share = Fraction(payment * bps, 10_000)
        assert math.floor(share) <= parts[role] <= math.ceil(share)


def test_amounts_print_from_ints_with_six_decimals(policy: AllocationPolicy):
    assert policy.format_amount(1_234_567) == "1.234567 DBX"
    assert policy.format_amount(5) == "0.000005 DBX"
    assert policy.format_amount(-1) == "-0.000001 DBX"
    assert policy.format_amount(10**30 + 7) == "1000000000000000000000000.000007 DBX"
    assert format_amount(250, "EUR", 100) == "2.50 EUR"
    assert format_amount(3, "PTS", 1) == "3 PTS"
    with pytest.raises(TypeError, match="not an int"):
        policy.format_amount(1.5)  # type: ignore[arg-type]
