"""``Ledger.post`` writes a batch set-based: one INSERT for the transfers, one for the accounts, one
grouped balance query for the funds check. These pin what the bulk path must keep: exact HUGEINT
amounts, batch order (table and the batch's audit entry), account flags, and the in-order overdraft check
against an independent in-memory reference."""

from __future__ import annotations

import json

import pytest
from audit_reference import batch_of, reference_rows_digest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.db import ExchangeDB
from databright.errors import LedgerError
from databright.ledger import (
    ESCROW,
    REVENUE,
    AccountKind,
    Ledger,
    Transfer,
    TransferCode,
    deposit,
    verify_ledger,
)
from databright.ledger.store import BALANCE_SQL

HUGE = 10**30  # past int64 (9.2e18) and float64's exact integers (9.0e15)


def balanced(db: ExchangeDB) -> bool:
    """Every ``verify_ledger`` invariant but escrow's, which compares escrow with job rows these
    ledger-only tests do not write."""
    return all(check.ok for check in verify_ledger(db).checks if check.name != "escrow")


def move(n: int, debit: str, credit: str, amount: int, code: TransferCode = TransferCode.PAYOUT) -> Transfer:
    return Transfer.create(
        {"kind": "bulk-test", "n": n}, debit_account=debit, credit_account=credit, amount=amount, code=code
    )


def test_a_10_to_the_30_amount_round_trips_exactly_through_the_bulk_insert(memory_db):
    deposit(memory_db, "acme", HUGE + 1, reference="wire-huge")
    batch = [
        move(1, "trainer:acme", ESCROW, HUGE + 1, TransferCode.ESCROW),
        move(2, ESCROW, REVENUE, HUGE, TransferCode.RECOGNISE),
        move(5, REVENUE, "data_pool", HUGE, TransferCode.SETTLE_DATA),
        move(3, "data_pool", "contributor:alice", HUGE - 7),
        move(4, "data_pool", "contributor:bob", 7),
    ]
    with memory_db.transaction() as con:
        assert Ledger(memory_db).post(con, batch) == batch
    stored = {t.transfer_id: t for t in Ledger(memory_db).transfers()}
    assert [stored[t.transfer_id] for t in batch] == batch
    assert memory_db.query("SELECT typeof(amount) FROM transfers LIMIT 1") == [("HUGEINT",)]
    ledger = Ledger(memory_db)
    assert ledger.balance("contributor:alice") == HUGE - 7
    assert ledger.balance(ESCROW) == 1
    assert ledger.balances()["external:deposits"] == -(HUGE + 1)
    # The batch's audit entry records the exact total, as a decimal string, and digests the exact rows.
    bodies = [json.loads(b) for (b,) in memory_db.query("SELECT body FROM audit_log ORDER BY seq")]
    assert [b["amount"] for b in bodies] == [str(HUGE + 1), str(4 * HUGE + 1)]
    created_at, _, _ = batch_of(memory_db, batch[0].transfer_id)
    assert bodies[-1]["rows_digest"] == reference_rows_digest(memory_db, created_at)
    assert balanced(memory_db)


def test_a_batch_is_stored_and_audited_in_batch_order_with_its_accounts_opened_once(memory_db):
    holders = [f"contributor:h{n:04d}" for n in range(300)]
    deposit(memory_db, "acme", 10**9, reference="wire-1")
    # Descending holders: batch order is not id or account order, so an order kept by accident shows.
    payouts = [move(2 + n, "data_pool", h, 1_000 + n % 3) for n, h in enumerate(reversed(holders))]
    total = sum(t.amount for t in payouts)
    batch = [
        move(0, "trainer:acme", ESCROW, total, TransferCode.ESCROW),
        move(1, ESCROW, REVENUE, total, TransferCode.RECOGNISE),
        move(1_000, REVENUE, "data_pool", total, TransferCode.SETTLE_DATA),
        *payouts,
    ]
    before = dict(memory_db.query("SELECT account_id, created_at FROM accounts"))
    with memory_db.transaction() as con:
        new = Ledger(memory_db).post(con, batch)
    assert new == batch
    # One audit entry for the batch, over its rows in batch order (the table's order).
    created_at, _, seq = batch_of(memory_db, batch[0].transfer_id)
    stored = memory_db.query(
        "SELECT transfer_id FROM transfers WHERE created_at = ? ORDER BY rowid", [created_at]
    )
    assert [r[0] for r in stored] == [t.transfer_id for t in batch]
    [(body,)] = memory_db.query("SELECT body FROM audit_log WHERE seq = ?", [seq])
    assert json.loads(body)["rows"] == len(batch)
    assert json.loads(body)["rows_digest"] == reference_rows_digest(memory_db, created_at)
    accounts = {a.account_id: a for a in Ledger(memory_db).accounts()}
    assert set(holders) <= set(accounts)
    assert all(
        accounts[h].kind is AccountKind.CONTRIBUTOR and accounts[h].debits_must_not_exceed_credits
        for h in holders
    )
    assert accounts["external:deposits"].debits_must_not_exceed_credits is False
    # Accounts that existed keep their row (ON CONFLICT DO NOTHING), opened once each.
    after = dict(memory_db.query("SELECT account_id, created_at FROM accounts"))
    assert {a: after[a] for a in before} == before
    assert (
        memory_db.query("SELECT count(*), count(DISTINCT account_id) FROM accounts")[0] == (len(after),) * 2
    )
    assert Ledger(memory_db).balance("data_pool") == 0
    with memory_db.transaction() as con:
        assert Ledger(memory_db).post(con, batch) == []  # the whole batch again: a retry, nothing new
    assert memory_db.query("SELECT count(*) FROM transfers")[0][0] == len(batch) + 1
    assert balanced(memory_db)


def test_one_grouped_balance_query_agrees_with_the_per_account_query(memory_db):
    deposit(memory_db, "acme", 5_000, reference="w1")
    deposit(memory_db, "beta", HUGE, reference="w2")
    with memory_db.transaction() as con:
        Ledger(memory_db).post(
            con,
            [
                move(1, "trainer:acme", ESCROW, 3_000, TransferCode.ESCROW),
                move(2, "trainer:beta", ESCROW, HUGE - 1, TransferCode.ESCROW),
                move(3, ESCROW, "trainer:acme", 11, TransferCode.REFUND),
            ],
        )
        names = ["trainer:acme", "trainer:beta", ESCROW, "external:deposits", "contributor:never-used"]
        grouped = Ledger(memory_db)._balances_of(con, names)
        one_by_one = {a: int(con.execute(BALANCE_SQL, [a]).fetchall()[0][0]) for a in names}
    assert grouped == one_by_one
    assert grouped == {
        "trainer:acme": 2_011,
        "trainer:beta": 1,
        ESCROW: HUGE - 1 + 2_989,
        "external:deposits": -(HUGE + 5_000),
        "contributor:never-used": 0,
    }


# Holder accounts only: the exchange's own accounts (escrow, revenue, ...) are moved by their own
# transfer codes, which ``balanced`` checks; these moves are about the funds check alone.
FLAGGED = ("trainer:a", "trainer:b", "provider:d", "contributor:c")
amounts = st.one_of(st.integers(1, 50), st.integers(1, 3 * HUGE))
moves = st.lists(
    st.tuples(st.sampled_from(FLAGGED), st.sampled_from(FLAGGED), amounts).filter(lambda m: m[0] != m[1]),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(funded=st.tuples(amounts, amounts), batch=moves)
def test_the_funds_check_matches_an_in_order_reference(funded, batch):
    db = ExchangeDB(None)
    deposit(db, "a", funded[0], reference="wa")
    deposit(db, "b", funded[1], reference="wb")
    transfers = [move(n, d, c, x) for n, (d, c, x) in enumerate(batch)]
    # Reference: apply the batch in order to plain ints; the first debit past a balance refuses all.
    reference = dict.fromkeys(FLAGGED, 0) | {"trainer:a": funded[0], "trainer:b": funded[1]}
    refusal = None
    for t in transfers:
        if reference[t.debit_account] < t.amount:
            refusal = (t, reference[t.debit_account])
            break
        reference[t.debit_account] -= t.amount
        reference[t.credit_account] += t.amount
    ledger = Ledger(db)
    if refusal is None:
        with db.transaction() as con:
            assert ledger.post(con, transfers) == transfers
        assert {a: ledger.balance(a) for a in FLAGGED} == reference
    else:
        t, held = refusal
        with (
            pytest.raises(
                LedgerError, match=rf"account '{t.debit_account}' holds [\d ]+ minor units"
            ) as info,
            db.transaction() as con,
        ):
            ledger.post(con, transfers)
        assert info.value.context["balance"] == held and info.value.context["amount"] == t.amount
        assert t.transfer_id[:12] in str(info.value)
        assert db.query("SELECT count(*) FROM transfers WHERE code = ?", [int(TransferCode.PAYOUT)]) == [(0,)]
    assert balanced(db)
