"""Clock skew: a receipt whose ``issued_at`` is a day off still settles in its own period.

Periods are not read from clocks. A job belongs to the period it was submitted in (``jobs.period``)
and its usage receipt carries that period in its *signed* statement; settlement pays a period's
completed jobs and checks ``receipt.period`` against it, and intake admits a receipt only to the
period it names (``WRONG_PERIOD`` otherwise). ``issued_at`` is checked only against the attestation
result's validity window and the verifier's clock (``ISSUED_IN_FUTURE`` beyond 5 minutes ahead).

The receipts here go the real way: a simulated platform attests an enclave session, the verifier
appraises it and signs the result, the session signs ``UsageReceipt``s, and settlement verifies them
with ``verify_usage_receipt`` (result signature, archived evidence, session signature, window).
Period 2026-10 gets two jobs whose workers' clocks are a day off across its boundaries: one issued
2026-09-30 (a day early, in September by the clock), one 2026-11-01 (a day late, in November).
Both settle in October; September and November have nothing to settle.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from settlement_testkit import add_job, add_valuation, make_valuation, make_verify_valuation

from databright.config import Settings
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import ReceiptRejected, SettlementError
from databright.ledger import deposit, verify_ledger
from databright.settlement import AllocationPolicy, settle_period
from databright.storage.objectstore import LocalObjectStore
from databright.trust import (
    AttestationPolicy,
    OwnerUsage,
    SimulatedAttester,
    SimulatedVendorRoot,
    SimulatedVerifier,
    UsageReceipt,
    binding_report_data,
    load_verifier_key,
    provision_platform,
    receipt_digest,
    sign_receipt,
    verify_usage_receipt,
)
from databright.trust.intake import ReceiptIntake

PERIOD = "2026-10"
TASK = "toy_task"
MEASUREMENT = "ab" * 32
ROOT = "12" * 32
UTC = dt.UTC
EARLY = dt.datetime(2026, 9, 30, 1, 0, tzinfo=UTC)  # true time 2026-10-01 01:00, clock a day behind
LATE = dt.datetime(2026, 11, 1, 23, 0, tzinfo=UTC)  # true time 2026-10-31 23:00, clock a day ahead


@pytest.fixture
def exchange(settings: Settings, memory_db: ExchangeDB) -> dict[str, Any]:
    """A verifier, one enclave session attested twice (once near each skewed clock reading), and
    the two jobs of PERIOD with real signed usage receipts and valuations."""
    store = LocalObjectStore(settings.store_dir)
    root = SimulatedVendorRoot.load_or_create(settings.keys_dir)
    platform = provision_platform(
        settings.keys_dir, "plat-1", tcb_svn=3, lifetime_days=90, now=EARLY - dt.timedelta(days=2)
    )
    policy = AttestationPolicy.load(settings.attestation_policy_path).allowing(TASK, MEASUREMENT)
    verifier_key = load_verifier_key(settings.keys_dir)
    verifier = SimulatedVerifier(root.public_key, policy, memory_db, store, verifier_key)
    attester = SimulatedAttester(platform)
    session = SigningKey.from_seed(b"clock-skew enclave session")

    def attest(at: dt.datetime):  # type: ignore[no-untyped-def]
        nonce = verifier.issue_nonce(now=at)
        evidence = attester.evidence(
            measurement=MEASUREMENT,
            signer_id="databright-dev",
            product_id=1,
            svn=2,
            report_data=binding_report_data(session.public_key, nonce),
            debug=False,
        )
        result, _ = verifier.appraise(
            evidence,
            session_public_key=session.public_key,
            nonce=nonce,
            task=TASK,
            provider_id="prov-a",
            now=at,
        )
        return result

    deposit(memory_db, "acme", 10_000_000, reference="wire-1")
    envelopes, receipts = [], []
    for sequence, (job_id, issued, owners) in enumerate(
        [
            ("j-early", EARLY, {"alice": OwnerUsage(rows_used=3, visits=3, value=0.25)}),
            ("j-late", LATE, {"bob": OwnerUsage(rows_used=2, visits=4, value=0.5)}),
        ]
    ):
        result = attest(issued - dt.timedelta(minutes=30))
        receipt = UsageReceipt(
            period=PERIOD,
            job_id=job_id,
            run_id=f"run-{job_id}",
            provider_id=result.provider_id,
            attestation_result_id=result.result_id,
            assurance=result.assurance,
            measurement=result.measurement,
            task=result.task,
            dataset="adult",
            dataset_version=2,
            dataset_merkle_root=ROOT,
            owners=owners,
            records_root="34" * 32,
            valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": "56" * 32},
            work_units=600,
            model_digest="78" * 32,
            sequence=sequence,
            previous_receipt_digest=receipt_digest(envelopes[-1]) if envelopes else None,
            issued_at=issued.isoformat(),
        )
        envelope = sign_receipt(session, receipt)
        add_job(memory_db, store, session, receipt, payment=1_000_000, envelope=envelope, valued=False)  # type: ignore[arg-type]
        add_valuation(store, memory_db, session, make_valuation(receipt, envelope))  # type: ignore[arg-type]
        envelopes.append(envelope)
        receipts.append(receipt)
    return {
        "db": memory_db,
        "store": store,
        "session": session,
        "verifier_key": verifier_key,
        "envelopes": envelopes,
        "receipts": receipts,
    }


def settle(exchange: dict[str, Any], settings: Settings, period: str):  # type: ignore[no-untyped-def]
    db, store = exchange["db"], exchange["store"]
    public = exchange["verifier_key"].public_key
    return settle_period(
        db,
        store,
        period=period,
        policy=AllocationPolicy.load(settings.allocation_policy_path),
        verify=lambda envelope: verify_usage_receipt(db, store, public, envelope),
        verify_valuation=make_verify_valuation(exchange["session"].public_key),
        statements_dir=settings.statements_dir,
    )


def test_skewed_receipts_verify_and_carry_their_signed_period(exchange):
    db, store, public = exchange["db"], exchange["store"], exchange["verifier_key"].public_key
    for envelope, issued in zip(exchange["envelopes"], (EARLY, LATE), strict=True):
        receipt = verify_usage_receipt(db, store, public, envelope)
        assert receipt.period == PERIOD
        assert receipt.issued_at_time == issued
        assert f"{issued.year}-{issued.month:02d}" != PERIOD  # the clock says another month
    assert db.query("SELECT job_id, period FROM jobs ORDER BY job_id") == [
        ("j-early", PERIOD),
        ("j-late", PERIOD),
    ]


def test_skewed_receipts_settle_in_their_own_period(exchange, settings):
    settlement = settle(exchange, settings, PERIOD)
    assert settlement.state == "posted"
    assert sorted(j.job_id for j in settlement.jobs) == ["j-early", "j-late"]
    # 1 000 000 each: 700 000 data to the one owner, 200 000 compute, 100 000 fee.
    assert settlement.totals["contributor:alice"] == 700_000
    assert settlement.totals["contributor:bob"] == 700_000
    assert settlement.totals["provider:prov-a"] == 400_000
    db = exchange["db"]
    assert db.query("SELECT DISTINCT period FROM transfers WHERE job_id IS NOT NULL") == [(PERIOD,)]
    for neighbour in ("2026-09", "2026-11"):
        with pytest.raises(SettlementError, match=f"period {neighbour} has no completed jobs"):
            settle(exchange, settings, neighbour)
        assert db.query("SELECT count(*) FROM transfers WHERE period = ?", [neighbour]) == [(0,)]
    assert verify_ledger(db).ok


def test_intake_admits_a_receipt_only_to_the_period_it_signed(exchange):
    db, store = exchange["db"], exchange["store"]
    intake = ReceiptIntake(db, store, exchange["verifier_key"].public_key)
    roots = {("adult", 2): ROOT}
    later = LATE + dt.timedelta(days=1)
    early, late = exchange["envelopes"]
    for wrong in ("2026-09", "2026-11"):
        with pytest.raises(ReceiptRejected) as info:
            intake.admit(late, period=wrong, known_roots=roots, now=later)
        assert info.value.context["reason"] == "WRONG_PERIOD"
        assert "submit it to the 2026-10 intake" in str(info.value)
    report = intake.admit_many([early, late], period=PERIOD, known_roots=roots, now=later)
    assert [o.status for o in report.outcomes] == ["admitted", "admitted"]
    assert db.query("SELECT job_id, period FROM usage_receipts ORDER BY sequence") == [
        ("j-early", PERIOD),
        ("j-late", PERIOD),
    ]


def test_a_clock_a_day_ahead_of_the_verifier_is_refused_not_moved(exchange):
    """Seen from a verifier whose clock reads a day before the receipt's ``issued_at``, the receipt
    is from the future: refused (``ISSUED_IN_FUTURE``), never re-dated into another period."""
    db, store, public = exchange["db"], exchange["store"], exchange["verifier_key"].public_key
    late = exchange["envelopes"][1]
    with pytest.raises(ReceiptRejected) as info:
        verify_usage_receipt(db, store, public, late, now=LATE - dt.timedelta(days=1))
    assert info.value.context["reason"] == "ISSUED_IN_FUTURE"
    # Five minutes of skew is tolerated (receipts.CLOCK_SKEW); the period is still the signed one.
    assert verify_usage_receipt(db, store, public, late, now=LATE - dt.timedelta(minutes=4)).period == PERIOD
