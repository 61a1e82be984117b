"""verify_ledger: every named check passes on honest books and fails on a rogue row."""

from __future__ import annotations

import datetime as dt

import pytest

from databright.db import ExchangeDB
from databright.errors import LedgerInvariantBroken
from databright.ledger import (
    COMPUTE_POOL,
    DATA_POOL,
    ESCROW,
    EXCHANGE_FEE,
    REVENUE,
    Ledger,
    Transfer,
    TransferCode,
    deposit,
    escrow_job_payment,
    verify_ledger,
)


def add_job_row(db: ExchangeDB, job_id: str, payment: int) -> None:
    with db.transaction() as con:
        con.execute(
            "INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment, budget, "
            "status, created_at) "
            "VALUES (?, '2026-11', 'acme', 'census', 1, 'tabular_logreg', ?, ?, 'completed', ?)",
            [job_id, payment, payment, dt.datetime.now(dt.UTC)],
        )


def settle_by_hand(db: ExchangeDB, payments: dict[str, int]) -> None:
    """The transfers settlement posts for a period: per job its revenue split 70/20/10, then one
    payout per holder over the period, to one owner and one provider."""
    legs, data_total, compute_total = [], 0, 0
    for job_id, payment in payments.items():
        data, compute, fee = payment * 7 // 10, payment * 2 // 10, payment - payment * 9 // 10
        data_total, compute_total = data_total + data, compute_total + compute
        legs += [
            (job_id, ESCROW, REVENUE, payment, TransferCode.RECOGNISE),
            (job_id, REVENUE, DATA_POOL, data, TransferCode.SETTLE_DATA),
            (job_id, REVENUE, COMPUTE_POOL, compute, TransferCode.SETTLE_COMPUTE),
            (job_id, REVENUE, EXCHANGE_FEE, fee, TransferCode.SETTLE_FEE),
        ]
    legs += [
        (None, DATA_POOL, "contributor:alice", data_total, TransferCode.PAYOUT),
        (None, COMPUTE_POOL, "provider:p1", compute_total, TransferCode.PAYOUT),
    ]
    transfers = [
        Transfer.create(
            {"job": job_id, "leg": n},
            debit_account=d,
            credit_account=c,
            amount=a,
            code=code,
            period="2026-11",
            settlement_id="settlement:2026-11",
            job_id=job_id,
        )
        for n, (job_id, d, c, a, code) in enumerate(legs)
    ]
    with db.transaction() as con:
        Ledger(db).post(con, transfers)


@pytest.fixture
def books(memory_db: ExchangeDB) -> ExchangeDB:
    deposit(memory_db, "acme", 3_000_000, reference="w")
    for job_id, payment in (("j-1", 1_000_000), ("j-2", 500_000), ("j-3", 250_000)):
        add_job_row(memory_db, job_id, payment)
        escrow_job_payment(memory_db, trainer_id="acme", job_id=job_id, period="2026-11", amount=payment)
    settle_by_hand(memory_db, {"j-1": 1_000_000, "j-2": 500_000})
    return memory_db


def rogue(db: ExchangeDB, debit: str, credit: str, amount: int, job_id: str | None, code: int = 6) -> None:
    db.query(
        "INSERT INTO transfers VALUES (?, ?, ?, ?, 1, ?, '2026-11', 'rogue', ?, 'inserted by hand', ?)",
        [f"{'f' * 60}{amount % 9999:04d}", debit, credit, amount, code, job_id, dt.datetime.now(dt.UTC)],
    )


def test_empty_ledger_is_consistent(memory_db):
    report = verify_ledger(memory_db)
    assert report.ok
    assert report.failures == ()


def test_honest_books_pass_with_readable_lines(books):
    report = verify_ledger(books)
    assert report.ok, str(report)
    text = str(report)
    assert "[ok] transfers balanced per ledger: 1 ledger, 14 transfers" in text
    assert "job j-1: pools and fee 1 000 000 = revenue = payment, escrow closed" in text
    assert "job j-2: pools and fee 500 000 = revenue = payment, escrow closed" in text
    assert "period 2026-11: payouts 1 350 000 + fee 150 000 = revenue 1 500 000" in text
    assert "escrow holds 250 000 = budgets of 1 open job" in text
    assert "revenue, data pool and compute pool net to zero after payouts" in text
    assert "payout clearing holds 0 = withdrawals not yet sent or returned" in text
    assert {c.name for c in report.checks} == {
        "ledger_balance",
        "flagged_non_negative",
        "reversals",
        "uniqueness",
        "job_conservation",
        "period_conservation",
        "pools_empty",
        "escrow",
        "account_codes",
        "payout_clearing",
    }
    assert report.raise_if_broken() is report


def test_money_from_an_unknown_account_unbalances_the_ledger(books):
    rogue(books, "mint", "contributor:alice", 5_000, None)
    report = verify_ledger(books)
    assert not report.ok
    [failure] = report.failures
    assert failure.name == "ledger_balance"
    assert failure.detail == "ledger 1 out of balance by 5 000; legs on accounts not open on it: mint"
    with pytest.raises(LedgerInvariantBroken, match="1 ledger invariant"):
        report.raise_if_broken()


def test_a_rogue_payout_breaks_conservation_and_the_pools(books):
    rogue(books, DATA_POOL, "contributor:alice", 70_000, "j-1")  # an extra payout, tagged with a job
    failures = {c.name: c.detail for c in verify_ledger(books).failures}
    assert failures["flagged_non_negative"].startswith("account data_pool is overdrawn: balance -70 000")
    assert failures["period_conservation"] == (
        "period 2026-11: revenue 1 500 000, split out of revenue 1 500 000, payouts 1 420 000 + fee 150 000; "
        "all three must be equal; data_pool keeps -70 000 of the period's shares"
    )
    assert failures["pools_empty"].startswith("data_pool holds -70 000")
    assert "ledger_balance" not in failures


def test_a_rogue_settlement_leg_breaks_conservation_and_escrow(books):
    rogue(books, ESCROW, EXCHANGE_FEE, 1, "j-3", code=int(TransferCode.SETTLE_FEE))
    failures = {c.name: c.detail for c in verify_ledger(books).failures}
    assert failures["job_conservation"] == (
        "job j-3: revenue 0 != payment 250 000; 1 settlement leg(s) not debiting revenue; "
        "escrow keeps 249 999 of its budget after settlement"
    )
    assert failures["escrow"] == (
        "escrow holds 249 999; the budgets of 0 open jobs sum to 0; j-3 had 1 of its 250 000 released; "
        "escrow is released whole (settled or refunded)"
    )
    assert failures["account_codes"].startswith("escrow is moved by transfers of another purpose: ffffffff")


def test_a_payout_made_twice_under_another_key_is_named(books):
    # alice's period payout again, and j-1's data share again: same movements, other transfer ids.
    rogue(books, DATA_POOL, "contributor:alice", 1_050_000, None)
    rogue(books, REVENUE, DATA_POOL, 700_001, "j-1", code=int(TransferCode.SETTLE_DATA))
    failures = [c.detail for c in verify_ledger(books).failures if c.name == "uniqueness"]
    assert failures == [
        "job j-1: settle_data posted 2 times; reverse the extra transfers",
        "period 2026-11: payout data_pool -> contributor:alice posted 2 times; reverse the extra transfers",
    ]
