"""Usage receipts: exact round trips, Merkle roots, every rejection reason, and the settlement facade."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_testkit import MEASUREMENT, NOW, TASK, flip_payload_byte, flip_signature_byte, payload_len

from databright.crypto import SigningKey, canonical_json, sign_envelope
from databright.errors import ReceiptRejected
from databright.trust import (
    USAGE_RECEIPT_TYPE,
    AttestationResult,
    OwnerUsage,
    UsageReceipt,
    parse_receipt,
    receipt_digest,
    records_leaf,
    records_root,
    sign_receipt,
    verify_receipt,
    verify_usage_receipt,
)
from databright.trust.receipts import COMPUTE_TOLERANCE_RATIO, COMPUTE_TOLERANCE_S, ComputeClaim

SESSION = SigningKey.from_seed(b"enclave session key for tests")
ROWS = [
    ("alice", "r" * 64, 3, 0.125),
    ("bob", "s" * 64, 1, -0.1),
    ("alice", "t" * 64, 2, 1e-300),
]


def make_result(**changes) -> AttestationResult:
    base = AttestationResult(
        result_id="ar-0001",
        tee_type="simulated",
        assurance="simulated",
        measurement=MEASUREMENT,
        signer_id="databright-dev",
        product_id=1,
        svn=2,
        platform_id="plat-1",
        session_public_key=SESSION.public_key.hex,
        nonce="00" * 32,
        status="ok",
        issued_at=NOW.isoformat(),
        expires_at=(NOW + dt.timedelta(days=1)).isoformat(),
        evidence_digest="ee" * 32,
        policy_digest="ff" * 32,
        provider_id="prov-a",
        task=TASK,
    )
    return dataclasses.replace(base, **changes)


def make_receipt(result: AttestationResult | None = None, **changes) -> UsageReceipt:
    result = result or make_result()
    receipt = UsageReceipt(
        period="2026-11",
        job_id="job-1",
        run_id="run-1",
        provider_id=result.provider_id,
        attestation_result_id=result.result_id,
        assurance=result.assurance,
        measurement=result.measurement,
        task=result.task,
        dataset="adult",
        dataset_version=2,
        dataset_merkle_root="12" * 32,
        owners={
            "alice": OwnerUsage(rows_used=2, visits=5, value=0.125 + 1e-300),
            "bob": OwnerUsage(rows_used=1, visits=1, value=-0.1),
        },
        records_root=records_root(ROWS),
        valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": "34" * 32},
        work_units=600,
        model_digest="56" * 32,
        sequence=0,
        previous_receipt_digest=None,
        issued_at=(NOW + dt.timedelta(hours=1)).isoformat(),
    )
    return dataclasses.replace(receipt, **changes)


def rejected(reason: str, fn, *args, **kwargs) -> ReceiptRejected:
    with pytest.raises(ReceiptRejected) as info:
        fn(*args, **kwargs)
    assert info.value.context["reason"] == reason, str(info.value)
    return info.value


# --- format -----------------------------------------------------------------------------------


def test_receipt_is_an_in_toto_statement_in_a_dsse_envelope():
    receipt = make_receipt()
    envelope = sign_receipt(SESSION, receipt)
    assert envelope["payloadType"] == USAGE_RECEIPT_TYPE
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://databright.dev/usage-receipt/v1"
    assert statement["subject"] == [{"name": "model:job-1", "digest": {"sha256": "56" * 32}}]
    predicate = statement["predicate"]
    assert predicate["receipt_version"] == 1
    assert predicate["owners"]["bob"] == {"rows_used": 1, "visits": 1, "value": -0.1}
    assert predicate["previous_receipt_digest"] is None


def test_round_trip_is_exact():
    receipt = make_receipt()
    envelope = sign_receipt(SESSION, receipt)
    assert parse_receipt(envelope) == receipt
    assert verify_receipt(envelope, make_result(), now=NOW + dt.timedelta(hours=2)) == receipt
    # Re-signing the parsed receipt reproduces the same statement bytes.
    assert sign_receipt(SESSION, parse_receipt(envelope))["payload"] == envelope["payload"]


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=6))
def test_every_finite_float_survives_the_round_trip_bit_for_bit(values):
    owners = {f"o{i}": OwnerUsage(rows_used=i, visits=i, value=v) for i, v in enumerate(values)}
    receipt = make_receipt(owners=owners)
    back = parse_receipt(sign_receipt(SESSION, receipt))
    for name, usage in owners.items():
        assert back.owners[name].value.hex() == float(usage.value).hex()


def test_integral_values_are_written_as_floats_so_bytes_are_stable():
    receipt = make_receipt(owners={"alice": OwnerUsage(rows_used=1, visits=1, value=2)})
    assert isinstance(receipt.owners["alice"].value, float)
    envelope = sign_receipt(SESSION, receipt)
    assert b'"value":2.0' in base64.b64decode(envelope["payload"])
    assert sign_receipt(SESSION, parse_receipt(envelope))["payload"] == envelope["payload"]


@settings(max_examples=300)
@given(
    st.text(),
    st.text(),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([-0.0, 5e-324, 1e300, 0.1]),
)
def test_records_leaf_is_canonical_json_byte_for_byte(owner, record_id, visits, value):
    # The leaf is written out for speed; its bytes must stay canonical_json's, or every root changes.
    try:
        expected = canonical_json([owner, record_id, visits, value])
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form either way
        with pytest.raises(UnicodeEncodeError):
            records_leaf(owner, record_id, visits, value)
        return
    assert records_leaf(owner, record_id, visits, value) == expected
    assert records_leaf(owner, record_id, np.int64(visits % 2**62), np.float64(value)) == canonical_json(
        [owner, record_id, visits % 2**62, value]
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_records_leaf_refuses_non_finite_values(value):
    with pytest.raises(ValueError, match="canonical JSON"):
        records_leaf("alice", "r1", 1, value)


def test_records_leaf_and_root_match_rfc6962_computed_independently():
    assert records_leaf("alice", "r1", 2, 0.5) == b'["alice","r1",2,0.5]'

    def leaf(data: bytes) -> bytes:
        return hashlib.sha256(b"\x00" + data).digest()

    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    leaves = [json.dumps(list(r), separators=(",", ":")).encode() for r in ROWS]
    # n = 3: split at 2 -> node(node(l0, l1), l2)
    expected = node(node(leaf(leaves[0]), leaf(leaves[1])), leaf(leaves[2])).hex()
    assert records_root(ROWS) == expected
    assert records_root(list(reversed(ROWS))) != expected  # dataset order matters
    assert records_root([]) == hashlib.sha256(b"").hexdigest()


def test_receipt_digest_chains_receipts_of_a_session():
    first = sign_receipt(SESSION, make_receipt())
    digest = receipt_digest(first)
    assert digest == hashlib.sha256(base64.b64decode(first["payload"])).hexdigest()
    second = parse_receipt(sign_receipt(SESSION, make_receipt(sequence=1, previous_receipt_digest=digest)))
    assert (second.sequence, second.previous_receipt_digest) == (1, digest)


def test_owner_table():
    frame = make_receipt().to_dataframe()
    assert list(frame["owner"]) == ["alice", "bob"]
    assert frame["visits"].sum() == 6
    assert frame.loc[frame["owner"] == "bob", "value"].item() == pytest.approx(-0.1, abs=0)


@pytest.mark.parametrize(
    "changes",
    [
        {"period": "2026-13"},
        {"job_id": ""},
        {"measurement": "xyz"},
        {"records_root": "AB" * 32},
        {"dataset_version": -1},
        {"work_units": 1.5},
        {"sequence": True},
        {"previous_receipt_digest": "nope"},
        {"valuation": {"method": "knn"}},
        {"valuation": {"method": "knn", "params": {"k": float("nan")}, "validation_digest": "x"}},
        {"owners": {"alice": {"rows_used": 1}}},
        {"issued_at": "yesterday"},
        {"issued_at": "2026-11-03T12:00:00"},
        {"receipt_version": 2},
    ],
)
def test_malformed_receipts_cannot_be_built(changes):
    rejected("MALFORMED", make_receipt, **changes)


@pytest.mark.parametrize(
    "usage",
    [{"rows_used": -1, "visits": 0, "value": 0.0}, {"rows_used": 0, "visits": 0, "value": float("inf")}],
)
def test_bad_owner_usage_is_refused(usage):
    rejected("MALFORMED", OwnerUsage, **usage)


# --- every rejection reason -------------------------------------------------------------------


def test_receipt_signed_by_another_key():
    envelope = sign_receipt(SigningKey.from_seed(b"the host"), make_receipt())
    rejected("SIGNATURE_INVALID", verify_receipt, envelope, make_result(), now=NOW)


def test_any_flipped_byte_breaks_the_receipt_signature():
    envelope = sign_receipt(SESSION, make_receipt())
    result = make_result()
    for index in range(0, payload_len(envelope), 7):
        rejected("SIGNATURE_INVALID", verify_receipt, flip_payload_byte(envelope, index), result, now=NOW)
    for index in range(64):
        rejected("SIGNATURE_INVALID", verify_receipt, flip_signature_byte(envelope, index), result, now=NOW)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("attestation_result_id", "ar-other", "RESULT_MISMATCH"),
        ("measurement", "cd" * 32, "MEASUREMENT_MISMATCH"),
        ("assurance", "hardware", "ASSURANCE_MISMATCH"),
        ("provider_id", "prov-b", "PROVIDER_MISMATCH"),
        ("task", "other_task", "TASK_MISMATCH"),
    ],
)
def test_receipt_that_disagrees_with_its_result(field, value, reason):
    envelope = sign_receipt(SESSION, make_receipt(**{field: value}))
    err = rejected(reason, verify_receipt, envelope, make_result(), now=NOW + dt.timedelta(hours=2))
    assert repr(value) in str(err)


def test_receipt_issued_after_the_result_expired():
    result = make_result()
    late = sign_receipt(SESSION, make_receipt(issued_at=result.expires_at))
    rejected("RESULT_EXPIRED", verify_receipt, late, result, now=NOW + dt.timedelta(days=2))
    # One microsecond earlier the result was still valid.
    just_in = (dt.datetime.fromisoformat(result.expires_at) - dt.timedelta(microseconds=1)).isoformat()
    assert verify_receipt(
        sign_receipt(SESSION, make_receipt(issued_at=just_in)), result, now=NOW + dt.timedelta(days=2)
    )


def test_receipt_issued_before_its_attestation():
    early = sign_receipt(SESSION, make_receipt(issued_at=(NOW - dt.timedelta(seconds=1)).isoformat()))
    rejected("ISSUED_BEFORE_ATTESTATION", verify_receipt, early, make_result(), now=NOW)


def test_receipt_from_the_future():
    receipt = make_receipt(issued_at=(NOW + dt.timedelta(hours=1)).isoformat())
    rejected("ISSUED_IN_FUTURE", verify_receipt, sign_receipt(SESSION, receipt), make_result(), now=NOW)


def test_receipt_under_a_result_that_is_not_ok():
    envelope = sign_receipt(SESSION, make_receipt())
    rejected("RESULT_NOT_OK", verify_receipt, envelope, make_result(status="revoked"), now=NOW)


def test_malformed_envelopes():
    envelope = sign_receipt(SESSION, make_receipt())
    rejected("MALFORMED", parse_receipt, {**envelope, "payloadType": "application/json"})
    rejected("MALFORMED", parse_receipt, {**envelope, "payload": "%%%"})
    rejected("MALFORMED", verify_receipt, {"payloadType": USAGE_RECEIPT_TYPE}, make_result(), now=NOW)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for broken in (
        {**statement, "_type": "https://in-toto.io/Statement/v0.1"},
        {**statement, "predicateType": "https://example.com/other"},
        {**statement, "subject": [{"name": "model:job-2", "digest": {"sha256": "56" * 32}}]},
        {**statement, "predicate": {**statement["predicate"], "extra": 1}},
    ):
        signed = sign_envelope(SESSION, USAGE_RECEIPT_TYPE, canonical_json(broken))
        rejected("MALFORMED", verify_receipt, signed, make_result(), now=NOW + dt.timedelta(hours=2))


# --- the facade settlement uses ---------------------------------------------------------------


@pytest.fixture
def attested(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    result, _ = verifier.appraise(
        make_evidence(nonce),
        session_public_key=session_key.public_key,
        nonce=nonce,
        task=TASK,
        provider_id="prov-a",
        now=NOW,
    )
    return result


def live_receipt(result: AttestationResult) -> dict:
    # Issued "now" by the real clock would fall outside the fixed-time result, so use its window.
    return sign_receipt(SESSION, make_receipt(result, issued_at=result.issued_at))


def test_facade_accepts_a_receipt_under_a_stored_result(verifier, verifier_key, store, attested):
    assert attested.session_public_key == SESSION.public_key.hex
    envelope = live_receipt(attested)
    receipt = verify_usage_receipt(verifier.db, store, verifier_key.public_key, envelope)
    assert receipt.attestation_result_id == attested.result_id and receipt.assurance == "simulated"


def test_facade_rejects_a_tampered_result_row(verifier, verifier_key, store, attested):
    verifier.db.query("UPDATE attestation_results SET measurement = ?", ["cd" * 32])
    rejected(
        "RESULT_TAMPERED",
        verify_usage_receipt,
        verifier.db,
        store,
        verifier_key.public_key,
        live_receipt(attested),
    )


def test_facade_rejects_a_missing_or_altered_evidence_archive(verifier, verifier_key, store, attested):
    key = f"attestation/evidence/{attested.evidence_digest}.json"
    store.put_bytes(key, b"{}")
    envelope = live_receipt(attested)
    rejected("EVIDENCE_MISSING", verify_usage_receipt, verifier.db, store, verifier_key.public_key, envelope)
    (store.root / key).unlink()
    rejected("EVIDENCE_MISSING", verify_usage_receipt, verifier.db, store, verifier_key.public_key, envelope)


def test_facade_rejects_a_receipt_naming_an_unknown_result(verifier, verifier_key, store, attested):
    envelope = sign_receipt(
        SESSION,
        make_receipt(dataclasses.replace(attested, result_id="ar-forged"), issued_at=attested.issued_at),
    )
    rejected("RESULT_UNKNOWN", verify_usage_receipt, verifier.db, store, verifier_key.public_key, envelope)


def test_facade_rejects_a_receipt_signed_outside_the_session(verifier, verifier_key, store, attested):
    envelope = sign_receipt(
        SigningKey.from_seed(b"host"), make_receipt(attested, issued_at=attested.issued_at)
    )
    rejected("SIGNATURE_INVALID", verify_usage_receipt, verifier.db, store, verifier_key.public_key, envelope)


# --- the optional compute claim ----------------------------------------------------------------

# sha256 of make_receipt()'s signed statement, recorded before receipts could carry a compute claim:
# a receipt without one keeps these exact bytes, so older receipts, their chains and the demo's
# allocation root are unchanged.
DIGEST_BEFORE_COMPUTE_CLAIMS = "0de6841207f6fdc1ea911b9930e10b1fd69b43f3b12004661521fe8972d3279c"
LATER = NOW + dt.timedelta(hours=2)


def test_a_receipt_without_a_compute_claim_keeps_its_bytes():
    envelope = sign_receipt(SESSION, make_receipt())
    assert receipt_digest(envelope) == DIGEST_BEFORE_COMPUTE_CLAIMS
    assert "compute" not in json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert verify_receipt(envelope, make_result(), now=LATER).compute is None


def test_a_compute_claim_is_signed_with_the_receipt_and_round_trips():
    receipt = make_receipt(compute=ComputeClaim(devices=2, wall_clock_s=10, device_seconds=19.5))
    envelope = sign_receipt(SESSION, receipt)
    statement = json.loads(base64.b64decode(envelope["payload"]))
    # Integral seconds are written as floats, so the bytes do not depend on how the worker typed them.
    assert statement["predicate"]["compute"] == {"devices": 2, "wall_clock_s": 10.0, "device_seconds": 19.5}
    assert verify_receipt(envelope, make_result(), now=LATER) == receipt
    assert receipt_digest(envelope) != DIGEST_BEFORE_COMPUTE_CLAIMS
    # Inflating the claim after signing, or adding one to a signed receipt, breaks the signature.
    statement["predicate"]["compute"]["device_seconds"] = 1e9
    inflated = {**envelope, "payload": base64.b64encode(canonical_json(statement)).decode()}
    rejected("SIGNATURE_INVALID", verify_receipt, inflated, make_result(), now=LATER)
    plain = sign_receipt(SESSION, make_receipt())
    added = json.loads(base64.b64decode(plain["payload"]))
    added["predicate"]["compute"] = {"devices": 1, "wall_clock_s": 1.0, "device_seconds": 1.0}
    forged = {**plain, "payload": base64.b64encode(canonical_json(added)).decode()}
    rejected("SIGNATURE_INVALID", verify_receipt, forged, make_result(), now=LATER)


@pytest.mark.parametrize(
    "compute",
    [
        None,  # the member is left out when there is no claim, never null
        [2, 10.0, 20.0],
        {"devices": 2, "wall_clock_s": 10.0},
        {"devices": 2, "wall_clock_s": 10.0, "device_seconds": 20.0, "joules": 1.0},
        {"devices": 0, "wall_clock_s": 10.0, "device_seconds": 0.0},
        {"devices": True, "wall_clock_s": 10.0, "device_seconds": 0.0},
        {"devices": 1.0, "wall_clock_s": 10.0, "device_seconds": 0.0},
        {"devices": 2**20 + 1, "wall_clock_s": 10.0, "device_seconds": 0.0},
        {"devices": 1, "wall_clock_s": -1.0, "device_seconds": 0.0},
        {"devices": 1, "wall_clock_s": "10", "device_seconds": 0.0},
        {"devices": 1, "wall_clock_s": 10**400, "device_seconds": 0.0},
        {"devices": 1, "wall_clock_s": 10.0, "device_seconds": -0.5},
        {"devices": 1, "wall_clock_s": 10.0, "device_seconds": False},
    ],
)
def test_a_malformed_compute_claim_is_refused_even_when_signed(compute):
    statement = make_receipt().statement()
    statement["predicate"]["compute"] = compute
    signed = sign_envelope(SESSION, USAGE_RECEIPT_TYPE, canonical_json(statement))
    err = rejected("MALFORMED", verify_receipt, signed, make_result(), now=LATER)
    assert "compute" in str(err)


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf])
def test_a_compute_claim_must_be_finite(seconds):
    rejected("MALFORMED", ComputeClaim, 1, seconds, 0.0)
    rejected("MALFORMED", ComputeClaim, 1, 1.0, seconds)


def test_a_receipt_takes_its_claim_as_a_compute_claim_object():
    err = rejected(
        "MALFORMED", make_receipt, compute={"devices": 1, "wall_clock_s": 1.0, "device_seconds": 1.0}
    )
    assert "ComputeClaim" in str(err)


def test_the_flag_threshold_is_devices_times_wall_clock_plus_the_stated_tolerance():
    claim = ComputeClaim(devices=4, wall_clock_s=100.0, device_seconds=0.0)
    # 4 devices × 100 s = 400 device-seconds, plus 1 % (4) and 1 s: 405.
    assert claim.limit_s == pytest.approx(405.0, abs=1e-9)
    at = ComputeClaim(4, 100.0, claim.limit_s)
    above = ComputeClaim(4, 100.0, math.nextafter(claim.limit_s, math.inf))
    assert not at.exceeds_wall_clock and above.exceeds_wall_clock
    assert not ComputeClaim(1, 0.0, 1.0).exceeds_wall_clock  # a job too short to time still gets 1 s
    assert ComputeClaim(1, 0.0, 1.5).exceeds_wall_clock


@settings(max_examples=200, deadline=None)
@given(
    devices=st.integers(1, 1024),
    wall=st.floats(0, 1e7, allow_nan=False),
    busy=st.floats(0, 1, allow_nan=False),
    excess=st.floats(1.0001, 1e6, allow_nan=False),
)
def test_honest_claims_are_never_flagged_and_inflated_ones_always_are(devices, wall, busy, excess):
    capacity = devices * wall
    assert not ComputeClaim(devices, wall, busy * capacity).exceeds_wall_clock
    inflated = (capacity * (1 + COMPUTE_TOLERANCE_RATIO) + COMPUTE_TOLERANCE_S) * excess
    assert ComputeClaim(devices, wall, inflated).exceeds_wall_clock


@pytest.mark.parametrize(
    "signatures",
    [[42], "sig", None, [{"keyid": SESSION.public_key.key_id, "sig": 5}], [{"keyid": 1, "sig": "AA=="}]],
)
def test_a_receipt_envelope_of_the_wrong_shape_is_a_bad_signature_not_a_crash(signatures):
    envelope = {**sign_receipt(SESSION, make_receipt()), "signatures": signatures}
    rejected("SIGNATURE_INVALID", verify_receipt, envelope, make_result(), now=LATER)
