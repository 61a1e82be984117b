"""Minimum payout and carry-over, and the usage floor, posted through a real settlement."""

from __future__ import annotations

import pytest
from settlement_testkit import add_job, make_receipt, make_verify, make_verify_valuation

from databright.errors import SettlementError
from databright.ledger import Ledger, account_balances, deposit, verify_ledger
from databright.ledger.accounts import carry_over_account
from databright.ledger.transfers import TransferCode
from databright.settlement import AllocationPolicy, settle_period

CARRY = AllocationPolicy(name="carry", version=2, minimum_payout=100_000)


def settle(db, store, settings, key, period, policy=CARRY):
    return settle_period(
        db,
        store,
        period=period,
        policy=policy,
        verify=make_verify(key.public_key),
        verify_valuation=make_verify_valuation(key.public_key),
        statements_dir=settings.statements_dir,
    )


@pytest.fixture
def funded(memory_db):
    deposit(memory_db, "acme", 10_000_000, reference="wire-1")
    return memory_db


def test_a_sub_minimum_payout_is_carried_then_released_whole(funded, store, settings, session_key):
    # November: 1 000 000 -> data 700 000 split 9:1 -> alice 630 000, bob 70 000 (< 100 000: carried).
    nov = make_receipt("j-nov", {"alice": (9, 9, 0.9), "bob": (1, 1, 0.1)}, period="2026-11")
    add_job(funded, store, session_key, nov, payment=1_000_000)
    settled = settle(funded, store, settings, session_key, "2026-11")
    assert settled.totals["contributor:bob"] == 70_000
    balances = account_balances(funded)
    assert balances["contributor:bob"] == 0
    assert balances[carry_over_account("contributor:bob")] == 70_000
    assert balances["contributor:alice"] == 630_000
    assert verify_ledger(funded).ok

    # December: bob earns 35 000 more; 70 000 + 35 000 >= 100 000, so all of it is paid now.
    dec = make_receipt("j-dec", {"alice": (1, 1, 0.5), "bob": (1, 1, 0.5)}, period="2026-12")
    add_job(funded, store, session_key, dec, payment=100_000)
    settle(funded, store, settings, session_key, "2026-12")
    balances = account_balances(funded)
    assert balances["contributor:bob"] == 70_000 + 35_000
    assert balances.get(carry_over_account("contributor:bob"), 0) == 0
    # alice's 35 000 and the provider's 20 000 in December are below the minimum: carried, not paid.
    assert balances[carry_over_account("contributor:alice")] == 35_000
    assert balances[carry_over_account("provider:p1")] == 20_000
    codes = [t.code for t in Ledger(funded).transfers(period="2026-12")]
    assert codes.count(TransferCode.CARRY_RELEASE) == 1 and codes.count(TransferCode.CARRY_OVER) == 2
    assert verify_ledger(funded).ok


def test_settling_again_posts_no_second_carry(funded, store, settings, session_key):
    add_job(funded, store, session_key, make_receipt("j-1", {"bob": (1, 1, 0.1)}), payment=50_000)
    settle(funded, store, settings, session_key, "2026-11")
    before = Ledger(funded).transfers()
    settle(funded, store, settings, session_key, "2026-11")
    assert Ledger(funded).transfers() == before


def test_an_earlier_period_cannot_be_posted_after_a_later_one(funded, store, settings, session_key):
    add_job(
        funded,
        store,
        session_key,
        make_receipt("j-dec", {"bob": (1, 1, 0.1)}, period="2026-12"),
        payment=50_000,
    )
    settle(funded, store, settings, session_key, "2026-12")
    add_job(
        funded,
        store,
        session_key,
        make_receipt("j-nov", {"bob": (1, 1, 0.1)}, period="2026-11"),
        payment=50_000,
    )
    with pytest.raises(SettlementError, match="cannot be posted after the later period 2026-12"):
        settle(funded, store, settings, session_key, "2026-11")
    assert [t.job_id for t in Ledger(funded).transfers(period="2026-11") if t.job_id] == [
        "j-nov"
    ]  # escrow only


def test_a_usage_floor_pays_used_rows_even_when_their_value_is_zero(funded, store, settings, session_key):
    floor = AllocationPolicy(name="floor", version=2, usage_floor_bps=1000)
    # data 700 000: floor 70 000 by rows used (3:1), the rest 630 000 by value (bob's value is 0).
    receipt = make_receipt("j-1", {"alice": (3, 3, 0.5), "bob": (1, 1, 0.0)})
    add_job(funded, store, session_key, receipt, payment=1_000_000)
    settled = settle(funded, store, settings, session_key, "2026-11", policy=floor)
    assert settled.totals["contributor:bob"] == 17_500
    assert settled.totals["contributor:alice"] == 52_500 + 630_000
    payouts = [t for t in Ledger(funded).transfers(period="2026-11") if t.code == TransferCode.PAYOUT]
    alice = [t for t in payouts if t.credit_account == "contributor:alice"]
    assert len(alice) == 1 and alice[0].amount == 682_500 and "usage_floor" in alice[0].memo
    assert verify_ledger(funded).ok


def test_carried_amounts_show_in_the_review_and_in_the_statements(funded, store, settings, session_key):
    from databright.settlement import propose_period
    from databright.settlement.result import CarryLine
    from databright.settlement.statements import load_statement, render_statement

    nov = make_receipt("j-nov", {"alice": (9, 9, 0.9), "bob": (1, 1, 0.1)}, period="2026-11")
    add_job(funded, store, session_key, nov, payment=1_000_000)
    settle(funded, store, settings, session_key, "2026-11")
    dec = make_receipt("j-dec", {"alice": (1, 1, 0.5), "bob": (1, 1, 0.5)}, period="2026-12")
    add_job(funded, store, session_key, dec, payment=100_000)

    # Before approval the reviewer sees what posting will carry and release ...
    proposal = propose_period(
        funded,
        store,
        period="2026-12",
        policy=CARRY,
        verify=make_verify(session_key.public_key),
        verify_valuation=make_verify_valuation(session_key.public_key),
    )
    expected = {
        "contributor:alice": CarryLine("contributor:alice", 0, 35_000),
        "contributor:bob": CarryLine("contributor:bob", 70_000, 0),
        "provider:p1": CarryLine("provider:p1", 0, 20_000),
    }
    assert dict(proposal.carry) == expected
    summary = proposal.summary_markdown()
    assert "| carried to a later period | 0.055000 DBX of 2 holder(s) below the minimum |" in summary
    assert "| released from earlier periods | 0.070000 DBX to 1 holder(s) now at or above it |" in summary

    # ... and the posting carries exactly that, which each statement then states.
    settled = settle(funded, store, settings, session_key, "2026-12")
    assert dict(settled.carry) == expected
    bob = load_statement(settings.statements_dir, "2026-12", "contributor:bob")
    assert bob.total == 35_000
    assert bob.carry == {"released": 70_000, "carried_over": 0, "paid_out": 105_000}
    assert account_balances(funded)["contributor:bob"] == 105_000  # = paid out over both periods
    alice = load_statement(settings.statements_dir, "2026-12", "contributor:alice")
    assert alice.carry == {"released": 0, "carried_over": 35_000, "paid_out": 0}
    text = render_statement(alice)
    assert "carried to a later period (below the minimum payout): 0.035000 DBX (35000 minor units)" in text
    assert "paid out to your account this period: 0.000000 DBX (0 minor units)" in text

    # statement verify checks the carry-over block against the ledger's carry transfers.
    import json

    from databright.settlement.statement_check import check_statement

    def verify_bob():
        return check_statement(
            funded,
            store,
            holder="contributor:bob",
            period="2026-12",
            policy=CARRY,
            statements_dir=settings.statements_dir,
            verify=make_verify(session_key.public_key),
            verify_valuation=make_verify_valuation(session_key.public_key),
        )

    assert verify_bob().ok, verify_bob().failures
    path = settings.statements_dir / "2026-12" / "contributor-bob.json"
    data = json.loads(path.read_text())
    data["carry"]["released"] = 0
    path.write_text(json.dumps(data))
    assert verify_bob().failures == (
        "statement says released 0, the ledger's carry transfers 70000 minor units",
    )
