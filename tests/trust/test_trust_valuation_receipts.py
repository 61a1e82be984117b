"""Valuation receipts: exact round trips, values roots, domain separation and every rejection."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import pytest
from trust_testkit import MEASUREMENT, NOW, TASK, flip_payload_byte, flip_signature_byte, payload_len

from databright.crypto import SigningKey, canonical_json, merkle_root_hex, sign_envelope
from databright.errors import ReceiptRejected
from databright.trust import (
    VALUATION_RECEIPT_TYPE,
    AttestationResult,
    OwnerValue,
    ValuationReceipt,
    parse_valuation_receipt,
    sign_receipt,
    sign_valuation_receipt,
    valuation_receipt_digest,
    values_root,
    verify_receipt,
    verify_valuation_receipt,
)
from databright.trust.valuation_receipts import check_binding, owner_values

SESSION = SigningKey.from_seed(b"enclave session key for valuation tests")
ROWS = [("alice", "a" * 64, 0.25), ("bob", "b" * 64, -0.125), ("alice", "c" * 64, 1e-300)]


def make_result(**changes) -> AttestationResult:
    base = AttestationResult(
        result_id="ar-0002",
        tee_type="simulated",
        assurance="simulated",
        measurement=MEASUREMENT,
        signer_id="databright-dev",
        product_id=2,
        svn=1,
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


def make_valuation(result: AttestationResult | None = None, **changes) -> ValuationReceipt:
    result = result or make_result()
    receipt = ValuationReceipt(
        period="2026-11",
        job_id="job-1",
        run_id="value-1",
        provider_id=result.provider_id,
        attestation_result_id=result.result_id,
        assurance=result.assurance,
        measurement=result.measurement,
        task=result.task,
        dataset="adult",
        dataset_version=2,
        dataset_merkle_root="12" * 32,
        usage_receipt_digest="34" * 32,
        model_digest="56" * 32,
        validation_digest="78" * 32,
        method="knn-shapley+replication-robust",
        params={"k": 5, "embedding": "model feature standardisation"},
        seed=None,
        valuation_digest="9a" * 32,
        owners=owner_values([o for o, _, _ in ROWS], [v for _, _, v in ROWS]),
        values_root=values_root(ROWS),
        near_duplicate_groups=0,
        sequence=0,
        previous_receipt_digest=None,
        issued_at=(NOW + dt.timedelta(minutes=1)).isoformat(),
    )
    return dataclasses.replace(receipt, **changes)


def test_round_trip_is_exact_and_owner_sums_are_exactly_rounded():
    receipt = make_valuation()
    envelope = sign_valuation_receipt(SESSION, receipt)
    assert parse_valuation_receipt(envelope) == receipt
    assert verify_valuation_receipt(envelope, make_result(), now=NOW + dt.timedelta(hours=1)) == receipt
    assert receipt.owners["alice"] == OwnerValue(records=2, value=math.fsum([0.25, 1e-300]))
    assert receipt.owners["bob"].records == 1
    # Re-serialising the parsed receipt gives the signed bytes again, so digests are stable.
    assert sign_valuation_receipt(SESSION, parse_valuation_receipt(envelope)) == envelope
    assert len(valuation_receipt_digest(envelope)) == 64


def test_values_root_is_the_merkle_root_of_the_canonical_leaves():
    leaves = [canonical_json([o, r, float(v)]) for o, r, v in ROWS]
    assert values_root(ROWS) == merkle_root_hex(leaves)
    assert values_root(ROWS) != values_root(list(reversed(ROWS)))


def test_a_usage_receipt_envelope_is_not_a_valuation_and_back():
    from test_trust_receipts import make_receipt as make_usage

    usage = sign_receipt(SESSION, make_usage())
    with pytest.raises(ReceiptRejected, match="payloadType") as caught:
        verify_valuation_receipt(usage, make_result(), now=NOW + dt.timedelta(hours=1))
    assert caught.value.context["reason"] == "MALFORMED"
    valuation = sign_valuation_receipt(SESSION, make_valuation())
    with pytest.raises(ReceiptRejected) as caught:
        verify_receipt(valuation, make_result(), now=NOW + dt.timedelta(hours=1))
    assert caught.value.context["reason"] == "MALFORMED"


@pytest.mark.parametrize(
    ("result_change", "reason"),
    [
        ({"status": "revoked"}, "RESULT_NOT_OK"),
        ({"result_id": "ar-other"}, "RESULT_MISMATCH"),
        ({"measurement": "c0" * 32}, "MEASUREMENT_MISMATCH"),
        ({"provider_id": "prov-b"}, "PROVIDER_MISMATCH"),
        ({"task": "tabular_logreg"}, "TASK_MISMATCH"),
        ({"issued_at": (NOW + dt.timedelta(hours=1)).isoformat()}, "ISSUED_BEFORE_ATTESTATION"),
        ({"expires_at": (NOW + dt.timedelta(seconds=30)).isoformat()}, "RESULT_EXPIRED"),
    ],
)
def test_each_disagreement_with_the_attestation_result_is_refused(result_change, reason):
    envelope = sign_valuation_receipt(SESSION, make_valuation())
    with pytest.raises(ReceiptRejected) as caught:
        verify_valuation_receipt(envelope, make_result(**result_change), now=NOW + dt.timedelta(hours=2))
    assert caught.value.context["reason"] == reason
    assert "valuation receipt" in str(caught.value)


def test_a_receipt_from_the_future_is_refused():
    envelope = sign_valuation_receipt(SESSION, make_valuation())
    with pytest.raises(ReceiptRejected) as caught:
        verify_valuation_receipt(envelope, make_result(), now=NOW - dt.timedelta(hours=1))
    assert caught.value.context["reason"] == "ISSUED_IN_FUTURE"


def test_any_flipped_bit_or_foreign_key_fails_the_signature():
    envelope = sign_valuation_receipt(SESSION, make_valuation())
    now = NOW + dt.timedelta(hours=1)
    for index in (0, payload_len(envelope) // 2, payload_len(envelope) - 1):
        with pytest.raises(ReceiptRejected) as caught:
            verify_valuation_receipt(flip_payload_byte(envelope, index), make_result(), now=now)
        assert caught.value.context["reason"] in ("SIGNATURE_INVALID", "MALFORMED")
    with pytest.raises(ReceiptRejected) as caught:
        verify_valuation_receipt(flip_signature_byte(envelope, 3), make_result(), now=now)
    assert caught.value.context["reason"] == "SIGNATURE_INVALID"
    forged = sign_valuation_receipt(SigningKey.from_seed(b"host"), make_valuation())
    with pytest.raises(ReceiptRejected) as caught:
        verify_valuation_receipt(forged, make_result(), now=now)
    assert caught.value.context["reason"] == "SIGNATURE_INVALID"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"owners": {}}, "owners must map one or more"),
        ({"values_root": "XY"}, "values_root"),
        ({"usage_receipt_digest": "00"}, "usage_receipt_digest"),
        ({"seed": "7"}, "seed"),
        ({"period": "2026-13"}, "period"),
        ({"near_duplicate_groups": -1}, "near_duplicate_groups"),
        ({"params": {"k": float("nan")}}, "params"),
    ],
)
def test_malformed_fields_are_refused_with_their_name(change, message):
    with pytest.raises(ReceiptRejected, match=message) as caught:
        make_valuation(**change)
    assert caught.value.context["reason"] == "MALFORMED"


def test_a_statement_with_a_foreign_subject_or_extra_field_is_malformed():
    statement = make_valuation().statement()
    statement["subject"][0]["digest"]["sha256"] = "00" * 32
    envelope = sign_envelope(SESSION, VALUATION_RECEIPT_TYPE, canonical_json(statement))
    with pytest.raises(ReceiptRejected, match="subject"):
        parse_valuation_receipt(envelope)
    statement = make_valuation().statement()
    statement["predicate"]["bonus"] = 1
    envelope = sign_envelope(SESSION, VALUATION_RECEIPT_TYPE, json.dumps(statement).encode())
    with pytest.raises(ReceiptRejected, match="predicate has fields"):
        parse_valuation_receipt(envelope)


def test_binding_names_every_field_that_differs_from_the_usage_receipt():
    from test_trust_receipts import make_receipt as make_usage

    usage = make_usage()
    valuation = make_valuation(
        dataset=usage.dataset,
        dataset_version=usage.dataset_version,
        dataset_merkle_root=usage.dataset_merkle_root,
        model_digest=usage.model_digest,
        owners={o: OwnerValue(records=1, value=0.5) for o in usage.owners},
    )
    check_binding(valuation, usage, valuation.usage_receipt_digest)
    with pytest.raises(ReceiptRejected, match=r"usage_receipt_digest .*job_id 'job-2'") as caught:
        check_binding(dataclasses.replace(valuation, job_id="job-2"), usage, "00" * 32)
    assert caught.value.context["reason"] == "VALUATION_MISMATCH"
