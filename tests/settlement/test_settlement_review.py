"""Review before posting: propose_period -> approve_period / reject_period -> post_period.

The two jobs are those of test_settlement_period.py, whose payouts are worked out there by hand:
j-1 pays 1 000 000 (data 700 000 split 3:1, compute 200 000 to p1, fee 100 000) and j-2 pays
333 333 (233 333 / 66 667 / 33 333, data split 1:2, bob rounding up).
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from settlement_testkit import (
    PERIOD,
    add_job,
    make_receipt,
    make_verify,
    make_verify_valuation,
    sign_receipt,
    transfers_table,
)

from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import SettlementConflict, SettlementError
from databright.ledger import account_balances, deposit, verify_ledger
from databright.settlement import (
    AllocationPolicy,
    Proposal,
    approve_period,
    post_period,
    propose_period,
    reject_period,
    settle_period,
)
from databright.settlement.result import percent
from databright.storage.objectstore import LocalObjectStore

EXPECTED = {
    "contributor:alice": 525_000,
    "contributor:bob": 175_000 + 77_778,
    "contributor:carol": 155_555,
    "exchange_fee": 100_000 + 33_333,
    "provider:p1": 200_000,
    "provider:p2": 66_667,
}


@pytest.fixture
def two_jobs(memory_db: ExchangeDB, store: LocalObjectStore, session_key: SigningKey) -> ExchangeDB:
    deposit(memory_db, "acme", 5_000_000, reference="wire-1")
    deposit(memory_db, "globex", 1_000_000, reference="wire-2")
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)}, provider_id="p1"),
        payment=1_000_000,
        trainer_id="acme",
    )
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-2", {"bob": (5, 5, 0.25), "carol": (7, 14, 0.5)}, provider_id="p2", work_units=800),
        payment=333_333,
        trainer_id="globex",
    )
    return memory_db


def checks(key: SigningKey) -> dict:
    return {"verify": make_verify(key.public_key), "verify_valuation": make_verify_valuation(key.public_key)}


def propose(db, store, policy, key) -> Proposal:
    return propose_period(db, store, period=PERIOD, policy=policy, **checks(key))


def post(db, store, settings, policy, key):
    return post_period(
        db, store, period=PERIOD, policy=policy, statements_dir=settings.statements_dir, **checks(key)
    )


def row(db: ExchangeDB) -> tuple:
    return db.query(
        "SELECT state, approver, reason, inputs_digest, allocation_root FROM settlements WHERE period = ?",
        [PERIOD],
    )[0]


def settle_transfers(db: ExchangeDB) -> int:
    return db.query("SELECT count(*) FROM transfers WHERE settlement_id IS NOT NULL")[0][0]


def test_a_proposal_stores_allocations_and_posts_nothing(two_jobs, store, settings, policy, session_key):
    before = transfers_table(two_jobs)
    proposal = propose(two_jobs, store, policy, session_key)
    assert proposal.state == "proposed" and proposal.approver is None
    assert dict(proposal.totals) == EXPECTED
    assert proposal.pools() == {"data": 700_000 + 233_333, "compute": 200_000 + 66_667, "fee": 133_333}
    assert sum(proposal.pools().values()) == proposal.total_paid == 1_333_333
    assert transfers_table(two_jobs) == before
    assert row(two_jobs)[:3] == ("proposed", None, None)
    assert row(two_jobs)[3:] == (proposal.inputs_digest, proposal.allocation_root)
    stored = two_jobs.query("SELECT sum(amount) FROM allocations WHERE period = ?", [PERIOD])[0][0]
    assert int(stored) == 1_333_333
    assert not (settings.statements_dir / PERIOD).exists()
    # Proposing the same inputs again changes nothing.
    assert propose(two_jobs, store, policy, session_key) == proposal
    assert transfers_table(two_jobs) == before


def test_posting_needs_an_approval_of_the_proposed_root(two_jobs, store, settings, policy, session_key):
    proposal = propose(two_jobs, store, policy, session_key)
    with pytest.raises(SettlementError, match=r"is 'proposed', not approved.*settle approve 2026-11"):
        post(two_jobs, store, settings, policy, session_key)
    with pytest.raises(SettlementError, match="you reviewed allocation root 00ff"):
        approve_period(two_jobs, period=PERIOD, approver="finance", allocation_root="00ff")
    assert row(two_jobs)[0] == "proposed" and settle_transfers(two_jobs) == 0

    approved = approve_period(
        two_jobs,
        period=PERIOD,
        approver=" finance ",
        reason="checked",
        allocation_root=proposal.allocation_root,
    )
    assert (approved.state, approved.approver, approved.reason) == ("approved", "finance", "checked")
    again = approve_period(two_jobs, period=PERIOD, approver="someone-else")
    assert again.approver == "finance"  # the first approval stands
    assert settle_transfers(two_jobs) == 0

    settlement = post(two_jobs, store, settings, policy, session_key)
    assert (settlement.state, settlement.approver) == ("posted", "finance")
    assert dict(settlement.totals) == EXPECTED
    assert settlement.allocation_root == proposal.allocation_root
    balances = account_balances(two_jobs)
    assert {h: balances[h] for h in EXPECTED} == EXPECTED
    assert verify_ledger(two_jobs).ok
    # Posting again is a no-op with the same result; approving a posted period changes nothing.
    before = transfers_table(two_jobs)
    assert post(two_jobs, store, settings, policy, session_key) == settlement
    assert approve_period(two_jobs, period=PERIOD, approver="x").state == "posted"
    assert transfers_table(two_jobs) == before
    with pytest.raises(SettlementError, match="already posted"):
        reject_period(two_jobs, period=PERIOD, approver="x", reason="too late")


def test_inputs_that_change_after_approval_post_nothing(two_jobs, store, settings, policy, session_key):
    first = propose(two_jobs, store, policy, session_key)
    approve_period(two_jobs, period=PERIOD, approver="finance", allocation_root=first.allocation_root)
    add_job(two_jobs, store, session_key, make_receipt("j-3", {"dave": (1, 1, 0.1)}), payment=10_000)
    before = transfers_table(two_jobs)
    with pytest.raises(SettlementError, match=r"approved by finance for inputs .* nothing was posted"):
        post(two_jobs, store, settings, policy, session_key)
    assert transfers_table(two_jobs) == before
    assert row(two_jobs)[:2] == ("approved", "finance")

    # A new proposal replaces the approved one and voids its approval.
    second = propose(two_jobs, store, policy, session_key)
    assert (second.state, second.approver) == ("proposed", None)
    assert second.allocation_root != first.allocation_root
    assert second.totals["contributor:dave"] == 7_000
    with pytest.raises(SettlementError, match="inputs changed after you looked"):
        approve_period(two_jobs, period=PERIOD, approver="finance", allocation_root=first.allocation_root)
    approve_period(two_jobs, period=PERIOD, approver="finance", allocation_root=second.allocation_root)
    assert post(two_jobs, store, settings, policy, session_key).total_paid == 1_343_333


def test_a_rejection_posts_nothing_until_the_inputs_change(two_jobs, store, settings, policy, session_key):
    proposal = propose(two_jobs, store, policy, session_key)
    with pytest.raises(SettlementError, match="needs a reason"):
        reject_period(two_jobs, period=PERIOD, approver="finance", reason="  ")
    with pytest.raises(SettlementError, match="approver '' is empty"):
        reject_period(two_jobs, period=PERIOD, approver="", reason="bad")
    rejected = reject_period(
        two_jobs, period=PERIOD, approver="finance", reason="carol's value is implausible"
    )
    assert (rejected.state, rejected.approver, rejected.reason) == (
        "rejected",
        "finance",
        "carol's value is implausible",
    )
    assert reject_period(two_jobs, period=PERIOD, approver="other", reason="again") == rejected
    assert (rejected.inputs_digest, rejected.allocation_root) == (
        proposal.inputs_digest,
        proposal.allocation_root,
    )

    with pytest.raises(SettlementError, match=r"rejected by finance \(carol's value is implausible\)"):
        approve_period(two_jobs, period=PERIOD, approver="finance")
    with pytest.raises(SettlementError, match="inputs are unchanged"):
        propose(two_jobs, store, policy, session_key)
    with pytest.raises(SettlementError, match="inputs are unchanged"):
        settle_period(
            two_jobs,
            store,
            period=PERIOD,
            policy=policy,
            statements_dir=settings.statements_dir,
            **checks(session_key),
        )
    with pytest.raises(SettlementError, match="is 'rejected', not approved"):
        post(two_jobs, store, settings, policy, session_key)
    assert settle_transfers(two_jobs) == 0
    assert row(two_jobs)[:2] == ("rejected", "finance")

    # Another policy is a change of inputs: the period is proposed afresh and can be approved.
    other = AllocationPolicy.from_mapping({**policy.to_dict(), "version": policy.version + 1})
    again = propose_period(two_jobs, store, period=PERIOD, policy=other, **checks(session_key))
    assert (again.state, again.approver, again.reason) == ("proposed", None, None)
    assert again.inputs_digest != proposal.inputs_digest
    assert row(two_jobs)[:3] == ("proposed", None, None)


def test_a_receipt_swapped_after_approval_rejects_the_period(two_jobs, store, settings, policy, session_key):
    proposal = propose(two_jobs, store, policy, session_key)
    approve_period(two_jobs, period=PERIOD, approver="finance", allocation_root=proposal.allocation_root)
    forged = sign_receipt(SigningKey.from_seed(b"mallory"), make_receipt("j-1", {"alice": (30, 60, 0.3)}))
    store.put_bytes(f"receipts/{PERIOD}/j-1.json", json.dumps(forged).encode())
    with pytest.raises(SettlementError, match=r"rejected, nothing posted: job j-1: receipt rejected"):
        post(two_jobs, store, settings, policy, session_key)
    state, approver, reason, *_ = row(two_jobs)
    assert (state, approver) == ("rejected", None)  # rejected by the checks: the approval is void
    assert "j-1" in reason
    assert settle_transfers(two_jobs) == 0


def test_deciding_on_a_period_that_was_never_proposed_says_what_to_do(memory_db):
    with pytest.raises(SettlementError, match="has not been proposed; run the settle flow"):
        approve_period(memory_db, period=PERIOD, approver="finance")
    with pytest.raises(SettlementError, match="has not been proposed"):
        reject_period(memory_db, period=PERIOD, approver="finance", reason="no")
    with pytest.raises(SettlementError, match="is not a month"):
        approve_period(memory_db, period="2026-13", approver="finance")


def test_a_posted_period_with_other_inputs_conflicts_at_proposal(
    two_jobs, store, settings, policy, session_key
):
    settle_period(
        two_jobs,
        store,
        period=PERIOD,
        policy=policy,
        statements_dir=settings.statements_dir,
        **checks(session_key),
    )
    add_job(two_jobs, store, session_key, make_receipt("j-3", {"dave": (1, 1, 0.1)}), payment=10_000)
    with pytest.raises(SettlementConflict, match="already posted"):
        propose(two_jobs, store, policy, session_key)


# --- the review figures --------------------------------------------------------------------------


def test_review_figures_are_exact(two_jobs, store, policy, session_key):
    proposal = propose(two_jobs, store, policy, session_key)
    (census,) = proposal.datasets()
    assert (census.dataset, census.version, census.jobs, census.owners) == ("census", 1, 2, 3)
    assert (census.rows_used, census.visits) == (30 + 10 + 5 + 7, 60 + 20 + 5 + 14)
    assert (census.payment, census.data, census.compute, census.fee) == (1_333_333, 933_333, 266_667, 133_333)
    holders = proposal.holders()
    assert [h.holder for h in holders] == [
        "contributor:alice",
        "contributor:bob",
        "provider:p1",
        "contributor:carol",
        "exchange_fee",
        "provider:p2",
    ]
    assert holders[1].roles == ("data",) and holders[1].jobs == 2
    rows = proposal.holder_rows(top=2)
    assert rows == [
        {
            "rank": "1",
            "holder": "contributor:alice",
            "roles": "data",
            "jobs": "1",
            "amount": "0.525000 DBX",
            "share of revenue": "39.38 %",  # 525 000 / 1 333 333 = 39.3750...%
        },
        {
            "rank": "2",
            "holder": "contributor:bob",
            "roles": "data",
            "jobs": "2",
            "amount": "0.252778 DBX",
            "share of revenue": "18.96 %",
        },
    ]
    (dataset_row,) = proposal.dataset_rows()
    assert dataset_row["revenue"] == "1.333333 DBX" and dataset_row["data pool (to owners)"] == "0.933333 DBX"
    summary = proposal.summary_markdown()
    for line in (
        "### Settlement 2026-11: proposed",
        "| revenue | 1.333333 DBX |",
        "| data pool | 0.933333 DBX (70.00 %) |",
        "| compute pool | 0.266667 DBX (20.00 %) |",
        "| exchange fee | 0.133333 DBX (10.00 %) |",
        "| jobs | 2 (trainers: acme, globex; providers: p1, p2) |",
        "| assurance | **simulated**",
        f"| allocation root | `{proposal.allocation_root}` |",
    ):
        assert line in summary, line
    png = proposal.chart_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == proposal.chart_png()


@given(part=st.integers(min_value=0, max_value=10**30), extra=st.integers(min_value=0, max_value=10**30))
def test_percent_is_the_exact_share_rounded_to_hundredths(part, extra):
    whole = part + extra
    if whole == 0:
        assert percent(part, whole) == "-"
        return
    text = percent(part, whole)
    units, hundredths = text.removesuffix(" %").split(".")
    shown = Fraction(int(units) * 100 + int(hundredths), 100)
    assert abs(shown - Fraction(part * 100, whole)) <= Fraction(1, 200)
