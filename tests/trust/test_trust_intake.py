"""Receipt intake: every fault refused with its code, replays counted once, chains audited."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trust_testkit import NOW, TASK

from databright.crypto import PublicKey, SigningKey, canonical_json, sign_envelope
from databright.db import ExchangeDB
from databright.errors import ConfigError, ReceiptRejected
from databright.storage.objectstore import LocalObjectStore
from databright.trust import (
    USAGE_RECEIPT_TYPE,
    AttestationResult,
    OwnerUsage,
    SimulatedVerifier,
    UsageReceipt,
    binding_report_data,
    receipt_digest,
    sign_receipt,
)
from databright.trust.intake import COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK, Admission, ReceiptIntake, Rejection
from databright.trust.receipts import ComputeClaim

PERIOD = "2026-11"
ROOT = "12" * 32
ROOTS = {("adult", 2): ROOT}
LATER = NOW + dt.timedelta(hours=2)


def attest(
    verifier: SimulatedVerifier, make_evidence: Callable[..., Any], key: SigningKey
) -> AttestationResult:
    """A real appraisal of evidence whose report data binds ``key``."""
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce, report_data=binding_report_data(key.public_key, nonce))
    result, _ = verifier.appraise(
        evidence, session_public_key=key.public_key, nonce=nonce, task=TASK, provider_id="prov-a", now=NOW
    )
    return result


def receipt(
    result: AttestationResult, sequence: int = 0, previous: str | None = None, **changes
) -> UsageReceipt:
    base = UsageReceipt(
        period=PERIOD,
        job_id=f"job-{result.session_public_key[:8]}-{sequence}",
        run_id="run-1",
        provider_id=result.provider_id,
        attestation_result_id=result.result_id,
        assurance=result.assurance,
        measurement=result.measurement,
        task=result.task,
        dataset="adult",
        dataset_version=2,
        dataset_merkle_root=ROOT,
        owners={"alice": OwnerUsage(rows_used=2, visits=5, value=0.5)},
        records_root="34" * 32,
        valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": "56" * 32},
        work_units=600,
        model_digest="78" * 32,
        sequence=sequence,
        previous_receipt_digest=previous,
        issued_at=(NOW + dt.timedelta(minutes=sequence)).isoformat(),
    )
    return dataclasses.replace(base, **changes)


def chain(key: SigningKey, result: AttestationResult, n: int) -> list[dict[str, Any]]:
    """``n`` receipts as an honest worker signs them: each names the previous one's digest."""
    out: list[dict[str, Any]] = []
    for sequence in range(n):
        previous = receipt_digest(out[-1]) if out else None
        out.append(sign_receipt(key, receipt(result, sequence, previous)))
    return out


def rejected(reason: str, intake: ReceiptIntake, envelope: dict[str, Any], **kwargs) -> ReceiptRejected:
    options = {"period": PERIOD, "known_roots": ROOTS, "now": LATER, **kwargs}
    with pytest.raises(ReceiptRejected) as info:
        intake.admit(envelope, **options)
    assert info.value.context["reason"] == reason, str(info.value)
    return info.value


def admit(intake: ReceiptIntake, envelope: dict[str, Any]) -> Admission:
    return intake.admit(envelope, period=PERIOD, known_roots=ROOTS, now=LATER)


def stored_count(intake: ReceiptIntake) -> int:
    return intake.db.query("SELECT count(*) FROM usage_receipts")[0][0]


@pytest.fixture
def intake(verifier, store, verifier_key) -> ReceiptIntake:
    return ReceiptIntake(verifier.db, store, verifier_key.public_key)


@pytest.fixture
def result(verifier, make_evidence, session_key) -> AttestationResult:
    return attest(verifier, make_evidence, session_key)


# --- the honest path ------------------------------------------------------------------------------


def test_an_honest_chain_is_admitted_in_order(intake, result, session_key):
    envelopes = chain(session_key, result, 3)
    admissions = [admit(intake, e) for e in envelopes]
    assert [a.status for a in admissions] == ["admitted"] * 3
    for admission, envelope in zip(admissions, envelopes, strict=True):
        # The digest is sha256 of the signed statement bytes, computed here independently.
        assert admission.digest == hashlib.sha256(base64.b64decode(envelope["payload"])).hexdigest()
        assert admission.session == session_key.public_key.hex
    status = intake.session_status(session_key.public_key)
    assert (status.state, status.receipts, status.last_sequence) == ("active", 3, 2)
    assert json.loads(json.dumps(status.to_dict()))["quarantine_reason"] is None
    report = intake.verify_chain(session_key.public_key.hex)
    assert report.ok and not report.truncated and report.receipts == 3 and not report.quarantined
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    assert admissions[2].to_dict()["sequence"] == 2


def test_known_roots_default_to_the_registered_dataset_versions(intake, result, session_key):
    intake.db.query(
        """INSERT INTO dataset_versions VALUES ('adult', 2, 1, 'c', 's', ?, 10, 'm', 'md', 'p', 'pd', 'dv',
           ?)""",
        [ROOT, NOW],
    )
    first, second = chain(session_key, result, 2)
    assert intake.admit(first, period=PERIOD, now=LATER).status == "admitted"
    with pytest.raises(ReceiptRejected) as info:
        intake.admit(second, period=PERIOD, now=LATER, known_roots=lambda name, version: "ab" * 32)
    assert info.value.context["reason"] == "DATASET_ROOT_MISMATCH"
    assert intake.admit(second, period=PERIOD, now=LATER, known_roots=lambda n, v: ROOT).status == "admitted"


# --- one test per fault ---------------------------------------------------------------------------


def test_forged_receipt_signed_by_another_key(intake, result, session_key):
    forged = sign_receipt(SigningKey.from_seed(b"the host"), receipt(result, work_units=10**9))
    err = rejected("SIGNATURE_INVALID", intake, forged)
    assert result.result_id in str(err)
    assert stored_count(intake) == 0 and intake.session_status(session_key.public_key).state == "unknown"


def test_evidence_binding_key_a_with_receipts_signed_by_key_b(intake, verifier, make_evidence, session_key):
    key_b = SigningKey.from_seed(b"session B")
    result_a = attest(verifier, make_evidence, session_key)
    result_b = attest(verifier, make_evidence, key_b)  # B is attested too, but for its own key
    rejected("SIGNATURE_INVALID", intake, sign_receipt(key_b, receipt(result_a)))
    assert admit(intake, sign_receipt(key_b, receipt(result_b))).status == "admitted"


def test_receipt_naming_an_unknown_result(intake, result, session_key):
    forged = dataclasses.replace(result, result_id="ar-forged")
    rejected("RESULT_UNKNOWN", intake, sign_receipt(session_key, receipt(forged)))
    # A malformed receipt is reported as malformed, whatever result it names.
    statement = receipt(forged).statement()
    statement["predicate"]["extra"] = 1
    rejected("MALFORMED", intake, sign_envelope(session_key, USAGE_RECEIPT_TYPE, canonical_json(statement)))


def test_replayed_receipt_is_stored_and_counted_once(intake, result, session_key):
    envelope = chain(session_key, result, 1)[0]
    statuses = [admit(intake, envelope).status for _ in range(3)]
    assert statuses == ["admitted", "replayed", "replayed"]
    report = intake.admit_many([envelope, envelope], period=PERIOD, known_roots=ROOTS, now=LATER)
    assert (report.admitted, report.replayed, len(report.rejections)) == (0, 2, 0)
    assert stored_count(intake) == 1 and intake.session_status(session_key.public_key).receipts == 1


def test_a_duplicate_inside_one_batch_is_counted_once(intake, result, session_key):
    envelope = chain(session_key, result, 1)[0]
    report = intake.admit_many([envelope, envelope], period=PERIOD, known_roots=ROOTS, now=LATER)
    assert [o.status for o in report.outcomes if isinstance(o, Admission)] == ["admitted", "replayed"]
    assert stored_count(intake) == 1


def test_equivocation_quarantines_the_session(intake, result, session_key):
    first, second = chain(session_key, result, 2)
    admit(intake, first)
    other = sign_receipt(session_key, receipt(result, 0, work_units=601))  # same slot, other content
    err = rejected("EQUIVOCATION", intake, other)
    assert receipt_digest(first) in str(err) and receipt_digest(other) in str(err)
    status = intake.session_status(session_key.public_key)
    assert status.state == "quarantined" and status.quarantine_reason == "EQUIVOCATION"
    assert (status.quarantined_sequence, status.stored_digest, status.conflicting_digest) == (
        0,
        receipt_digest(first),
        receipt_digest(other),
    )
    kept = intake.db.query("SELECT conflicting_envelope FROM quarantined_sessions")[0][0]
    assert json.loads(kept) == other
    # Every later receipt of the session is refused, the honest next one and a replay alike.
    rejected("SESSION_QUARANTINED", intake, second)
    rejected("SESSION_QUARANTINED", intake, first)
    assert stored_count(intake) == 1 and intake.verify_chain(session_key.public_key).quarantined


def test_only_the_session_key_can_get_its_session_quarantined(intake, result, session_key):
    admit(intake, chain(session_key, result, 1)[0])
    rejected(
        "SIGNATURE_INVALID",
        intake,
        sign_receipt(SigningKey.from_seed(b"x"), receipt(result, 0, work_units=1)),
    )
    assert intake.session_status(session_key.public_key).state == "active"


def test_wrong_period(intake, result, session_key):
    envelope = sign_receipt(session_key, receipt(result, period="2026-10"))
    err = rejected("WRONG_PERIOD", intake, envelope)
    assert "2026-10" in str(err) and PERIOD in str(err)
    assert stored_count(intake) == 0
    with pytest.raises(ConfigError):
        intake.admit(envelope, period="2026-13", known_roots=ROOTS, now=LATER)


def test_expired_attestation(intake, result, session_key):
    late = sign_receipt(session_key, receipt(result, issued_at=result.expires_at))
    rejected("RESULT_EXPIRED", intake, late, now=NOW + dt.timedelta(days=2))
    assert stored_count(intake) == 0


def test_unknown_dataset_root(intake, result, session_key):
    envelope = sign_receipt(session_key, receipt(result, dataset_version=3))
    err = rejected("UNKNOWN_DATASET_ROOT", intake, envelope)
    assert "'adult' v3" in str(err)
    rejected("UNKNOWN_DATASET_ROOT", intake, envelope, known_roots=None)  # the registry is empty


def test_mismatched_dataset_root(intake, result, session_key):
    envelope = sign_receipt(session_key, receipt(result, dataset_merkle_root="ef" * 32))
    err = rejected("DATASET_ROOT_MISMATCH", intake, envelope)
    assert "ef" * 32 in str(err) and ROOT in str(err)


def test_chain_broken(intake, result, session_key):
    first = chain(session_key, result, 1)[0]
    rejected("CHAIN_BROKEN", intake, sign_receipt(session_key, receipt(result, 0, "00" * 32)))
    admit(intake, first)
    rejected("CHAIN_BROKEN", intake, sign_receipt(session_key, receipt(result, 1, "00" * 32)))
    assert stored_count(intake) == 1


def test_reordered_chain_is_refused(intake, result, session_key):
    r0, r1 = chain(session_key, result, 2)
    # Sequence 2 signed as if it followed receipt 0: the links no longer follow the sequence.
    r2 = sign_receipt(session_key, receipt(result, 2, receipt_digest(r0)))
    admit(intake, r0)
    admit(intake, r1)
    err = rejected("CHAIN_BROKEN", intake, r2)
    assert receipt_digest(r1) in str(err)


def test_gap_is_refused_until_the_missing_receipt_arrives(intake, result, session_key):
    r0, r1, r2 = chain(session_key, result, 3)
    admit(intake, r0)
    err = rejected("CHAIN_GAP", intake, r2)
    assert "submit receipts in sequence order" in str(err)
    assert [admit(intake, e).status for e in (r1, r2)] == ["admitted", "admitted"]


def test_a_batch_is_admitted_in_sequence_order_whatever_its_order(intake, result, session_key):
    envelopes = chain(session_key, result, 4)
    report = intake.admit_many(list(reversed(envelopes)), period=PERIOD, known_roots=ROOTS, now=LATER)
    assert report.admitted == 4 and intake.verify_chain(session_key.public_key).ok


def test_one_bad_receipt_does_not_block_a_batch(intake, result, session_key):
    good = chain(session_key, result, 2)
    bad = sign_receipt(SigningKey.from_seed(b"host"), receipt(result, 2, receipt_digest(good[1])))
    report = intake.admit_many(
        [good[0], bad, good[1], {"payloadType": "x"}], period=PERIOD, known_roots=ROOTS, now=LATER
    )
    reasons = [o.reason for o in report.outcomes if isinstance(o, Rejection)]
    assert report.admitted == 2 and reasons == ["SIGNATURE_INVALID", "MALFORMED"]
    assert [r.index for r in report.rejections] == [1, 3]
    assert json.loads(json.dumps(report.to_dict()))["rejected"] == 2


def test_one_receipt_per_job(intake, result, session_key):
    r0 = chain(session_key, result, 1)[0]
    admit(intake, r0)
    again = sign_receipt(session_key, receipt(result, 1, receipt_digest(r0), job_id=receipt(result).job_id))
    rejected("JOB_ALREADY_RECEIPTED", intake, again)


# --- compute claims: flagged, stored, never paid from ---------------------------------------------


def test_a_compute_claim_larger_than_wall_clock_is_admitted_flagged_and_stored(intake, result, session_key):
    honest = ComputeClaim(devices=2, wall_clock_s=100.0, device_seconds=200.0)
    inflated = ComputeClaim(devices=2, wall_clock_s=100.0, device_seconds=1_000.0)  # 2 devices, 100 s: 200
    first = sign_receipt(session_key, receipt(result, 0, compute=honest))
    second = sign_receipt(session_key, receipt(result, 1, receipt_digest(first), compute=inflated))
    third = sign_receipt(session_key, receipt(result, 2, receipt_digest(second)))  # an older worker: no claim
    admissions = [admit(intake, e) for e in (first, second, third)]
    assert [(a.status, a.flags) for a in admissions] == [
        ("admitted", ()),
        ("admitted", (COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK,)),
        ("admitted", ()),
    ]
    assert json.loads(json.dumps(admissions[1].to_dict()))["flags"] == ["COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK"]
    # The receipt, work units and all, is held as signed: the flag changes nothing that is paid.
    assert admissions[1].receipt.work_units == 600 and admissions[1].receipt.compute == inflated
    (flag,) = intake.flags(PERIOD)
    assert (flag.session, flag.sequence, flag.digest, flag.job_id, flag.period, flag.flag) == (
        session_key.public_key.hex,
        1,
        receipt_digest(second),
        admissions[1].receipt.job_id,
        PERIOD,
        COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK,
    )
    assert "1000.0 device-seconds on 2 device(s) in 100.0 s" in flag.detail
    assert "at most 203.000 is possible" in flag.detail and "600 attested work units" in flag.detail
    assert json.loads(json.dumps(flag.to_dict()))["flag"] == COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK
    assert intake.flags("2026-10") == ()
    # A replay is counted once and says its flag again; nothing new is stored.
    again = admit(intake, second)
    assert (again.status, again.flags) == ("replayed", (COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK,))
    report = intake.admit_many([first, second, third], period=PERIOD, known_roots=ROOTS, now=LATER)
    assert (report.replayed, report.flagged) == (3, 1) and report.to_dict()["flagged"] == 1
    assert len(intake.flags(PERIOD)) == 1 and stored_count(intake) == 3
    with pytest.raises(ConfigError, match="YYYY-MM"):
        intake.flags("November")


def test_in_a_batch_a_flagged_receipt_is_flagged_and_a_refused_one_stores_no_flag(
    intake, result, session_key
):
    inflated = ComputeClaim(devices=1, wall_clock_s=10.0, device_seconds=60.0)
    flagged = sign_receipt(session_key, receipt(result, 0, compute=inflated))
    refused = sign_receipt(session_key, receipt(result, 1, "00" * 32, compute=inflated))  # broken link
    report = intake.admit_many([refused, flagged], period=PERIOD, known_roots=ROOTS, now=LATER)
    assert [r.reason for r in report.rejections] == ["CHAIN_BROKEN"]
    assert (report.admitted, report.flagged) == (1, 1)
    assert [(f.sequence, f.flag) for f in intake.flags(PERIOD)] == [(0, COMPUTE_CLAIM_EXCEEDS_WALL_CLOCK)]


# --- the chain audit ------------------------------------------------------------------------------


def test_verify_chain_detects_a_truncated_chain(intake, result, session_key):
    for envelope in chain(session_key, result, 4):
        admit(intake, envelope)
    key = session_key.public_key.hex
    intake.db.query("DELETE FROM usage_receipts WHERE session = ? AND sequence = 1", [key])
    report = intake.verify_chain(key)
    assert report.truncated and not report.ok and report.missing == ((1, 1),)
    assert [(p.sequence, p.kind) for p in report.problems] == [(2, "TRUNCATED")]
    intake.db.query("DELETE FROM usage_receipts WHERE session = ? AND sequence = 0", [key])
    assert intake.verify_chain(key).missing == ((0, 1),)


def test_verify_chain_detects_edited_rows(intake, result, session_key):
    for envelope in chain(session_key, result, 3):
        admit(intake, envelope)
    key = session_key.public_key.hex
    intake.db.query("UPDATE usage_receipts SET digest = ? WHERE sequence = 0", ["00" * 32])
    other = json.dumps(sign_receipt(SigningKey.from_seed(b"x"), receipt(result, 1)))
    intake.db.query("UPDATE usage_receipts SET envelope = ? WHERE sequence = 1", [other])
    intake.db.query("UPDATE usage_receipts SET previous_digest = NULL WHERE sequence = 2")
    kinds = {p.sequence: p.kind for p in intake.verify_chain(key).problems}
    assert kinds == {0: "DIGEST_MISMATCH", 1: "SIGNATURE_INVALID", 2: "ROW_MISMATCH"}


def test_verify_chain_names_a_reordered_link(intake, result, session_key):
    r0, r1 = chain(session_key, result, 2)
    r2 = sign_receipt(session_key, receipt(result, 2, receipt_digest(r0)))
    for envelope in (r0, r1):
        admit(intake, envelope)
    # A chain restored from elsewhere, bypassing intake: the row agrees with its envelope.
    row = intake.db.query("SELECT * FROM usage_receipts WHERE sequence = 1")[0]
    intake.db.query(
        "INSERT INTO usage_receipts VALUES (?, 2, ?, ?, ?, 'job-x', ?, 'adult', 2, 'simulated', ?, ?)",
        [row[0], receipt_digest(r2), receipt_digest(r0), row[4], PERIOD, json.dumps(r2), NOW],
    )
    problems = intake.verify_chain(session_key.public_key).problems
    assert [(p.sequence, p.kind) for p in problems] == [(2, "REORDERED")]
    assert "receipt 0" in problems[0].detail


# --- properties and concurrency -------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(1, 5))
def test_any_submission_order_with_retries_stores_the_chain_exactly_once(
    data, n, intake, verifier, make_evidence
):
    key = SigningKey.generate()
    envelopes = chain(key, attest(verifier, make_evidence, key), n)
    order = data.draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=3 * n))
    pending = [envelopes[i] for i in order] + envelopes  # duplicates, any order, then all once more
    while pending:
        retry = []
        for envelope in pending:
            try:
                admit(intake, envelope)
            except ReceiptRejected as exc:
                assert exc.context["reason"] == "CHAIN_GAP"
                retry.append(envelope)
        assert len(retry) < len(pending)
        pending = retry
    status = intake.session_status(key.public_key)
    assert (status.state, status.receipts) == ("active", n) and intake.verify_chain(key.public_key).ok


def test_two_threads_admitting_the_same_receipt_store_it_once(file_db, store, verifier_key, settings_root):
    verifier, make_evidence, key = settings_root
    envelope = chain(key, attest(verifier, make_evidence, key), 1)[0]
    barrier = threading.Barrier(2)
    statuses: list[str] = []

    def run() -> None:
        intake = ReceiptIntake(ExchangeDB(file_db.path), store, verifier_key.public_key)
        barrier.wait()
        statuses.append(admit(intake, envelope).status)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["admitted", "replayed"]
    assert file_db.query("SELECT count(*) FROM usage_receipts")[0][0] == 1


def _admit_in_child(db_path: str, store_root: str, verifier_hex: str, envelope: dict[str, Any]) -> str:
    intake = ReceiptIntake(
        ExchangeDB(Path(db_path)), LocalObjectStore(Path(store_root)), PublicKey.from_hex(verifier_hex)
    )
    return admit(intake, envelope).status


@pytest.mark.integration
def test_two_processes_admitting_the_same_receipt_store_it_once(file_db, store, verifier_key, settings_root):
    verifier, make_evidence, key = settings_root
    envelope = chain(key, attest(verifier, make_evidence, key), 1)[0]
    args = (str(file_db.path), str(store.root), verifier_key.public_key.hex, envelope)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        statuses = pool.starmap(_admit_in_child, [args, args])
    assert sorted(statuses) == ["admitted", "replayed"]
    assert file_db.query("SELECT count(*) FROM usage_receipts")[0][0] == 1


@pytest.fixture
def settings_root(root, policy, file_db, store, verifier_key, make_evidence, session_key):
    """A verifier over the file database, for the tests that open it from several connections."""
    return (
        SimulatedVerifier(root.public_key, policy, file_db, store, verifier_key),
        make_evidence,
        session_key,
    )
