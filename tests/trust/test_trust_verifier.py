"""Appraisal of simulated evidence: the happy path, and every AttestationError code reachable."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trust_testkit import MEASUREMENT, NOW, TASK, flip_payload_byte, flip_signature_byte, payload_len

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, open_envelope, sha256_hex, sign_envelope
from databright.errors import AttestationError
from databright.trust import (
    ATTESTATION_RESULT_TYPE,
    SIM_QUOTE_TYPE,
    AttestationPolicy,
    SimulatedAttester,
    SimulatedVendorRoot,
    SimulatedVerifier,
    binding_report_data,
    evidence_digest,
    load_result,
    production_policy,
    provision_platform,
)


def appraise(verifier, evidence, session_key, nonce, *, task=TASK, now=NOW):
    return verifier.appraise(
        evidence,
        session_public_key=session_key.public_key,
        nonce=nonce,
        task=task,
        provider_id="prov-a",
        now=now,
    )


def assert_code(code, fn, *args, **kwargs):
    with pytest.raises(AttestationError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


def result_count(verifier) -> int:
    return verifier.db.query("SELECT count(*) FROM attestation_results")[0][0]


# --- the happy path ---------------------------------------------------------------------------


def test_honest_evidence_is_admitted_signed_archived_and_stored(
    verifier, make_evidence, session_key, verifier_key, store, platform
):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    result, envelope = appraise(verifier, evidence, session_key, nonce)

    assert result.status == "ok"
    assert result.tee_type == "simulated"
    assert result.assurance == "simulated"
    assert result.measurement == MEASUREMENT
    assert result.session_public_key == session_key.public_key.hex
    assert result.nonce == nonce.hex()
    assert result.platform_id == platform.platform_id
    assert result.policy_digest == verifier.policy.digest
    assert (result.provider_id, result.task, result.signer_id, result.product_id, result.svn) == (
        "prov-a",
        TASK,
        "databright-dev",
        1,
        2,
    )
    # The result lives one policy lifetime (one day) — shorter than the 30-day endorsement.
    issued = dt.datetime.fromisoformat(result.issued_at)
    expires = dt.datetime.fromisoformat(result.expires_at)
    assert issued == NOW
    assert expires - issued == dt.timedelta(seconds=verifier.policy.result_lifetime_seconds)

    # Signed by the verifier key, under the result's own payload type.
    payload = open_envelope(envelope, ATTESTATION_RESULT_TYPE, verifier_key.public_key)
    assert json.loads(payload) == result.to_dict()

    # Raw evidence archived under its digest, byte-exact.
    digest = evidence_digest(evidence)
    assert result.evidence_digest == digest
    archived = store.get_bytes(f"attestation/evidence/{digest}.json")
    assert sha256_hex(archived) == digest
    assert json.loads(archived) == evidence

    assert load_result(verifier.db, verifier_key.public_key, result.result_id) == result


def test_result_expiry_is_capped_by_the_endorsement(
    settings: Settings, root, policy, memory_db, store, verifier_key, session_key
):
    # The platform's endorsement runs out 6 hours after NOW; the policy would allow 24.
    short = provision_platform(
        settings.keys_dir, "plat-short", lifetime_days=1, now=NOW - dt.timedelta(hours=18)
    )
    verifier = SimulatedVerifier(root.public_key, policy, memory_db, store, verifier_key)
    nonce = verifier.issue_nonce(now=NOW)
    evidence = SimulatedAttester(short).evidence(
        MEASUREMENT, "databright-dev", 1, 2, binding_report_data(session_key.public_key, nonce)
    )
    result, _ = appraise(verifier, evidence, session_key, nonce)
    assert dt.datetime.fromisoformat(result.expires_at) == NOW + dt.timedelta(hours=6)


def test_a_real_task_measurement_is_admitted_by_a_policy_naming_it(
    tmp_path, verifier, make_evidence, session_key
):
    from databright.trust import measure_task

    task_dir = tmp_path / "real_task"
    task_dir.mkdir()
    (task_dir / "manifest.yaml").write_text("name: real_task\nentry: main.py\n")
    (task_dir / "main.py").write_text("print('train')\n")
    measurement = measure_task(task_dir)
    verifier.policy = verifier.policy.allowing("real_task", measurement)
    nonce = verifier.issue_nonce(now=NOW)
    result, _ = appraise(
        verifier, make_evidence(nonce, measurement=measurement), session_key, nonce, task="real_task"
    )
    assert result.measurement == measurement


# --- every AttestationError code --------------------------------------------------------------


def test_wrong_root_is_endorsement_invalid(
    policy, memory_db, store, verifier_key, make_evidence, session_key
):
    other_root = SimulatedVendorRoot(SigningKey.from_seed(b"someone else's root"))
    verifier = SimulatedVerifier(other_root.public_key, policy, memory_db, store, verifier_key)
    nonce = verifier.issue_nonce(now=NOW)
    assert_code("ENDORSEMENT_INVALID", appraise, verifier, make_evidence(nonce), session_key, nonce)


def test_tampered_endorsement_is_endorsement_invalid(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    evidence["endorsement"] = flip_payload_byte(evidence["endorsement"], 5)
    assert_code("ENDORSEMENT_INVALID", appraise, verifier, evidence, session_key, nonce)


def test_self_endorsed_platform_is_endorsement_invalid(verifier, make_evidence, session_key, platform):
    # A host that endorses its own key with its own "root" gains nothing.
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    fake_root = SimulatedVendorRoot(SigningKey.from_seed(b"host-made root"))
    evidence["endorsement"] = fake_root.endorse(
        platform.platform_id, 9, platform.public_key, NOW + dt.timedelta(days=1)
    )
    assert_code("ENDORSEMENT_INVALID", appraise, verifier, evidence, session_key, nonce)


def test_expired_endorsement(settings: Settings, verifier, session_key):
    old = provision_platform(settings.keys_dir, "plat-old", lifetime_days=1, now=NOW - dt.timedelta(days=2))
    nonce = verifier.issue_nonce(now=NOW)
    evidence = SimulatedAttester(old).evidence(
        MEASUREMENT, "databright-dev", 1, 2, binding_report_data(session_key.public_key, nonce)
    )
    err = assert_code("ENDORSEMENT_EXPIRED", appraise, verifier, evidence, session_key, nonce)
    assert "plat-old" in str(err) and "provision" in str(err)


def test_tampered_quote_is_quote_signature_invalid(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    # Raise the svn in the signed body without re-signing.
    quote = evidence["quote"]
    body = json.loads(base64.b64decode(quote["payload"]))
    body["svn"] = 99
    evidence["quote"] = {**quote, "payload": base64.b64encode(canonical_json(body)).decode()}
    assert_code("QUOTE_SIGNATURE_INVALID", appraise, verifier, evidence, session_key, nonce)


def test_quote_from_another_platform_is_quote_signature_invalid(
    settings: Settings, verifier, make_evidence, session_key
):
    other = provision_platform(settings.keys_dir, "plat-2", now=NOW)
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    other_quote = SimulatedAttester(other).evidence(
        MEASUREMENT, "databright-dev", 1, 2, binding_report_data(session_key.public_key, nonce)
    )["quote"]
    evidence["quote"] = other_quote  # plat-2's quote under plat-1's endorsement
    assert_code("QUOTE_SIGNATURE_INVALID", appraise, verifier, evidence, session_key, nonce)


def test_quote_relabelled_as_another_platform_is_refused(settings: Settings, verifier, session_key, platform):
    # plat-1 signs a quote that claims to come from plat-2: its signature is fine, its claim is not.
    nonce = verifier.issue_nonce(now=NOW)
    body = {
        "tee_type": "simulated",
        "measurement": MEASUREMENT,
        "signer_id": "databright-dev",
        "product_id": 1,
        "svn": 2,
        "debug": False,
        "report_data": binding_report_data(session_key.public_key, nonce).hex(),
        "platform_id": "plat-2",
    }
    key = SigningKey.load_or_create(platform.key_path)
    evidence = {
        "tee_type": "simulated",
        "quote": sign_envelope(key, SIM_QUOTE_TYPE, canonical_json(body)),
        "endorsement": platform.endorsement,
    }
    err = assert_code("QUOTE_SIGNATURE_INVALID", appraise, verifier, evidence, session_key, nonce)
    assert "plat-2" in str(err)


def test_quote_envelope_cannot_pass_as_another_message_type(verifier, make_evidence, session_key):
    # DSSE signs the payloadType: relabelling a quote breaks its signature.
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    evidence["quote"] = {**evidence["quote"], "payloadType": ATTESTATION_RESULT_TYPE}
    assert_code("QUOTE_SIGNATURE_INVALID", appraise, verifier, evidence, session_key, nonce)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=10_000), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_quote_byte_is_refused(verifier, make_evidence, session_key, index, bit):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    quote = evidence["quote"]
    evidence["quote"] = (
        flip_payload_byte(quote, index % payload_len(quote), 1 << bit)
        if index % 2
        else flip_signature_byte(quote, index, 1 << bit)
    )
    assert_code("QUOTE_SIGNATURE_INVALID", appraise, verifier, evidence, session_key, nonce)
    assert result_count(verifier) == 0


def test_production_policy_refuses_simulated(
    root, policy, memory_db, store, verifier_key, make_evidence, session_key
):
    verifier = SimulatedVerifier(root.public_key, production_policy(policy), memory_db, store, verifier_key)
    nonce = verifier.issue_nonce(now=NOW)
    err = assert_code("TEE_TYPE_NOT_ALLOWED", appraise, verifier, make_evidence(nonce), session_key, nonce)
    assert "'simulated'" in str(err)


def test_wrong_measurement(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce, measurement="cd" * 32)
    err = assert_code("MEASUREMENT_NOT_ALLOWED", appraise, verifier, evidence, session_key, nonce)
    assert "cd" * 32 in str(err) and MEASUREMENT in str(err)


def test_empty_measurement_list_tells_the_operator_what_to_run(verifier, make_evidence, session_key):
    # A task newly added to the policy with no measurement yet admits nothing.
    verifier.policy = dataclasses.replace(
        verifier.policy, measurements={**verifier.policy.measurements, "tabular_logreg": ()}
    )
    nonce = verifier.issue_nonce(now=NOW)
    err = assert_code(
        "MEASUREMENT_NOT_ALLOWED",
        appraise,
        verifier,
        make_evidence(nonce),
        session_key,
        nonce,
        task="tabular_logreg",
    )
    assert "run `databright enclave measure tabular_logreg` and add the value to the policy" in str(err)


def test_task_missing_from_policy(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    err = assert_code(
        "MEASUREMENT_NOT_ALLOWED", appraise, verifier, make_evidence(nonce), session_key, nonce, task="other"
    )
    assert "databright enclave measure other" in str(err)


def test_measurement_allowed_for_one_task_does_not_admit_another(verifier, make_evidence, session_key):
    verifier.policy = verifier.policy.allowing("other", "ef" * 32)
    nonce = verifier.issue_nonce(now=NOW)
    assert_code(
        "MEASUREMENT_NOT_ALLOWED", appraise, verifier, make_evidence(nonce), session_key, nonce, task="other"
    )


@pytest.mark.parametrize("override", [{"signer_id": "mallory"}, {"product_id": 7}])
def test_signer_or_product_not_allowed(verifier, make_evidence, session_key, override):
    nonce = verifier.issue_nonce(now=NOW)
    assert_code(
        "SIGNER_NOT_ALLOWED", appraise, verifier, make_evidence(nonce, **override), session_key, nonce
    )


def test_low_svn(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    assert verifier.policy.min_svn == 1
    assert_code("SVN_TOO_LOW", appraise, verifier, make_evidence(nonce, svn=0), session_key, nonce)


def test_debug_enclave(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    assert_code("DEBUG_NOT_ALLOWED", appraise, verifier, make_evidence(nonce, debug=True), session_key, nonce)


def test_debug_enclave_admitted_only_when_the_policy_allows_it(verifier, make_evidence, session_key):
    import dataclasses

    verifier.policy = dataclasses.replace(verifier.policy, allow_debug=True)
    nonce = verifier.issue_nonce(now=NOW)
    result, _ = appraise(verifier, make_evidence(nonce, debug=True), session_key, nonce)
    assert result.status == "ok"


def test_evidence_bound_to_another_session_key_is_binding_mismatch(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    host_key = SigningKey.from_seed(b"a key the host made outside the enclave")
    evidence = make_evidence(nonce)
    # The host presents the enclave's evidence but asks the exchange to trust its own key.
    assert_code("BINDING_MISMATCH", appraise, verifier, evidence, host_key, nonce)


def test_evidence_bound_to_another_nonce_is_binding_mismatch(verifier, make_evidence, session_key):
    old_nonce = verifier.issue_nonce(now=NOW)
    new_nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(old_nonce)
    assert_code("BINDING_MISMATCH", appraise, verifier, evidence, session_key, new_nonce)


def test_reused_nonce(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    appraise(verifier, evidence, session_key, nonce)
    assert_code(
        "NONCE_REUSED", appraise, verifier, evidence, session_key, nonce, now=NOW + dt.timedelta(seconds=1)
    )
    assert result_count(verifier) == 1


def test_expired_nonce_stores_nothing(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    late = NOW + dt.timedelta(seconds=verifier.policy.nonce_ttl_seconds)
    assert_code("NONCE_EXPIRED", appraise, verifier, make_evidence(nonce), session_key, nonce, now=late)
    assert result_count(verifier) == 0
    # The refused attempt did not burn the nonce: within its TTL it still admits one appraisal.
    appraise(verifier, make_evidence(nonce), session_key, nonce, now=late - dt.timedelta(seconds=1))


def test_unknown_nonce(verifier, make_evidence, session_key):
    nonce = bytes(range(32))  # never issued
    assert_code("NONCE_UNKNOWN", appraise, verifier, make_evidence(nonce), session_key, nonce)


def test_policy_failure_leaves_the_nonce_unconsumed_and_stores_nothing(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    assert_code("SVN_TOO_LOW", appraise, verifier, make_evidence(nonce, svn=0), session_key, nonce)
    assert result_count(verifier) == 0
    assert verifier.db.query("SELECT consumed_at FROM nonces WHERE nonce = ?", [nonce.hex()]) == [(None,)]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda e: e.pop("quote"), "EVIDENCE_MALFORMED"),
        (lambda e: e.update(quote="not an envelope"), "QUOTE_SIGNATURE_INVALID"),
        (lambda e: e.update(endorsement=["nope"]), "ENDORSEMENT_INVALID"),
        (lambda e: e.update(extra={1, 2}), "EVIDENCE_MALFORMED"),  # not JSON: cannot be digested
    ],
)
def test_malformed_evidence(verifier, make_evidence, session_key, mutate, code):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = copy.deepcopy(make_evidence(nonce))
    mutate(evidence)
    assert_code(code, appraise, verifier, evidence, session_key, nonce)
    assert result_count(verifier) == 0


def test_evidence_for_another_tee_type_goes_to_another_verifier(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    evidence["tee_type"] = "sgx-dcap"
    assert_code("WRONG_VERIFIER", appraise, verifier, evidence, session_key, nonce)


def test_unsigned_wrapper_cannot_change_what_is_appraised(verifier, make_evidence, session_key):
    # Only signed bytes count: extra unsigned claims in the wrapper change nothing but the digest.
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    evidence["measurement"] = "cd" * 32
    evidence["debug"] = False
    result, _ = appraise(verifier, evidence, session_key, nonce)
    assert result.measurement == MEASUREMENT


def test_naive_time_is_refused(verifier):
    assert_code("CLOCK_INVALID", verifier.issue_nonce, now=dt.datetime(2026, 11, 3, 12))


def test_from_settings_uses_the_repository_policy_and_home_keys(settings: Settings, memory_db, store, root):
    verifier = SimulatedVerifier.from_settings(settings, memory_db, store)
    assert verifier.root_public_key == root.public_key
    assert verifier.policy == AttestationPolicy.load(settings.attestation_policy_path)
    assert (settings.keys_dir / "verifier.pem").is_file()


# --- every field of simulated evidence, changed one at a time ---------------------------------

DELETED = object()  # marks "the field is removed" in the change tables below
# For each signed field, a value the honest evidence does not hold, of the same JSON type. The
# quote's values are also off-policy, so the re-signed variant below proves each field is checked.
QUOTE_CHANGES: dict[str, object] = {
    "tee_type": "sgx-dcap",
    "measurement": "cd" * 32,
    "signer_id": "mallory",
    "product_id": 7,
    "svn": 0,
    "debug": True,
    "report_data": "00" * 32,
    "platform_id": "plat-2",
}
ENDORSEMENT_CHANGES: dict[str, object] = {
    "platform_id": "plat-2",
    "tcb_svn": 9,
    "platform_public_key": SigningKey.from_seed(b"a key the host made").public_key.hex,
    "expires_at": "2036-11-03T12:00:00.000000+00:00",
}
# The DSSE envelope's own fields (keyid and sig are those of its one signature): label -> value.
ENVELOPE_CHANGES: dict[str, dict[str, object]] = {
    "payloadType": {"receipt-type": "application/vnd.databright.usage-receipt.v1+json", "deleted": DELETED},
    "payload": {"not-base64": "not base64!", "number": 5, "deleted": DELETED},
    "signatures": {"empty": [], "string": "sig", "number-entry": [42], "deleted": DELETED},
    "keyid": {"other-key": "0" * 16, "deleted": DELETED},
    "sig": {"zero-bytes": base64.b64encode(bytes(64)).decode(), "number": 5, "deleted": DELETED},
}
SIGNED_BY = {"quote": "QUOTE_SIGNATURE_INVALID", "endorsement": "ENDORSEMENT_INVALID"}


def _cases() -> list:
    cases = []
    for part, changes in (("quote", QUOTE_CHANGES), ("endorsement", ENDORSEMENT_CHANGES)):
        code = SIGNED_BY[part]
        for field, value in changes.items():
            cases.append(pytest.param(part, field, value, code, id=f"{part}.{field}=changed"))
            cases.append(pytest.param(part, field, DELETED, code, id=f"{part}.{field}=deleted"))
        cases.append(pytest.param(part, "extra", "unsigned claim", code, id=f"{part}.extra=added"))
        # The same JSON in other bytes: the signature is over bytes, not over what they parse to.
        cases.append(pytest.param(part, "", "re-encoded", code, id=f"{part}.payload=re-encoded"))
        for field, values in ENVELOPE_CHANGES.items():
            for label, value in values.items():
                cases.append(
                    pytest.param(f"{part} envelope", field, value, code, id=f"{part}.dsse.{field}={label}")
                )
    cases += [
        pytest.param("evidence", "tee_type", "sgx-dcap", "WRONG_VERIFIER", id="evidence.tee_type=changed"),
        pytest.param("evidence", "tee_type", DELETED, "EVIDENCE_MALFORMED", id="evidence.tee_type=deleted"),
        pytest.param("evidence", "quote", DELETED, "EVIDENCE_MALFORMED", id="evidence.quote=deleted"),
        pytest.param(
            "evidence", "endorsement", DELETED, "EVIDENCE_MALFORMED", id="evidence.endorsement=deleted"
        ),
        pytest.param(
            "evidence", "quote", "endorsement", "QUOTE_SIGNATURE_INVALID", id="evidence.quote=endorsement"
        ),
        pytest.param(
            "evidence", "endorsement", "quote", "ENDORSEMENT_INVALID", id="evidence.endorsement=quote"
        ),
    ]
    return cases


def _set(container: dict, field: str, value: object) -> None:
    if value is DELETED:
        del container[field]
    else:
        container[field] = value


def change_field(evidence: dict, part: str, field: str, value: object) -> dict:
    """A copy of ``evidence`` with one field changed and nothing re-signed."""
    out = copy.deepcopy(evidence)
    if part == "evidence":
        # "quote"/"endorsement" as a value means: put the other envelope in this slot.
        _set(out, field, copy.deepcopy(evidence[value]) if value in ("quote", "endorsement") else value)
    elif part in SIGNED_BY:
        envelope = out[part]
        if value == "re-encoded":
            body = json.loads(base64.b64decode(envelope["payload"]))
            envelope["payload"] = base64.b64encode(json.dumps(body, indent=1).encode()).decode()
        else:
            body = json.loads(base64.b64decode(envelope["payload"]))
            _set(body, field, value)
            envelope["payload"] = base64.b64encode(canonical_json(body)).decode()
    else:
        envelope = out[part.split()[0]]
        _set(envelope["signatures"][0] if field in ("keyid", "sig") else envelope, field, value)
    return out


def test_the_change_tables_name_every_field_of_simulated_evidence(make_evidence):
    """If the attester ever signs a new field, this fails until the tables above cover it."""
    evidence = make_evidence(b"\x01" * 32)
    assert set(evidence) == {"tee_type", "quote", "endorsement"}
    for part, changes in (("quote", QUOTE_CHANGES), ("endorsement", ENDORSEMENT_CHANGES)):
        envelope = evidence[part]
        assert set(json.loads(base64.b64decode(envelope["payload"]))) == set(changes)
        assert set(envelope) | {"keyid", "sig"} == set(ENVELOPE_CHANGES)
        assert [set(s) for s in envelope["signatures"]] == [{"keyid", "sig"}]
        # Re-encoding an unchanged body reproduces the signed bytes, so each change is that field alone.
        body = json.loads(base64.b64decode(envelope["payload"]))
        assert base64.b64encode(canonical_json(body)).decode() == envelope["payload"]
    assert {field for field, _ in QUOTE_FIELD_CODES} == set(QUOTE_CHANGES)


@pytest.mark.parametrize(("part", "field", "value", "code"), _cases())
def test_any_single_field_changed_without_re_signing_is_refused(
    verifier, make_evidence, session_key, part, field, value, code
):
    nonce = verifier.issue_nonce(now=NOW)
    honest = make_evidence(nonce)
    forged = change_field(honest, part, field, value)
    assert forged != honest
    assert_code(code, appraise, verifier, forged, session_key, nonce)
    assert result_count(verifier) == 0
    # The unchanged evidence passes with the same nonce: the one changed field was the whole reason.
    result, _ = appraise(verifier, honest, session_key, nonce)
    assert result.status == "ok"


# What refuses each quote field when the quote is re-signed with the changed value.
QUOTE_FIELD_CODES = [
    ("tee_type", "TEE_TYPE_NOT_ALLOWED"),
    ("measurement", "MEASUREMENT_NOT_ALLOWED"),
    ("signer_id", "SIGNER_NOT_ALLOWED"),
    ("product_id", "SIGNER_NOT_ALLOWED"),
    ("svn", "SVN_TOO_LOW"),
    ("debug", "DEBUG_NOT_ALLOWED"),
    ("report_data", "BINDING_MISMATCH"),
    ("platform_id", "QUOTE_SIGNATURE_INVALID"),
]


@pytest.mark.parametrize(("field", "code"), QUOTE_FIELD_CODES)
def test_a_host_holding_the_platform_key_still_cannot_change_any_quote_field(
    verifier, make_evidence, session_key, platform, field, code
):
    # The simulated platform key is a file on the host, so a dishonest host can re-sign the quote.
    # Every field is then judged on its own by the policy and the binding, each with its own code.
    nonce = verifier.issue_nonce(now=NOW)
    evidence = make_evidence(nonce)
    body = json.loads(base64.b64decode(evidence["quote"]["payload"]))
    key = SigningKey.load_or_create(platform.key_path)
    changed = {**body, field: QUOTE_CHANGES[field]}
    evidence["quote"] = sign_envelope(key, SIM_QUOTE_TYPE, canonical_json(changed))
    assert_code(code, appraise, verifier, evidence, session_key, nonce)
    removed = {k: v for k, v in body.items() if k != field}
    evidence["quote"] = sign_envelope(key, SIM_QUOTE_TYPE, canonical_json(removed))
    assert_code("EVIDENCE_MALFORMED", appraise, verifier, evidence, session_key, nonce)
    assert result_count(verifier) == 0
