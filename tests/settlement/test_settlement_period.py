"""settle_period end to end: a file database, a local object store and Ed25519-signed receipts."""

from __future__ import annotations

import json

import pytest
from settlement_testkit import (
    PERIOD,
    add_job,
    add_valuation,
    make_receipt,
    make_valuation,
    make_verify,
    make_verify_valuation,
    sign_receipt,
    transfers_table,
)

from databright.config import Settings
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import SettlementConflict, SettlementError
from databright.ledger import Ledger, account_balances, balance, deposit, verify_ledger
from databright.ledger.transfers import SETTLE_CODES
from databright.settlement import AllocationPolicy, Settlement, settle_period
from databright.storage.objectstore import LocalObjectStore


def fund_two_jobs(db: ExchangeDB, store: LocalObjectStore, session_key: SigningKey) -> ExchangeDB:
    deposit(db, "acme", 5_000_000, reference="wire-1")
    deposit(db, "globex", 1_000_000, reference="wire-2")
    add_job(
        db,
        store,
        session_key,
        make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)}, provider_id="p1"),
        payment=1_000_000,
        trainer_id="acme",
    )
    add_job(
        db,
        store,
        session_key,
        make_receipt("j-2", {"bob": (5, 5, 0.25), "carol": (7, 14, 0.5)}, provider_id="p2", work_units=800),
        payment=333_333,
        trainer_id="globex",
    )
    return db


@pytest.fixture
def two_jobs_file(file_db: ExchangeDB, store: LocalObjectStore, session_key: SigningKey) -> ExchangeDB:
    """The exchange database file at ``settings.db_path``, as the CLI and flows use it."""
    return fund_two_jobs(file_db, store, session_key)


@pytest.fixture
def two_jobs(memory_db: ExchangeDB, store: LocalObjectStore, session_key: SigningKey) -> ExchangeDB:
    """The same two jobs in the in-memory backend (same SQL), for the faster edge cases."""
    return fund_two_jobs(memory_db, store, session_key)


def settle(db, store, settings, policy, key, **kw) -> Settlement:
    return settle_period(
        db,
        store,
        period=PERIOD,
        policy=policy,
        verify=make_verify(key.public_key),
        verify_valuation=make_verify_valuation(key.public_key),
        statements_dir=settings.statements_dir,
        **kw,
    )


def test_two_jobs_settle_into_exact_payouts(two_jobs_file, store, settings: Settings, policy, session_key):
    settlement = settle(two_jobs_file, store, settings, policy, session_key, approver="finance@databright")
    assert settlement.state == "posted"
    assert settlement.assurance == "simulated"
    assert settlement.approver == "finance@databright"
    assert settlement.policy_version == policy.version
    # j-1: 700 000 data split 3:1; j-2: 333 333 -> 233 333 / 66 667 / 33 333, data split 1:2.
    # 233 333 * 1/3 = 77 777.67 and * 2/3 = 155 555.33, so bob rounds up.
    expected = {
        "contributor:alice": 525_000,
        "contributor:bob": 175_000 + 77_778,
        "contributor:carol": 155_555,
        "provider:p1": 200_000,
        "provider:p2": 66_667,
        "exchange_fee": 100_000 + 33_333,
    }
    assert dict(settlement.totals) == expected
    balances = account_balances(two_jobs_file)
    for holder, amount in expected.items():
        assert balances[holder] == amount
    assert balances["escrow"] == 0
    assert balances["data_pool"] == 0
    assert balances["compute_pool"] == 0
    assert balances["trainer:acme"] == 4_000_000
    assert balances["trainer:globex"] == 666_667
    assert sum(balances.values()) == 0

    row = two_jobs_file.query(
        "SELECT state, inputs_digest, allocation_root, assurance, approver, posted_at "
        "FROM settlements WHERE period = ?",
        [PERIOD],
    )[0]
    assert row[:5] == (
        "posted",
        settlement.inputs_digest,
        settlement.allocation_root,
        "simulated",
        "finance@databright",
    )
    assert row[5] is not None
    stored = two_jobs_file.query("SELECT sum(amount), count(*) FROM allocations WHERE period = ?", [PERIOD])[
        0
    ]
    assert (int(stored[0]), stored[1]) == (1_333_333, len(settlement.allocations))

    frame = settlement.to_dataframe()
    assert sum(frame["amount"]) == 1_333_333
    assert set(frame["role"]) == {"data", "compute", "fee"}

    report = verify_ledger(two_jobs_file)
    assert report.ok, str(report)
    lines = str(report)
    assert "job j-1: pools and fee 1 000 000 = revenue = payment, escrow closed" in lines
    assert "job j-2: pools and fee 333 333 = revenue = payment, escrow closed" in lines
    assert f"period {PERIOD}: payouts 1 200 000 + fee 133 333 = revenue 1 333 333" in lines
    assert "escrow holds 0 = budgets of 0 open jobs" in lines


def test_rerun_returns_the_same_settlement_and_posts_nothing(
    two_jobs_file, store, settings, policy, session_key
):
    first = settle(two_jobs_file, store, settings, policy, session_key)
    before = transfers_table(two_jobs_file)
    settlements_before = two_jobs_file.query("SELECT * FROM settlements")
    second = settle(two_jobs_file, store, settings, policy, session_key, approver="someone-else")
    assert second == first
    assert transfers_table(two_jobs_file) == before
    assert two_jobs_file.query("SELECT * FROM settlements") == settlements_before


def test_different_inputs_after_posting_conflict(two_jobs, store, settings, policy, session_key):
    settle(two_jobs, store, settings, policy, session_key)
    before = transfers_table(two_jobs)
    add_job(two_jobs, store, session_key, make_receipt("j-3", {"dave": (1, 1, 0.1)}), payment=10_000)
    with pytest.raises(SettlementConflict, match=f"period {PERIOD} is already posted"):
        settle(two_jobs, store, settings, policy, session_key)
    other_policy = AllocationPolicy.from_mapping({**policy.to_dict(), "version": 2})
    with pytest.raises(SettlementConflict):
        settle(two_jobs, store, settings, other_policy, session_key)
    # The conflicting run posted nothing beyond j-3's own escrow.
    after = transfers_table(two_jobs)
    assert [r for r in after if r not in before] == [r for r in after if r[8] == "j-3" and r[5] == 2]


def test_a_rejected_receipt_posts_nothing_and_names_the_job(two_jobs, store, settings, policy, session_key):
    forged = sign_receipt(
        SigningKey.from_seed(b"someone else"), make_receipt("j-4", {"mallory": (100, 100, 9.0)})
    )
    genuine = sign_receipt(session_key, make_receipt("j-4", {"mallory": (100, 100, 9.0)}))
    add_job(
        two_jobs,
        store,
        session_key,
        make_receipt("j-4", {"mallory": (100, 100, 9.0)}),
        payment=50_000,
        envelope=forged,
        valued=False,
    )
    # The value step valued the genuine receipt; the store was then given a forged one.
    add_valuation(
        store, two_jobs, session_key, make_valuation(make_receipt("j-4", {"mallory": (1, 1, 9.0)}), genuine)
    )
    before = transfers_table(two_jobs)
    with pytest.raises(SettlementError, match=r"job j-4: receipt rejected: ReceiptRejected") as caught:
        settle(two_jobs, store, settings, policy, session_key)
    assert "nothing posted" in str(caught.value)
    assert "j-1" not in str(caught.value)
    assert transfers_table(two_jobs) == before
    settle_legs = two_jobs.query(
        "SELECT count(*) FROM transfers WHERE list_contains(?, code)", [[int(c) for c in SETTLE_CODES]]
    )[0][0]
    assert settle_legs == 0
    state, reason = two_jobs.query("SELECT state, reason FROM settlements WHERE period = ?", [PERIOD])[0]
    assert state == "rejected"
    assert "j-4" in reason
    assert not (settings.statements_dir / PERIOD).exists()

    # Replacing the forged receipt with the real one lets the period be claimed again and settle.
    store.put_bytes(f"receipts/{PERIOD}/j-4.json", json.dumps(genuine).encode())
    settlement = settle(two_jobs, store, settings, policy, session_key)
    assert settlement.totals["contributor:mallory"] == 35_000
    assert verify_ledger(two_jobs).ok


def test_receipt_that_does_not_match_its_job_is_rejected(two_jobs, store, settings, policy, session_key):
    wrong = make_receipt("j-5", {"alice": (1, 1, 0.1)}, provider_id="p1")
    envelope = sign_receipt(session_key, make_receipt("j-5", {"alice": (1, 1, 0.1)}, provider_id="p9"))
    add_job(two_jobs, store, session_key, wrong, payment=20_000, envelope=envelope)
    with pytest.raises(
        SettlementError, match=r"job j-5: its receipt does not match the job: provider_id 'p9'"
    ):
        settle(two_jobs, store, settings, policy, session_key)


def test_unescrowed_job_is_rejected(two_jobs, store, settings, policy, session_key):
    add_job(
        two_jobs,
        store,
        session_key,
        make_receipt("j-6", {"alice": (1, 1, 0.1)}),
        payment=20_000,
        escrow=False,
    )
    with pytest.raises(SettlementError, match=r"job j-6: escrow holds 0 for it"):
        settle(two_jobs, store, settings, policy, session_key)
    assert balance(two_jobs, "escrow") == 1_333_333


def test_period_without_completed_jobs_is_an_error(memory_db, store, settings, policy, session_key):
    deposit(memory_db, "acme", 100_000, reference="w")
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-9", {"alice": (1, 1, 0.1)}),
        payment=10_000,
        status="escrowed",
    )
    with pytest.raises(SettlementError, match=f"period {PERIOD} has no completed jobs"):
        settle(memory_db, store, settings, policy, session_key)
    assert memory_db.query("SELECT count(*) FROM settlements")[0][0] == 0
    with pytest.raises(SettlementError, match="is not a month"):
        settle_period(
            memory_db,
            store,
            period="2026-13",
            policy=policy,
            verify=make_verify(session_key.public_key),
            verify_valuation=make_verify_valuation(session_key.public_key),
            statements_dir=settings.statements_dir,
        )


def test_hardware_receipts_are_reported_as_hardware(memory_db, store, settings, policy, session_key):
    deposit(memory_db, "acme", 100_000, reference="w")
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-h", {"alice": (1, 1, 0.1)}, assurance="hardware"),
        payment=10_000,
    )
    settlement = settle(memory_db, store, settings, policy, session_key)
    assert settlement.assurance == "hardware"
    assert "assurance: hardware" in settlement.summary()


def test_a_resumed_claim_settles_once(two_jobs, store, settings, policy, session_key):
    """A run that stopped after claiming leaves a row; the next run resumes it and posts once."""
    from databright.settlement.store import claim

    with two_jobs.transaction() as con:
        first = claim(con, PERIOD)
        again = claim(con, PERIOD)
    assert first == again
    assert two_jobs.query("SELECT count(*) FROM settlements")[0][0] == 1
    settlement = settle(two_jobs, store, settings, policy, session_key)
    assert settlement.state == "posted"
    assert len(Ledger(two_jobs).transfers(period=PERIOD)) == len(transfers_table(two_jobs)) - 2


def test_real_trust_usage_receipts_settle(memory_db, store, settings, policy, session_key):
    """The receipts the trust package signs fit ``ReceiptLike``: sign with it, verify with Ed25519."""
    from databright.crypto import open_envelope
    from databright.trust import USAGE_RECEIPT_TYPE, OwnerUsage, UsageReceipt
    from databright.trust.receipts import sign_receipt as sign_usage_receipt

    mine = make_receipt("j-t", {"alice": (3, 6, 0.02), "bob": (1, 1, 0.01)})
    receipt = UsageReceipt(
        period=PERIOD,
        job_id="j-t",
        run_id="run-1",
        provider_id="p1",
        attestation_result_id="ar-p1",
        assurance="simulated",
        measurement=mine.measurement,
        task="tabular_logreg",
        dataset="census",
        dataset_version=1,
        dataset_merkle_root=mine.dataset_merkle_root,
        owners={o: OwnerUsage(u.rows_used, u.visits, u.value) for o, u in mine.owners.items()},
        records_root=mine.records_root,
        valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": mine.records_root},
        work_units=mine.work_units,
        model_digest=mine.model_digest,
        sequence=0,
        previous_receipt_digest=None,
        issued_at=mine.issued_at,
    )

    def verify(envelope):
        return UsageReceipt.from_statement(
            json.loads(open_envelope(envelope, USAGE_RECEIPT_TYPE, session_key.public_key))
        )

    deposit(memory_db, "acme", 1_000_000, reference="w")
    add_job(
        memory_db, store, session_key, mine, payment=90_000, envelope=sign_usage_receipt(session_key, receipt)
    )
    settlement = settle_period(
        memory_db,
        store,
        period=PERIOD,
        policy=policy,
        verify=verify,
        verify_valuation=make_verify_valuation(session_key.public_key),
        statements_dir=settings.statements_dir,
    )
    # 63 000 data split 2:1 by value.
    assert settlement.totals["contributor:alice"] == 42_000
    assert settlement.totals["contributor:bob"] == 21_000
    assert verify_ledger(memory_db).ok


def test_a_posted_period_whose_receipt_no_longer_verifies_stays_posted(
    two_jobs, store, settings, policy, session_key
):
    settle(two_jobs, store, settings, policy, session_key)
    before = transfers_table(two_jobs)
    with pytest.raises(SettlementError, match="already posted, but re-checking its receipts failed"):
        settle(two_jobs, store, settings, policy, SigningKey.from_seed(b"rotated"))
    assert two_jobs.query("SELECT state FROM settlements")[0][0] == "posted"
    assert transfers_table(two_jobs) == before


def test_the_unused_budget_goes_back_to_the_trainer_when_the_job_settles(
    memory_db, store, settings, policy, session_key
):
    deposit(memory_db, "acme", 2_000_000, reference="wire-budget")
    receipt = make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)}, provider_id="p1")
    add_job(memory_db, store, session_key, receipt, payment=1_000_000, budget=1_500_000, trainer_id="acme")
    assert balance(memory_db, "trainer:acme") == 500_000 and balance(memory_db, "escrow") == 1_500_000

    settlement = settle(memory_db, store, settings, policy, session_key)

    assert settlement.total_paid == 1_000_000
    assert balance(memory_db, "trainer:acme") == 1_000_000  # 2.0 deposited - 1.0 charged
    assert {
        a: balance(memory_db, a) for a in ("escrow", "revenue", "data_pool", "compute_pool")
    } == dict.fromkeys(("escrow", "revenue", "data_pool", "compute_pool"), 0)
    closing = {
        t.code.label: (t.debit_account, t.credit_account, t.amount, t.settlement_id)
        for t in Ledger(memory_db).transfers(job_id="j-1")
        if t.code.label in ("recognise", "refund")
    }
    assert closing == {
        "recognise": ("escrow", "revenue", 1_000_000, f"settlement:{PERIOD}"),
        "refund": ("escrow", "trainer:acme", 500_000, f"settlement:{PERIOD}"),
    }
    report = verify_ledger(memory_db)
    assert report.ok, str(report)
    before = transfers_table(memory_db)
    assert settle(memory_db, store, settings, policy, session_key) == settlement  # re-run: nothing new
    assert transfers_table(memory_db) == before


def test_a_job_whose_escrow_is_not_its_budget_rejects_the_period(
    memory_db, store, settings, policy, session_key
):
    deposit(memory_db, "acme", 2_000_000, reference="wire-short")
    receipt = make_receipt("j-1", {"alice": (30, 60, 0.3)}, provider_id="p1")
    add_job(memory_db, store, session_key, receipt, payment=1_000_000, escrow=False)
    from databright.ledger import escrow_job_payment

    escrow_job_payment(memory_db, trainer_id="acme", job_id="j-1", period=PERIOD, amount=900_000)
    with pytest.raises(SettlementError, match=r"escrow holds 900 000 for it .* but its budget is 1 000 000"):
        settle(memory_db, store, settings, policy, session_key)
    assert Ledger(memory_db).transfers(job_id="j-1")[-1].code.label == "escrow"  # nothing moved
