"""Ledger posting: balances in HUGEINT, idempotent retries, conflicts, no overdrafts, escrow."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from databright.db import ExchangeDB
from databright.errors import LedgerConflict, LedgerError
from databright.ledger import (
    ESCROW,
    Ledger,
    Transfer,
    TransferCode,
    account_balances,
    balance,
    deposit,
    escrow_job_payment,
    refund_job_payment,
    verify_ledger,
)


def rows(db: ExchangeDB):
    return db.query("SELECT * FROM transfers ORDER BY transfer_id")


def move(n: int, debit: str, credit: str, amount: int, code=TransferCode.PAYOUT) -> Transfer:
    return Transfer.create(
        {"kind": "test", "n": n}, debit_account=debit, credit_account=credit, amount=amount, code=code
    )


def test_deposit_credits_the_trainer_and_balances_sum_to_zero(memory_db):
    deposit(memory_db, "acme", 5_000_000, reference="wire-1")
    deposit(memory_db, "acme", 5_000_000, reference="wire-1")  # the same wire, retried
    deposit(memory_db, "acme", 250, reference="wire-2")
    balances = account_balances(memory_db)
    assert balances == {"external:deposits": -5_000_250, "trainer:acme": 5_000_250}
    assert balance(memory_db, "trainer:acme") == 5_000_250
    assert balance(memory_db, "contributor:nobody") == 0
    assert len(rows(memory_db)) == 2


def test_same_reference_with_another_amount_conflicts(memory_db):
    deposit(memory_db, "acme", 100, reference="wire-1")
    with pytest.raises(LedgerConflict, match=r"already posted with different content \(amount: 100 != 200\)"):
        deposit(memory_db, "acme", 200, reference="wire-1")
    assert balance(memory_db, "trainer:acme") == 100


def test_post_is_idempotent_for_a_whole_batch(memory_db):
    deposit(memory_db, "acme", 1_000, reference="w")
    batch = [
        move(1, "trainer:acme", ESCROW, 600, TransferCode.ESCROW),
        move(2, ESCROW, "data_pool", 600, TransferCode.SETTLE_DATA),
        move(3, "data_pool", "contributor:alice", 600),
    ]
    ledger = Ledger(memory_db)
    with memory_db.transaction() as con:
        assert ledger.post(con, batch) == batch
    before = rows(memory_db)
    with memory_db.transaction() as con:
        assert ledger.post(con, batch) == []
    assert rows(memory_db) == before
    assert balance(memory_db, "contributor:alice") == 600


def test_a_conflict_anywhere_in_a_batch_posts_nothing(memory_db):
    deposit(memory_db, "acme", 1_000, reference="w")
    ledger = Ledger(memory_db)
    with memory_db.transaction() as con:
        ledger.post(con, [move(1, "trainer:acme", ESCROW, 100, TransferCode.ESCROW)])
    before = rows(memory_db)
    with pytest.raises(LedgerConflict), memory_db.transaction() as con:
        ledger.post(
            con,
            [
                move(2, "trainer:acme", ESCROW, 5, TransferCode.ESCROW),
                move(1, "trainer:acme", ESCROW, 101, TransferCode.ESCROW),
            ],
        )
    assert rows(memory_db) == before
    with pytest.raises(LedgerConflict, match="twice in one batch"), memory_db.transaction() as con:
        ledger.post(con, [move(7, ESCROW, "data_pool", 1), move(7, ESCROW, "data_pool", 2)])


def test_overdrawing_a_flagged_account_posts_nothing(memory_db):
    deposit(memory_db, "acme", 1_000, reference="w")
    ledger = Ledger(memory_db)
    before = rows(memory_db)
    overdraft = r"account 'escrow' holds 900 .* debits 901"
    with pytest.raises(LedgerError, match=overdraft) as caught, memory_db.transaction() as con:
        ledger.post(
            con,
            [
                move(1, "trainer:acme", ESCROW, 900, TransferCode.ESCROW),
                move(2, ESCROW, "data_pool", 901, TransferCode.SETTLE_DATA),
            ],
        )
    assert caught.value.context["balance"] == 900
    assert rows(memory_db) == before
    # Even a caller that swallows the error inside its transaction commits nothing.
    with memory_db.transaction() as con, pytest.raises(LedgerError):
        ledger.post(con, [move(3, "trainer:acme", "contributor:bob", 1_001)])
    assert rows(memory_db) == before


def test_escrow_short_balance_says_how_much(memory_db):
    deposit(memory_db, "acme", 400_000, reference="w")
    with pytest.raises(
        LedgerError, match=r"holds 400 000 minor units, short of the 1 000 000 .* at least 600 000"
    ) as caught:
        escrow_job_payment(memory_db, trainer_id="acme", job_id="j-1", period="2026-11", amount=1_000_000)
    assert (caught.value.context["balance"], caught.value.context["amount"]) == (400_000, 1_000_000)
    assert balance(memory_db, ESCROW) == 0


def test_escrow_retry_is_a_no_op_and_refund_returns_the_payment(memory_db):
    deposit(memory_db, "acme", 1_000_000, reference="w")
    escrow_job_payment(memory_db, trainer_id="acme", job_id="j-1", period="2026-11", amount=1_000_000)
    escrow_job_payment(memory_db, trainer_id="acme", job_id="j-1", period="2026-11", amount=1_000_000)
    assert balance(memory_db, ESCROW) == 1_000_000
    assert balance(memory_db, "trainer:acme") == 0
    with pytest.raises(LedgerError, match="only an escrowed, unsettled job is refunded"):
        refund_job_payment(memory_db, trainer_id="acme", job_id="j-1", period="2026-11", amount=5)
    refund_job_payment(memory_db, trainer_id="acme", job_id="j-1", period="2026-11", amount=1_000_000)
    assert balance(memory_db, "trainer:acme") == 1_000_000
    assert verify_ledger(memory_db).ok


def test_file_ledger_keeps_amounts_beyond_int64(file_db):
    big = 2**90 + 12345
    deposit(file_db, "whale", big, reference="w")
    deposit(file_db, "whale", big, reference="w2")
    assert balance(file_db, "trainer:whale") == 2 * big
    assert account_balances(ExchangeDB(file_db.path))["external:deposits"] == -2 * big


holders = st.sampled_from(
    ["trainer:a", "trainer:b", "contributor:c", "escrow", "data_pool", "external:deposits"]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(holders, holders, st.integers(1, 10**15)), max_size=25))
def test_random_postings_keep_the_books_balanced(moves):
    db = ExchangeDB(None)
    ledger = Ledger(db)
    for n, (debit, credit, amount) in enumerate(moves):
        if debit == credit:
            continue
        try:
            with db.transaction() as con:
                ledger.post(con, [move(n, debit, credit, amount)])
        except LedgerError:
            pass  # refused overdrafts leave the books as they were
    balances = account_balances(db)
    assert sum(balances.values()) == 0
    assert all(v >= 0 for k, v in balances.items() if not k.startswith("external:"))
    report = verify_ledger(db)
    assert report.check("ledger_balance")[0].ok
    assert report.check("flagged_non_negative")[0].ok
