"""Corrections: a wrong transfer is reversed (and replaced), never edited; verify follows the effect."""

from __future__ import annotations

import datetime as dt

import pytest

from databright.db import ExchangeDB
from databright.errors import LedgerError
from databright.ledger import (
    COMPUTE_POOL,
    DATA_POOL,
    ESCROW,
    EXCHANGE_FEE,
    REVENUE,
    Ledger,
    Transfer,
    TransferCode,
    balance,
    correct_transfer,
    deposit,
    escrow_job_payment,
    request_withdrawal,
    reverse_transfer,
    verify_ledger,
)

PERIOD = "2026-11"


def settled_to_the_wrong_owner(db: ExchangeDB) -> Transfer:
    """One job settled 70/20/10 whose data share went to alice though bob's rows were used."""
    deposit(db, "acme", 1_000, reference="w")
    with db.transaction() as con:
        con.execute(
            "INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment, budget, "
            "status, created_at) VALUES ('j-1', ?, 'acme', 'census', 1, 'tabular_logreg', 1000, 1000, "
            "'completed', ?)",
            [PERIOD, dt.datetime.now(dt.UTC)],
        )
    escrow_job_payment(db, trainer_id="acme", job_id="j-1", period=PERIOD, amount=1_000)
    legs = [
        (ESCROW, REVENUE, 1_000, TransferCode.RECOGNISE),
        (REVENUE, DATA_POOL, 700, TransferCode.SETTLE_DATA),
        (REVENUE, COMPUTE_POOL, 200, TransferCode.SETTLE_COMPUTE),
        (REVENUE, EXCHANGE_FEE, 100, TransferCode.SETTLE_FEE),
        (DATA_POOL, "contributor:alice", 700, TransferCode.PAYOUT),
        (COMPUTE_POOL, "provider:p1", 200, TransferCode.PAYOUT),
    ]
    transfers = [
        Transfer.create(
            {"leg": n},
            debit_account=d,
            credit_account=c,
            amount=a,
            code=code,
            period=PERIOD,
            settlement_id=f"settlement:{PERIOD}",
            job_id="j-1",
        )
        for n, (d, c, a, code) in enumerate(legs)
    ]
    with db.transaction() as con:
        Ledger(db).post(con, transfers)
    assert verify_ledger(db).ok
    return transfers[4]


def test_a_payout_to_the_wrong_holder_is_reversed_and_replaced_once(memory_db):
    wrong = settled_to_the_wrong_owner(memory_db)
    fixed = correct_transfer(
        memory_db, wrong.transfer_id, reason="bob's rows, not alice's", credit_account="contributor:bob"
    )
    assert (fixed.reversal.debit_account, fixed.reversal.credit_account) == ("contributor:alice", DATA_POOL)
    assert fixed.reversal.memo == f"reversal of {wrong.transfer_id}: bob's rows, not alice's"
    assert (fixed.replacement.credit_account, fixed.replacement.amount, fixed.replacement.code) == (
        "contributor:bob",
        700,
        TransferCode.PAYOUT,
    )
    assert (balance(memory_db, "contributor:alice"), balance(memory_db, "contributor:bob")) == (0, 700)
    report = verify_ledger(memory_db)
    assert report.ok, str(report)
    assert "1 reversal, each mirroring the transfer it names" in str(report)
    count = len(Ledger(memory_db).transfers())
    assert (
        correct_transfer(memory_db, wrong.transfer_id, reason="again", credit_account="contributor:bob")
        == fixed
    )
    assert len(Ledger(memory_db).transfers()) == count  # a retried correction posts nothing


def test_a_reversal_alone_leaves_the_money_where_verify_can_see_it(memory_db):
    wrong = settled_to_the_wrong_owner(memory_db)
    reversal = reverse_transfer(memory_db, wrong.transfer_id, "wrong owner")
    assert reverse_transfer(memory_db, wrong.transfer_id, "said twice") == reversal  # once per transfer
    failures = {c.name: c.detail for c in verify_ledger(memory_db).failures}
    assert failures["period_conservation"] == (  # paid out to nobody now
        f"period {PERIOD}: revenue 1 000, split out of revenue 1 000, payouts 200 + fee 100; all three must "
        "be equal; data_pool keeps 700 of the period's shares"
    )


def test_corrections_that_cannot_stand_are_refused_and_post_nothing(memory_db):
    wrong = settled_to_the_wrong_owner(memory_db)
    with pytest.raises(LedgerError, match=r"no transfer 'f+' is posted"):
        reverse_transfer(memory_db, "f" * 64, "typo")
    with pytest.raises(LedgerError, match="needs a reason"):
        reverse_transfer(memory_db, wrong.transfer_id, "  ")
    with pytest.raises(LedgerError, match="changes nothing"):
        correct_transfer(memory_db, wrong.transfer_id, reason="same", amount=700)
    request_withdrawal(memory_db, "contributor:alice", 700, "out-1")  # alice already took the money
    with pytest.raises(LedgerError, match="account 'contributor:alice' holds 0 minor units"):
        reverse_transfer(memory_db, wrong.transfer_id, "wrong owner")
    reversal = Transfer.create(
        {"kind": "reversal", "of": "0" * 64},  # an id derived from another transfer than its memo names
        debit_account="contributor:bob",
        credit_account=DATA_POOL,
        amount=1,
        code=TransferCode.REVERSAL,
        memo=f"reversal of {wrong.transfer_id}: forged",
    )
    deposit(memory_db, "bob", 1, reference="seed")
    with memory_db.transaction() as con:
        Ledger(memory_db).post(
            con,
            [
                Transfer.create(
                    {"seed": 1},
                    debit_account="trainer:bob",
                    credit_account="contributor:bob",
                    amount=1,
                    code=TransferCode.PAYOUT,
                )
            ],
        )
        Ledger(memory_db).post(con, [reversal])
    problems = [c.detail for c in verify_ledger(memory_db).failures if c.name == "reversals"]
    assert problems == [
        f"reversal {reversal.transfer_id[:12]} claims to reverse {wrong.transfer_id[:12]} but its id is not "
        "derived from it"
    ]
    with pytest.raises(LedgerError, match="is itself a reversal"):
        reverse_transfer(memory_db, reversal.transfer_id, "undo")
