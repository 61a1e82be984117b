"""Allocation policy rules: usage floor, clipping, tie-break, minimum payout and carry-over; v1 pinned.

Every amount is checked against its exact rational share (``fractions.Fraction``), never a float,
with payments and weights up to 10**30 minor units.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from settlement_testkit import hexdigest, make_receipt

from databright.config import Settings
from databright.errors import ConfigError, LedgerError, SettlementError
from databright.ledger.accounts import (
    AccountKind,
    account_for,
    carried_balances,
    carried_holder,
    carry_over_account,
)
from databright.settlement.allocation import (
    Allocation,
    SettledJob,
    allocate_job,
    allocation_root,
    apply_minimum_payout,
    carry_over_moves,
    payout_totals,
    settled_job,
    sort_allocations,
)
from databright.settlement.policy import AllocationPolicy
from databright.settlement.rounding import largest_remainder

#: Digest of policies/allocation.yaml (v1) before the v2 keys existed; it must never move.
V1_DIGEST = "3e6d2aac7a41e01a2091bb53598699f1d9fc4f766fbb88b2f1bef4971410e3bb"
#: Allocation root of ``V1_JOBS`` under v1, computed before the usage floor existed.
V1_ROOT = "2a821215b048bb4a49bf98a2685c17b156b85194222027f9517dcfd865839fd1"
V1_JOBS = (
    ("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1), "mallory": (5, 5, -0.2)}, 1_000_000),
    ("j-2", {"a": (1, 1, 1.0), "b": (1, 1, 1.0), "c": (1, 1, 1.0)}, 100),
    ("j-3", {"x": (7, 7, -1.0), "y": (3, 3, 0.0)}, 333_333),
    ("j-4", {"p": (1, 2, 1e-12), "q": (2, 1, 0.25)}, 10**30 + 7),
)
HUGE = 10**30


def job(job_id: str, owners: Mapping[str, tuple[int, int, float]], payment: int) -> SettledJob:
    receipt = make_receipt(job_id, owners)
    return settled_job(
        job_id=job_id,
        trainer_id="acme",
        provider_id=receipt.provider_id,
        payment=payment,
        receipt=receipt,
        receipt_digest=hexdigest("r" + job_id),
        values={o: u.value for o, u in receipt.owners.items()},
        valuation_receipt_digest=hexdigest("v" + job_id),
    )


def v2(policy: AllocationPolicy, **keys: int) -> AllocationPolicy:
    return AllocationPolicy.from_mapping({**policy.to_dict(), "version": 2, **keys})


def within_one(part: int, whole: int, weight: int, weights_sum: int) -> bool:
    share = Fraction(whole * weight, weights_sum)
    return math.floor(share) <= part <= math.ceil(share)


def data_rows(rows: list[Allocation], basis: str) -> dict[str, Allocation]:
    return {a.holder: a for a in rows if a.role == "data" and a.basis == basis}


# --- v1 stays exactly as it was ---------------------------------------------------------------------


def test_v1_policy_file_keeps_its_digest_and_its_keys(policy: AllocationPolicy):
    assert policy.digest == V1_DIGEST
    assert (policy.usage_floor_bps, policy.minimum_payout) == (0, 0)
    assert "usage_floor_bps" not in policy.to_dict() and "minimum_payout" not in policy.to_dict()
    # Saying the defaults out loud means the same policy, so the same digest.
    explicit = AllocationPolicy.from_mapping({**policy.to_dict(), "usage_floor_bps": 0, "minimum_payout": 0})
    assert explicit.digest == V1_DIGEST
    floor = AllocationPolicy.from_mapping({**policy.to_dict(), "usage_floor_bps": 1})
    minimum = AllocationPolicy.from_mapping({**policy.to_dict(), "minimum_payout": 1})
    assert len({V1_DIGEST, floor.digest, minimum.digest}) == 3
    assert AllocationPolicy.from_mapping(floor.to_dict()).digest == floor.digest


def test_v1_allocations_and_root_are_unchanged(policy: AllocationPolicy):
    for candidate in (policy, AllocationPolicy.from_mapping({**policy.to_dict(), "usage_floor_bps": 0})):
        rows = [a for j in V1_JOBS for a in allocate_job(candidate, "2026-11", job(*j))]
        assert allocation_root(rows) == V1_ROOT
        assert all(a.basis != "usage_floor" for a in rows)
    rows = allocate_job(policy, "2026-11", job(*V1_JOBS[3]))
    # v1 pays the noise-valued owner p nothing: the case the usage floor exists for.
    assert data_rows(rows, "value")["contributor:p"].amount == 0


def test_v2_example_file_loads_with_the_documented_keys(settings: Settings, policy: AllocationPolicy):
    example = AllocationPolicy.load(settings.allocation_policy_path.with_name("allocation.v2.example.yaml"))
    assert (example.name, example.version) == ("databright-default", 2)
    assert (example.data_share_bps, example.compute_share_bps, example.fee_bps) == (7000, 2000, 1000)
    assert (example.usage_floor_bps, example.minimum_payout) == (1000, 100_000)
    assert example.format_amount(example.minimum_payout) == "0.100000 DBX"
    assert example.digest != policy.digest
    assert AllocationPolicy.from_mapping(example.to_dict()).digest == example.digest


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"usage_floor_bps": 10_001}, "more than 10000"),
        ({"usage_floor_bps": -1}, "non-negative int"),
        ({"usage_floor_bps": 0.5}, "non-negative int"),
        ({"usage_floor_bps": True}, "non-negative int"),
        ({"minimum_payout": -5}, "non-negative int"),
        ({"minimum_payout": "100"}, "non-negative int"),
        ({"minimum_payout": 1.5}, "non-negative int"),
    ],
)
def test_invalid_v2_keys_raise_config_error(policy: AllocationPolicy, changes, needle):
    with pytest.raises(ConfigError, match=needle):
        AllocationPolicy.from_mapping({**policy.to_dict(), **changes})


# --- largest remainder: exact, within one unit, ties by holder id -----------------------------------

holder_ids = st.text(alphabet="abcABC019._-", min_size=1, max_size=5).map(lambda s: f"contributor:{s}")
tie_prone = st.one_of(st.sampled_from([0, 1, 2, 3, 7, HUGE]), st.integers(min_value=0, max_value=HUGE))
huge_weights = st.dictionaries(holder_ids, tie_prone, min_size=1, max_size=10).filter(
    lambda w: sum(w.values()) > 0
)
huge_totals = st.one_of(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=HUGE))


@given(huge_totals, huge_weights, st.randoms(use_true_random=False))
def test_largest_remainder_with_huge_values_is_exact_and_order_free(total, weights, rnd: random.Random):
    parts = largest_remainder(total, weights)
    assert sum(parts.values()) == total
    whole = sum(weights.values())
    assert all(within_one(parts[k], total, w, whole) for k, w in weights.items())
    items = list(weights.items())
    rnd.shuffle(items)
    assert largest_remainder(total, dict(items)) == parts


@given(huge_totals, huge_weights)
def test_equal_remainders_go_to_the_smaller_holder_id_first(total, weights):
    parts = largest_remainder(total, weights)
    whole = sum(weights.values())
    rounded_up = {k for k, w in weights.items() if parts[k] * whole > total * w}
    for a in weights:
        for b in weights:
            same_remainder = total * weights[a] % whole == total * weights[b] % whole
            if a < b and same_remainder and b in rounded_up:
                assert a in rounded_up


def test_tie_break_closed_forms_by_code_point_order():
    three = {"contributor:c": 1, "contributor:a": 1, "contributor:b": 1}
    assert largest_remainder(2, three) == {"contributor:c": 0, "contributor:a": 1, "contributor:b": 1}
    # Upper case sorts before lower case: the rule is str order, not a locale's.
    assert largest_remainder(1, {"contributor:a": 1, "contributor:B": 1}) == {
        "contributor:a": 0,
        "contributor:B": 1,
    }
    # A larger remainder beats a smaller id: 5 * 2/3 = 3.33 and 5 * 1/3 = 1.67.
    assert largest_remainder(5, {"contributor:a": 2, "contributor:z": 1}) == {
        "contributor:a": 3,
        "contributor:z": 2,
    }


# --- usage floor and clipping ----------------------------------------------------------------------


def test_usage_floor_closed_form_pays_used_data_with_negative_value(policy: AllocationPolicy):
    floored = v2(policy, usage_floor_bps=1000)
    rows = allocate_job(
        floored,
        "2026-11",
        job("j-1", {"alice": (30, 3, 0.3), "bob": (10, 1, -0.5), "carol": (0, 0, 0.1)}, 10**6),
    )
    # data 700 000: floor 70 000 by rows 30:10:0, value 630 000 by clipped values 0.3:0:0.1.
    floor, value = data_rows(rows, "usage_floor"), data_rows(rows, "value")
    assert {h: a.amount for h, a in floor.items()} == {
        "contributor:alice": 52_500,
        "contributor:bob": 17_500,
        "contributor:carol": 0,
    }
    assert {h: a.weight for h, a in floor.items()} == {
        "contributor:alice": 30,
        "contributor:bob": 10,
        "contributor:carol": 0,
    }
    assert {h: a.amount for h, a in value.items()} == {
        "contributor:alice": 472_500,
        "contributor:bob": 0,
        "contributor:carol": 157_500,
    }
    assert value["contributor:bob"].weight == 0  # clipped once, by quantize_weights
    assert sum(a.amount for a in rows) == 10**6
    assert [a.basis for a in sort_allocations(rows) if a.holder == "contributor:bob"] == [
        "usage_floor",
        "value",
    ]


def test_usage_floor_pays_the_noise_valued_owner_v1_paid_nothing(policy: AllocationPolicy):
    floored = v2(policy, usage_floor_bps=500)
    rows = allocate_job(floored, "2026-11", job(*V1_JOBS[3]))
    floor = floored.split_data(floored.split_payment(10**30 + 7)["data"])["usage_floor"]
    # p used 1 of the 3 rows: a third of the floor, about 1.17e28 minor units, instead of nothing.
    paid = data_rows(rows, "usage_floor")["contributor:p"].amount
    assert paid > 0 and within_one(paid, floor, 1, 3)
    assert data_rows(rows, "value")["contributor:p"].amount == 0


def test_all_values_clipped_to_zero_fall_back_to_rows_used_under_the_floor(policy: AllocationPolicy):
    rows = allocate_job(
        v2(policy, usage_floor_bps=2000), "2026-11", job("j", {"a": (3, 3, -1.0), "b": (1, 1, 0.0)}, 1000)
    )
    # data 700: floor 140 -> 105 / 35, the value part 560 by rows too -> 420 / 140.
    assert {h: a.amount for h, a in data_rows(rows, "usage_floor").items()} == {
        "contributor:a": 105,
        "contributor:b": 35,
    }
    assert {h: a.amount for h, a in data_rows(rows, "rows_used").items()} == {
        "contributor:a": 420,
        "contributor:b": 140,
    }


def test_no_rows_used_moves_the_floor_into_the_value_part(policy: AllocationPolicy):
    rows = allocate_job(
        v2(policy, usage_floor_bps=3000), "2026-11", job("j", {"a": (0, 0, 0.3), "b": (0, 0, 0.1)}, 1000)
    )
    assert {a.amount for a in data_rows(rows, "usage_floor").values()} == {0}
    assert {h: a.amount for h, a in data_rows(rows, "value").items()} == {
        "contributor:a": 525,
        "contributor:b": 175,
    }
    with pytest.raises(SettlementError, match="zero value and zero rows used"):
        allocate_job(v2(policy, usage_floor_bps=3000), "2026-11", job("j", {"a": (0, 0, -1.0)}, 1000))


owner_ids = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
owner_values = st.one_of(
    st.just(0.0),
    st.sampled_from([1e-12, -1e-12, 1e12, -1e12, 0.5]),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
)
owners_st = st.dictionaries(
    owner_ids,
    st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(0, 10), owner_values),
    min_size=1,
    max_size=8,
).filter(lambda o: any(r > 0 or v >= 1e-9 for r, _, v in o.values()))


@given(
    owners_st,
    st.one_of(st.integers(min_value=0, max_value=10**4), st.integers(min_value=0, max_value=HUGE)),
    st.one_of(st.sampled_from([0, 1, 5000, 9999, 10_000]), st.integers(min_value=0, max_value=10_000)),
)
def test_usage_floor_is_exact_and_each_part_within_one_unit(owners, payment, bps):
    policy = AllocationPolicy(name="p", version=2, usage_floor_bps=bps)
    settled = job("j", owners, payment)
    rows = allocate_job(policy, "2026-11", settled)
    split = policy.split_payment(payment)
    assert sum(a.amount for a in rows) == payment
    for role, part in split.items():
        assert sum(a.amount for a in rows if a.role == role) == part
    data = policy.split_data(split["data"])
    assert within_one(data["usage_floor"], split["data"], bps, 10_000)
    lines = {f"contributor:{o.owner}": o for o in settled.owners}
    rows_sum = sum(o.rows_used for o in settled.owners)
    floor = data_rows(rows, "usage_floor")
    if bps == 0:
        assert floor == {}
    elif rows_sum == 0:
        assert {a.amount for a in floor.values()} == {0}
    else:
        assert sum(a.amount for a in floor.values()) == data["usage_floor"]
        for holder, a in floor.items():
            assert a.weight == lines[holder].rows_used
            assert within_one(a.amount, data["usage_floor"], a.weight, rows_sum)
            # Used data earns at least the floor of its rows' share of the floor, value or not.
            assert a.amount >= data["usage_floor"] * a.weight // rows_sum
    value_part = split["data"] - sum(a.amount for a in floor.values())
    weights_sum = sum(o.weight for o in settled.owners)
    basis = "value" if weights_sum else "rows_used"
    paid = data_rows(rows, basis)
    assert set(paid) == set(lines)
    for holder, a in paid.items():
        expected_weight = lines[holder].weight if weights_sum else lines[holder].rows_used
        assert a.weight == expected_weight
        assert within_one(a.amount, value_part, a.weight, weights_sum or rows_sum)


@given(owners_st, st.integers(min_value=0, max_value=HUGE), st.integers(min_value=0, max_value=10_000))
def test_allocation_does_not_depend_on_owner_order(owners, payment, bps):
    policy = AllocationPolicy(name="p", version=2, usage_floor_bps=bps)
    forward = allocate_job(policy, "2026-11", job("j", owners, payment))
    backward = allocate_job(policy, "2026-11", job("j", dict(reversed(list(owners.items()))), payment))
    assert sort_allocations(forward) == sort_allocations(backward)
    assert allocation_root(forward) == allocation_root(backward)


# --- minimum payout and carry-over -----------------------------------------------------------------

amounts_st = st.one_of(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=HUGE))
paid_holders = st.sampled_from(
    ["contributor:a", "contributor:b", "contributor:c", "contributor:d", "provider:p1", "provider:p2"]
)
totals_st = st.dictionaries(paid_holders, amounts_st, max_size=6)
minimum_st = st.one_of(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=HUGE))


def test_minimum_payout_closed_form():
    totals = {"contributor:a": 50, "contributor:b": 150, "provider:p": 99, "contributor:z": 0}
    carried = {"contributor:a": 60, "contributor:c": 30}
    payable, carried_out = apply_minimum_payout(totals, carried, 100)
    assert payable == {"contributor:a": 110, "contributor:b": 150}
    assert carried_out == {"contributor:c": 30, "provider:p": 99}
    assert apply_minimum_payout(totals, carried, 0) == (
        {"contributor:a": 110, "contributor:b": 150, "contributor:c": 30, "provider:p": 99},
        {},
    )


@given(totals_st, totals_st, minimum_st, st.randoms(use_true_random=False))
def test_minimum_payout_conserves_every_holders_due(totals, carried, minimum, rnd: random.Random):
    payable, carried_out = apply_minimum_payout(totals, carried, minimum)
    assert sum(payable.values()) + sum(carried_out.values()) == sum(totals.values()) + sum(carried.values())
    assert not payable.keys() & carried_out.keys()
    for holder in totals.keys() | carried.keys():
        due = totals.get(holder, 0) + carried.get(holder, 0)
        assert payable.get(holder, 0) + carried_out.get(holder, 0) == due
    assert all(v >= minimum and v > 0 for v in payable.values())
    assert all(0 < v < minimum for v in carried_out.values())
    if minimum == 0:
        assert carried_out == {}
    shuffled = [list(totals.items()), list(carried.items())]
    for items in shuffled:
        rnd.shuffle(items)
    again = apply_minimum_payout(dict(shuffled[0]), dict(shuffled[1]), minimum)
    assert again == (payable, carried_out)
    assert [list(d) for d in again] == [sorted(payable), sorted(carried_out)]


@given(st.lists(totals_st, min_size=1, max_size=8), st.integers(min_value=0, max_value=400))
def test_carry_over_across_periods_loses_nothing_and_pays_at_the_first_period_due(periods, minimum):
    carried: dict[str, int] = {}
    paid: dict[str, int] = {}
    since_paid: dict[str, int] = {}  # independent reference: earnings since the holder was last paid
    for totals in periods:
        payable, carried_next = apply_minimum_payout(totals, carried, minimum)
        assert apply_minimum_payout(totals, carried, minimum) == (payable, carried_next)
        for holder, amount in totals.items():
            since_paid[holder] = since_paid.get(holder, 0) + amount
        for holder, amount in payable.items():
            assert amount == since_paid.pop(holder) >= minimum
            paid[holder] = paid.get(holder, 0) + amount
        assert carried_next == {h: v for h, v in sorted(since_paid.items()) if v}
        carried = carried_next
    earned = sum(sum(t.values()) for t in periods)
    assert sum(paid.values()) + sum(carried.values()) == earned


@pytest.mark.parametrize(
    ("totals", "carried", "minimum", "needle"),
    [
        ({"contributor:a": 1.5}, {}, 10, "never floats"),
        ({"contributor:a": -1}, {}, 10, ">= 0"),
        ({}, {"contributor:a": True}, 10, "carried-in"),
        ({1: 5}, {}, 10, "not an account id"),
        ({}, {}, -1, "minimum payout -1"),
        ({}, {}, 2.0, "minimum payout 2.0"),
        ({}, {}, False, "minimum payout False"),
    ],
)
def test_minimum_payout_refuses_bad_amounts(totals, carried, minimum, needle):
    with pytest.raises(SettlementError, match=needle):
        apply_minimum_payout(totals, carried, minimum)


def test_payout_totals_sum_data_and_compute_rows_but_never_the_fee(policy: AllocationPolicy):
    rows = [
        a for j in V1_JOBS[:3] for a in allocate_job(v2(policy, usage_floor_bps=1000), "2026-11", job(*j))
    ]
    totals = payout_totals(rows)
    assert "exchange_fee" not in totals and all(v > 0 for v in totals.values())
    assert list(totals) == sorted(totals)
    fee = sum(a.amount for a in rows if a.role == "fee")
    assert sum(totals.values()) + fee == 1_000_000 + 100 + 333_333
    assert totals["contributor:bob"] == sum(a.amount for a in rows if a.holder == "contributor:bob")


def test_carry_over_moves_closed_form():
    totals = {"contributor:a": 50, "contributor:b": 150, "provider:p": 99}
    carried = {"contributor:a": 60, "contributor:c": 30}
    moves = carry_over_moves("2026-12", totals, carried, 100)
    assert [(m.kind, m.debit_account, m.credit_account, m.amount) for m in moves] == [
        ("carry_release", "carry_over:contributor.a", "contributor:a", 60),
        ("carry_over", "provider:p", "carry_over:provider.p", 99),
    ]
    assert moves[0].key == {"kind": "carry_release", "period": "2026-12", "holder": "contributor:a"}
    assert carry_over_moves("2026-12", totals, {}, 0) == []
    with pytest.raises(SettlementError, match="period ''"):
        carry_over_moves("", totals, carried, 100)


@given(totals_st, totals_st, minimum_st)
def test_carry_over_moves_leave_the_ledger_as_apply_minimum_payout_says(totals, carried, minimum):
    """Replay the moves on a balance model of the flagged accounts: the per-job payouts have just
    credited each holder their period total, and each carry-over account holds what was carried in."""
    balances = {h: v for h, v in totals.items() if v}
    balances.update({carry_over_account(h): v for h, v in carried.items() if v})
    before = sum(balances.values())
    moves = carry_over_moves("2026-12", totals, carried, minimum)
    for move in moves:
        assert account_for(move.debit_account).debits_must_not_exceed_credits
        assert balances.get(move.debit_account, 0) >= move.amount > 0  # never overdraws
        balances[move.debit_account] -= move.amount
        balances[move.credit_account] = balances.get(move.credit_account, 0) + move.amount
    payable, carried_out = apply_minimum_payout(totals, carried, minimum)
    assert sum(balances.values()) == before
    assert carried_balances(balances) == carried_out
    assert {h: v for h, v in balances.items() if v and not h.startswith("carry_over:")} == payable
    assert len({str(sorted(m.key.items())) for m in moves}) == len(moves)
    assert carry_over_moves("2026-12", totals, carried, minimum) == moves


# --- carry-over accounts ---------------------------------------------------------------------------


def test_carry_over_accounts_name_their_holder_and_are_flagged():
    account_id = carry_over_account("contributor:alice.smith")
    assert account_id == "carry_over:contributor.alice.smith"
    assert carried_holder(account_id) == "contributor:alice.smith"
    account = account_for(account_id)
    assert account.kind is AccountKind.CARRY_OVER and account.debits_must_not_exceed_credits
    assert carried_holder(carry_over_account("provider:p-1")) == "provider:p-1"
    assert carried_balances({account_id: 7, "contributor:alice.smith": 3, "carry_over:provider.p": 0}) == {
        "contributor:alice.smith": 7
    }


@pytest.mark.parametrize("holder", ["escrow", "trainer:acme", "exchange_fee", "external:deposits"])
def test_only_contributors_and_providers_are_carried(holder):
    with pytest.raises(LedgerError, match="only contributor and provider payouts"):
        carry_over_account(holder)


@pytest.mark.parametrize(
    "account_id", ["carry_over:escrow.x", "carry_over:contributor", "carry_over:contributor.", "carry_over:x"]
)
def test_malformed_carry_over_ids_are_refused(account_id):
    with pytest.raises(LedgerError, match=r"carry-over account|cannot name"):
        account_for(account_id)


def test_negative_carry_over_balance_is_reported():
    with pytest.raises(LedgerError, match="negative"):
        carried_balances({"carry_over:contributor.a": -1})
