"""Money crossing the boundary: unmatched deposits through suspense, withdrawals through payout clearing."""

from __future__ import annotations

import pytest

from databright.db import ExchangeDB
from databright.errors import LedgerConflict, LedgerError
from databright.ledger import (
    EXTERNAL_PAYOUTS,
    PAYOUT_CLEARING,
    SUSPENSE,
    Ledger,
    Transfer,
    TransferCode,
    balance,
    confirm_withdrawal,
    deposit,
    deposit_unmatched,
    match_deposit,
    request_withdrawal,
    return_withdrawal,
    verify_ledger,
)


def books_ok(db: ExchangeDB) -> None:
    report = verify_ledger(db)
    assert report.ok, str(report)


def test_an_unmatched_deposit_waits_in_suspense_until_matched_once(memory_db):
    deposit_unmatched(memory_db, 250_000, "bank-77")
    deposit_unmatched(memory_db, 250_000, "bank-77")  # a retried booking: no second deposit
    assert balance(memory_db, SUSPENSE) == 250_000
    books_ok(memory_db)

    matched = match_deposit(memory_db, "bank-77", "acme")
    assert (matched.debit_account, matched.credit_account, matched.amount) == (
        SUSPENSE,
        "trainer:acme",
        250_000,
    )
    assert match_deposit(memory_db, "bank-77", "acme") == matched  # idempotent
    assert balance(memory_db, SUSPENSE) == 0 and balance(memory_db, "trainer:acme") == 250_000
    with pytest.raises(LedgerConflict, match="already posted with different content"):
        match_deposit(memory_db, "bank-77", "globex")  # one deposit, one trainer
    books_ok(memory_db)


def test_matching_a_reference_never_booked_names_the_fix(memory_db):
    with pytest.raises(LedgerError, match=r"no unmatched deposit has reference 'bank-1'; book it first"):
        match_deposit(memory_db, "bank-1", "acme")
    with pytest.raises(LedgerError, match="deposit reference ' ' is empty"):
        deposit_unmatched(memory_db, 10, " ")


def test_a_withdrawal_goes_through_payout_clearing_and_is_sent_once(memory_db):
    deposit(memory_db, "acme", 1_000, reference="w-1")
    request_withdrawal(memory_db, "trainer:acme", 600, "payout-1")
    assert balance(memory_db, "trainer:acme") == 400 and balance(memory_db, PAYOUT_CLEARING) == 600
    books_ok(memory_db)  # 600 in flight = clearing's balance

    sent = confirm_withdrawal(memory_db, "trainer:acme", "payout-1")
    assert (sent.credit_account, sent.amount, sent.code) == (
        EXTERNAL_PAYOUTS,
        600,
        TransferCode.WITHDRAWAL_SENT,
    )
    assert confirm_withdrawal(memory_db, "trainer:acme", "payout-1") == sent
    with pytest.raises(LedgerError, match="already marked sent"):
        return_withdrawal(memory_db, "trainer:acme", "payout-1")
    assert balance(memory_db, PAYOUT_CLEARING) == 0
    books_ok(memory_db)


def test_a_returned_withdrawal_comes_back_to_the_holder(memory_db):
    deposit(memory_db, "acme", 1_000, reference="w-1")
    request_withdrawal(memory_db, "trainer:acme", 1_000, "payout-2")
    back = return_withdrawal(memory_db, "trainer:acme", "payout-2")
    assert (back.debit_account, back.credit_account, back.amount) == (PAYOUT_CLEARING, "trainer:acme", 1_000)
    with pytest.raises(LedgerError, match="already marked returned"):
        confirm_withdrawal(memory_db, "trainer:acme", "payout-2")
    assert balance(memory_db, "trainer:acme") == 1_000
    books_ok(memory_db)


def test_withdrawals_are_refused_with_the_amount_that_would_work(memory_db):
    deposit(memory_db, "acme", 500, reference="w-1")
    with pytest.raises(
        LedgerError, match="holds 500 minor units, less than the 501 asked for; withdraw at most 500"
    ):
        request_withdrawal(memory_db, "trainer:acme", 501, "payout-3")
    with pytest.raises(LedgerError, match="is a escrow account; only contributor, provider and trainer"):
        request_withdrawal(memory_db, "escrow", 1, "payout-4")
    with pytest.raises(LedgerError, match="has no withdrawal with reference 'nope'"):
        confirm_withdrawal(memory_db, "trainer:acme", "nope")
    assert [t.code for t in Ledger(memory_db).transfers()] == [TransferCode.DEPOSIT]  # nothing moved


def test_suspense_moved_for_another_purpose_is_named_by_verify(memory_db):
    deposit_unmatched(memory_db, 300, "bank-9")
    rogue = Transfer.create(
        {"kind": "rogue"},
        debit_account=SUSPENSE,
        credit_account="contributor:mallory",
        amount=300,
        code=TransferCode.PAYOUT,
    )
    with memory_db.transaction() as con:
        Ledger(memory_db).post(con, [rogue])
    [failure] = verify_ledger(memory_db).failures
    assert failure.name == "account_codes"
    assert failure.detail.startswith(
        f"suspense is moved by transfers of another purpose: {rogue.transfer_id[:12]}"
    )
