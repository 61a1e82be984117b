"""Per-job allocation: data by quantized value (or rows used), compute to the provider, the fee."""

from __future__ import annotations

import math

import pytest
from settlement_testkit import hexdigest, make_receipt

from databright.errors import SettlementError
from databright.settlement import AllocationPolicy, allocate_job, allocation_root
from databright.settlement.allocation import settled_job


def documented_weight(value: float) -> int:
    """The quantization rule as documented: clip below 0 to 0, floor(v * 1e9 + 0.5)."""
    return 0 if value <= 0 else math.floor(value * 1e9 + 0.5)


def job_for(owners, payment=1_000_000, **kw):
    receipt = make_receipt("j-1", owners, **kw)
    return settled_job(
        job_id="j-1",
        trainer_id="acme",
        provider_id=receipt.provider_id,
        payment=payment,
        receipt=receipt,
        receipt_digest=hexdigest("r"),
        values={o: u.value for o, u in receipt.owners.items()},
        valuation_receipt_digest=hexdigest("v"),
    )


def by_holder(rows):
    return {(a.role, a.holder): a for a in rows}


def test_data_pool_follows_value_weights(policy: AllocationPolicy):
    job = job_for({"alice": (30, 60, 0.3), "bob": (10, 20, 0.1), "mallory": (5, 5, -0.2)})
    weights = {o.owner: o.weight for o in job.owners}
    assert weights == {
        o: documented_weight(v) for o, v in {"alice": 0.3, "bob": 0.1, "mallory": -0.2}.items()
    }
    rows = by_holder(allocate_job(policy, "2026-11", job))
    # 700 000 split 3:1:0 is exact: 525 000 / 175 000 / 0.
    assert rows[("data", "contributor:alice")].amount == 525_000
    assert rows[("data", "contributor:bob")].amount == 175_000
    assert rows[("data", "contributor:mallory")].amount == 0
    assert {a.basis for (role, _), a in rows.items() if role == "data"} == {"value"}
    assert rows[("compute", "provider:p1")].amount == 200_000
    assert rows[("compute", "provider:p1")].weight == 1200
    assert rows[("fee", "exchange_fee")].amount == 100_000
    assert sum(a.amount for a in rows.values()) == 1_000_000


def test_uneven_split_uses_largest_remainder(policy: AllocationPolicy):
    job = job_for({"a": (1, 1, 1.0), "b": (1, 1, 1.0), "c": (1, 1, 1.0)}, payment=100)
    rows = by_holder(allocate_job(policy, "2026-11", job))
    # 70 over three equal weights: 23.33 each, the leftover unit goes to the first key.
    assert [rows[("data", f"contributor:{k}")].amount for k in "abc"] == [24, 23, 23]


def test_all_zero_values_fall_back_to_rows_used_and_say_so(policy: AllocationPolicy):
    job = job_for({"alice": (3, 9, 0.0), "bob": (1, 1, -0.5)})
    rows = by_holder(allocate_job(policy, "2026-11", job))
    assert rows[("data", "contributor:alice")].basis == "rows_used"
    assert rows[("data", "contributor:alice")].weight == 3
    assert rows[("data", "contributor:alice")].amount == 525_000
    assert rows[("data", "contributor:bob")].amount == 175_000


def test_no_basis_at_all_is_an_error(policy: AllocationPolicy):
    with pytest.raises(SettlementError, match="zero value and zero rows used"):
        allocate_job(policy, "2026-11", job_for({"alice": (0, 0, 0.0)}))
    with pytest.raises(SettlementError, match="names no data owners"):
        job_for({})
    with pytest.raises(SettlementError, match="not finite"):
        job_for({"alice": (1, 1, float("nan"))})


def test_allocation_root_commits_to_every_amount(policy: AllocationPolicy):
    rows = allocate_job(policy, "2026-11", job_for({"alice": (3, 3, 0.2), "bob": (1, 1, 0.1)}))
    root = allocation_root(rows)
    assert allocation_root(list(reversed(rows))) == root
    changed = [*rows[:-1], type(rows[-1])(**{**rows[-1].to_dict(), "amount": rows[-1].amount + 1})]
    assert allocation_root(changed) != root
