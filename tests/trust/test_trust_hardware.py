"""Hardware attestation (sgx-dcap, tdx) on real Intel DCAP quotes, and on a test PKI for the bound path.

The real quotes (fixtures/attestation, from dcap-qvl's samples) verify at their pinned times with the
statuses Intel's collateral gave them. Their REPORTDATA says "Hello, world!", so they can only pass
``appraise_quote``; the session-bound ``appraise`` is exercised end to end on quotes built here
under a test root CA, which the verifier labels ``assurance: simulated``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trust_testkit import NOW

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, open_envelope
from databright.errors import AttestationError, ConfigError, ReceiptRejected
from databright.trust import (
    ATTESTATION_RESULT_TYPE,
    AttestationPolicy,
    DcapVerifier,
    HardwareAttestationResult,
    OwnerUsage,
    UsageReceipt,
    binding_report_data,
    check_archived_evidence,
    dcap_evidence,
    load_archive,
    load_result,
    production_policy,
    records_root,
    reverify,
    sign_receipt,
    tdx_measurement,
    verify_usage_receipt,
)
from databright.trust.hardware import archive_key

FIXTURES = Path(__file__).parent / "fixtures" / "attestation"
SGX_AT = dt.datetime.fromtimestamp(1750334171, dt.UTC)  # TCB info issueDate + 1 h
TDX_AT = dt.datetime.fromtimestamp(1750331763, dt.UTC)
TASK = "sample_task"

# SGX quote v3: 48-byte header, then the 384-byte enclave report, then the signature data.
HEADER = 48
MRENCLAVE_AT = HEADER + 64
MRSIGNER_AT = HEADER + 128
ISVPRODID_AT = HEADER + 256
ISVSVN_AT = HEADER + 258
REPORTDATA_AT = HEADER + 320
SIG_LEN_AT = HEADER + 384
SIGNATURE_AT = SIG_LEN_AT + 4
# TDX quote v4: 48-byte header, then the 584-byte TD report.
TD_ATTRIBUTES_AT = HEADER + 120
MRTD_AT = HEADER + 136
MROWNER_AT = HEADER + 232
RTMR_AT = HEADER + 328
TD_REPORTDATA_AT = HEADER + 520
TD_SIG_LEN_AT = HEADER + 584


def sample(kind: str) -> tuple[bytes, str]:
    return (FIXTURES / f"{kind}_quote").read_bytes(), (FIXTURES / f"{kind}_quote_collateral.json").read_text()


SGX_QUOTE, SGX_COLLATERAL = sample("sgx")
TDX_QUOTE, TDX_COLLATERAL = sample("tdx")
SGX_MRENCLAVE = SGX_QUOTE[MRENCLAVE_AT : MRENCLAVE_AT + 32].hex()
SGX_MRSIGNER = SGX_QUOTE[MRSIGNER_AT : MRSIGNER_AT + 32].hex()
TDX_MROWNER = TDX_QUOTE[MROWNER_AT : MROWNER_AT + 48].hex()
# The TD measurement, computed here from the raw bytes as the independent reference.
TDX_MEASUREMENT = hashlib.sha256(
    b"databright/tdx-measurement/v1"
    + TDX_QUOTE[MRTD_AT : MRTD_AT + 48]
    + TDX_QUOTE[RTMR_AT : RTMR_AT + 4 * 48]
).hexdigest()


def flipped(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def assert_code(code: str, fn, *args, **kwargs) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


def hardware_policy(settings: Settings, **changes: Any) -> AttestationPolicy:
    """The development policy, admitting the two sample enclaves for TASK and both TCB statuses."""
    data = AttestationPolicy.load(settings.attestation_policy_path).to_dict()
    data["acceptable_tcb_statuses"] = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]
    data["hardware_identities"] = {
        "sgx-dcap": {
            "measurements": {TASK: [SGX_MRENCLAVE]},
            "signer_ids": [SGX_MRSIGNER],
            "product_ids": [0],
            "min_svn": 0,
        },
        "tdx": {
            "measurements": {TASK: [TDX_MEASUREMENT]},
            "signer_ids": [TDX_MROWNER],
            "product_ids": [0],
            "min_svn": 0,
        },
    }
    data.update(changes)
    return AttestationPolicy.from_dict(data)


@pytest.fixture
def hw_policy(settings: Settings) -> AttestationPolicy:
    return hardware_policy(settings)


def verifier_for(tee_type: str, policy, memory_db, store, verifier_key, root_ca_der=None) -> DcapVerifier:
    return DcapVerifier(tee_type, policy, memory_db, store, verifier_key, root_ca_der=root_ca_der)


@pytest.fixture
def sgx_verifier(hw_policy, memory_db, store, verifier_key) -> DcapVerifier:
    return verifier_for("sgx-dcap", hw_policy, memory_db, store, verifier_key)


@pytest.fixture
def tdx_verifier(hw_policy, memory_db, store, verifier_key) -> DcapVerifier:
    return verifier_for("tdx", hw_policy, memory_db, store, verifier_key)


SGX_EVIDENCE = dcap_evidence(SGX_QUOTE, SGX_COLLATERAL)
TDX_EVIDENCE = dcap_evidence(TDX_QUOTE, TDX_COLLATERAL)


def with_quote(evidence: dict[str, Any], quote: bytes) -> dict[str, Any]:
    return {**evidence, "quote": base64.b64encode(quote).decode("ascii")}


# --- the quote layout, checked against dcap-qvl's own parser ----------------------------------


def test_sgx_offsets_agree_with_the_parsed_and_verified_report():
    parsed = dcap_qvl.parse_quote(SGX_QUOTE)
    assert (parsed.header.version, parsed.header.tee_type) == (3, 0)
    assert parsed.report.mr_enclave == SGX_QUOTE[MRENCLAVE_AT : MRENCLAVE_AT + 32]
    assert parsed.report.mr_signer == SGX_QUOTE[MRSIGNER_AT : MRSIGNER_AT + 32]
    assert parsed.report.attributes == SGX_QUOTE[HEADER + 48 : HEADER + 64]
    assert parsed.report.report_data == SGX_QUOTE[REPORTDATA_AT : REPORTDATA_AT + 64]
    body = json.loads(
        dcap_qvl.verify(SGX_QUOTE, dcap_qvl.QuoteCollateralV3.from_json(SGX_COLLATERAL), 1750334171).to_json()
    )["report"]["SgxEnclave"]
    # ISVPRODID and ISVSVN sit exactly between reserved3 (96 bytes @160) and reserved4 (60 bytes @260).
    assert bytes.fromhex(body["reserved3"]) == SGX_QUOTE[HEADER + 160 : ISVPRODID_AT]
    assert bytes.fromhex(body["reserved4"]) == SGX_QUOTE[ISVSVN_AT + 2 : REPORTDATA_AT]
    assert body["isv_prod_id"] == int.from_bytes(SGX_QUOTE[ISVPRODID_AT : ISVPRODID_AT + 2], "little")
    assert body["isv_svn"] == int.from_bytes(SGX_QUOTE[ISVSVN_AT : ISVSVN_AT + 2], "little")
    # The signature data runs from its length field to the end of the quote.
    assert int.from_bytes(SGX_QUOTE[SIG_LEN_AT:SIGNATURE_AT], "little") == len(SGX_QUOTE) - SIGNATURE_AT


def test_tdx_offsets_agree_with_the_parsed_report():
    parsed = dcap_qvl.parse_quote(TDX_QUOTE)
    assert (parsed.header.version, parsed.header.tee_type) == (4, 0x81)
    report = parsed.report
    assert report.mr_td == TDX_QUOTE[MRTD_AT : MRTD_AT + 48]
    assert report.mr_owner == TDX_QUOTE[MROWNER_AT : MROWNER_AT + 48]
    assert report.td_attributes == TDX_QUOTE[TD_ATTRIBUTES_AT : TD_ATTRIBUTES_AT + 8]
    rtmrs = [report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3]
    assert b"".join(rtmrs) == TDX_QUOTE[RTMR_AT : RTMR_AT + 4 * 48]
    assert report.report_data == TDX_QUOTE[TD_REPORTDATA_AT : TD_REPORTDATA_AT + 64]
    # This sample carries zero padding after its signature data; dcap-qvl ignores it.
    end = TD_SIG_LEN_AT + 4 + int.from_bytes(TDX_QUOTE[TD_SIG_LEN_AT : TD_SIG_LEN_AT + 4], "little")
    assert end <= len(TDX_QUOTE) and not any(TDX_QUOTE[end:])
    assert tdx_measurement(report.mr_td, rtmrs) == TDX_MEASUREMENT


# --- the real samples at their pinned times ---------------------------------------------------


def test_sgx_sample_passes_at_its_pinned_time_with_the_documented_status(sgx_verifier):
    result = sgx_verifier.appraise_quote(SGX_EVIDENCE, task=TASK, now=SGX_AT)
    assert isinstance(result, HardwareAttestationResult)
    assert (result.tee_type, result.assurance, result.status) == ("sgx-dcap", "hardware", "unbound")
    assert result.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert result.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert bytes.fromhex(result.report_data) == b"Hello, world!".ljust(64, b"\0")
    assert result.debug is False
    assert SGX_QUOTE[HEADER + 48] & 0x02 == 0  # ATTRIBUTES.DEBUG, read from the raw bytes
    assert (result.measurement, result.signer_id) == (SGX_MRENCLAVE, SGX_MRSIGNER)
    assert (result.product_id, result.svn) == (0, 0)
    assert result.registers["mr_enclave"] == SGX_MRENCLAVE
    assert result.platform_id == "d04ec06d4e6d92dc90d0ad3cf5ee2ddf"  # PPID in the PCK certificate
    # Unbound: no session key, never valid, so it can admit nobody.
    assert (result.session_public_key, result.nonce, result.provider_id) == ("", "", "")
    assert not result.valid_at(SGX_AT)
    assert dt.datetime.fromisoformat(result.issued_at) == SGX_AT
    # One policy lifetime (1 day): the collateral (next TCB info update a month later) lasts longer.
    assert dt.datetime.fromisoformat(result.expires_at) == SGX_AT + dt.timedelta(days=1)
    assert result.policy_digest == sgx_verifier.policy.digest


def test_tdx_sample_passes_at_its_pinned_time_up_to_date(tdx_verifier):
    result = tdx_verifier.appraise_quote(TDX_EVIDENCE, task=TASK, now=TDX_AT)
    assert (result.tee_type, result.assurance, result.status) == ("tdx", "hardware", "unbound")
    assert (result.tcb_status, result.advisory_ids, result.debug) == ("UpToDate", (), False)
    assert TDX_QUOTE[TD_ATTRIBUTES_AT] & 0x01 == 0  # TD_ATTRIBUTES.DEBUG
    assert (result.measurement, result.signer_id) == (TDX_MEASUREMENT, TDX_MROWNER)
    assert (result.product_id, result.svn) == (0, 0)
    assert result.registers["mr_td"] == TDX_QUOTE[MRTD_AT : MRTD_AT + 48].hex()
    assert bytes.fromhex(result.report_data) == TDX_QUOTE[TD_REPORTDATA_AT : TD_REPORTDATA_AT + 64]


@pytest.mark.parametrize("kind", ["sgx", "tdx"])
@pytest.mark.parametrize("now", [NOW, None], ids=["fixed-2026-11-03", "wall-clock-today"])
def test_both_samples_fail_today_because_the_crls_expired(kind, now, sgx_verifier, tdx_verifier):
    verifier, evidence = (sgx_verifier, SGX_EVIDENCE) if kind == "sgx" else (tdx_verifier, TDX_EVIDENCE)
    error = assert_code("CRL_EXPIRED", verifier.appraise_quote, evidence, task=TASK, now=now)
    assert "CrlExpired" in error.message and "get_collateral" in error.message


def test_collateral_is_only_current_between_its_issue_and_next_update(sgx_verifier):
    assert_code(
        "COLLATERAL_NOT_YET_VALID",
        sgx_verifier.appraise_quote,
        SGX_EVIDENCE,
        task=TASK,
        now=SGX_AT - dt.timedelta(days=400),
    )
    # A month and a bit later the TCB info has lapsed (its nextUpdate), before the CRLs have.
    assert_code(
        "COLLATERAL_EXPIRED",
        sgx_verifier.appraise_quote,
        SGX_EVIDENCE,
        task=TASK,
        now=SGX_AT + dt.timedelta(days=40),
    )


# --- one flipped bit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "index"),
    [
        ("MRENCLAVE", MRENCLAVE_AT),
        ("MRENCLAVE-last", MRENCLAVE_AT + 31),
        ("ISVSVN", ISVSVN_AT),
        ("ISVPRODID", ISVPRODID_AT),
        ("REPORTDATA", REPORTDATA_AT),
        ("REPORTDATA-padding", REPORTDATA_AT + 63),
        ("DEBUG-attribute", HEADER + 48),
        ("signature", SIGNATURE_AT),
        ("signature-last", SIGNATURE_AT + 63),
    ],
)
def test_one_flipped_bit_in_the_sgx_quote_is_refused(sgx_verifier, field, index):
    for mask in (0x01, 0x02, 0x80):
        evidence = with_quote(SGX_EVIDENCE, flipped(SGX_QUOTE, index, mask))
        assert_code("QUOTE_SIGNATURE_INVALID", sgx_verifier.appraise_quote, evidence, task=TASK, now=SGX_AT)


@pytest.mark.parametrize("index", [MRTD_AT, RTMR_AT + 100, MROWNER_AT, TD_ATTRIBUTES_AT, TD_REPORTDATA_AT])
def test_one_flipped_bit_in_the_td_report_is_refused(tdx_verifier, index):
    evidence = with_quote(TDX_EVIDENCE, flipped(TDX_QUOTE, index))
    assert_code("QUOTE_SIGNATURE_INVALID", tdx_verifier.appraise_quote, evidence, task=TASK, now=TDX_AT)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["sgx", "tdx"]),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    bit=st.integers(min_value=0, max_value=7),
)
def test_any_bit_of_header_report_or_signature_is_covered(sgx_verifier, tdx_verifier, kind, position, bit):
    """Header ‖ report is signed by the attestation key; the signature, that key (via the QE report
    hash) and the QE report (by the PCK key) follow. A flip anywhere in them is refused."""
    if kind == "sgx":
        verifier, evidence, quote, at = sgx_verifier, SGX_EVIDENCE, SGX_QUOTE, SGX_AT
        signed = [*range(SIG_LEN_AT), *range(SIGNATURE_AT, SIGNATURE_AT + 64 + 64 + 384 + 64)]
    else:
        verifier, evidence, quote, at = tdx_verifier, TDX_EVIDENCE, TDX_QUOTE, TDX_AT
        signed = [*range(TD_SIG_LEN_AT), *range(TD_SIG_LEN_AT + 4, TD_SIG_LEN_AT + 4 + 64 + 64)]
    index = signed[int(position * len(signed))]
    with pytest.raises(AttestationError) as info:
        verifier.appraise_quote(with_quote(evidence, flipped(quote, index, 1 << bit)), task=TASK, now=at)
    # The header's version, key type and tee type decide how the rest is read: QUOTE_INVALID.
    assert info.value.code in ("QUOTE_SIGNATURE_INVALID", "QUOTE_INVALID"), str(info.value)


# --- the policy ---------------------------------------------------------------------------------


def test_strict_policy_refuses_the_sgx_sample_until_its_status_is_allowed_then_an_advisory_denies_it(
    settings: Settings, memory_db, store, verifier_key
):
    strict = hardware_policy(settings, acceptable_tcb_statuses=["UpToDate"])
    verifier = verifier_for("sgx-dcap", strict, memory_db, store, verifier_key)
    error = assert_code(
        "TCB_STATUS_NOT_ALLOWED", verifier.appraise_quote, SGX_EVIDENCE, task=TASK, now=SGX_AT
    )
    assert "ConfigurationAndSWHardeningNeeded" in error.message and "INTEL-SA-00615" in error.message

    verifier.policy = hardware_policy(
        settings, acceptable_tcb_statuses=["UpToDate", "ConfigurationAndSWHardeningNeeded"]
    )
    assert (
        verifier.appraise_quote(SGX_EVIDENCE, task=TASK, now=SGX_AT).tcb_status
        == "ConfigurationAndSWHardeningNeeded"
    )

    verifier.policy = dataclasses.replace(verifier.policy, denied_advisories=("INTEL-SA-00615",))
    error = assert_code("ADVISORY_DENIED", verifier.appraise_quote, SGX_EVIDENCE, task=TASK, now=SGX_AT)
    assert "INTEL-SA-00615" in error.message and error.context["advisories"] == ["INTEL-SA-00615"]
    # An advisory that does not apply to this platform denies nothing.
    verifier.policy = dataclasses.replace(verifier.policy, denied_advisories=("INTEL-SA-00334",))
    assert verifier.appraise_quote(SGX_EVIDENCE, task=TASK, now=SGX_AT).status == "unbound"


def test_the_production_policy_admits_the_up_to_date_tdx_sample_but_not_the_sgx_one(
    hw_policy, memory_db, store, verifier_key
):
    prod = production_policy(hw_policy)
    assert prod.hardware_identities == hw_policy.hardware_identities
    tdx = verifier_for("tdx", prod, memory_db, store, verifier_key)
    assert tdx.appraise_quote(TDX_EVIDENCE, task=TASK, now=TDX_AT).tcb_status == "UpToDate"
    sgx = verifier_for("sgx-dcap", prod, memory_db, store, verifier_key)
    assert_code("TCB_STATUS_NOT_ALLOWED", sgx.appraise_quote, SGX_EVIDENCE, task=TASK, now=SGX_AT)


def identity_edit(policy: AttestationPolicy, tee: str, **changes: Any) -> AttestationPolicy:
    identities = dict(policy.hardware_identities)
    identities[tee] = dataclasses.replace(identities[tee], **changes)
    return dataclasses.replace(policy, hardware_identities=identities)


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda p: dataclasses.replace(p, allowed_tee_types=("simulated", "tdx")), "TEE_TYPE_NOT_ALLOWED"),
        (lambda p: dataclasses.replace(p, hardware_identities={}), "MEASUREMENT_NOT_ALLOWED"),
        (lambda p: identity_edit(p, "sgx-dcap", measurements={}), "MEASUREMENT_NOT_ALLOWED"),
        (
            lambda p: identity_edit(p, "sgx-dcap", measurements={TASK: ("ab" * 32,)}),
            "MEASUREMENT_NOT_ALLOWED",
        ),
        (lambda p: identity_edit(p, "sgx-dcap", signer_ids=("cd" * 32,)), "SIGNER_NOT_ALLOWED"),
        (lambda p: identity_edit(p, "sgx-dcap", product_ids=(1,)), "SIGNER_NOT_ALLOWED"),
        (lambda p: identity_edit(p, "sgx-dcap", min_svn=1), "SVN_TOO_LOW"),
    ],
    ids=["tee-type", "no-identities", "no-task", "other-mrenclave", "other-mrsigner", "product", "svn"],
)
def test_identity_rules_refuse_the_sgx_sample_with_their_code(sgx_verifier, edit, code):
    sgx_verifier.policy = edit(sgx_verifier.policy)
    error = assert_code(code, sgx_verifier.appraise_quote, SGX_EVIDENCE, task=TASK, now=SGX_AT)
    assert "policy" in error.message or "hardware_identities" in error.message


def test_a_task_the_policy_does_not_name_is_refused(sgx_verifier):
    error = assert_code(
        "MEASUREMENT_NOT_ALLOWED", sgx_verifier.appraise_quote, SGX_EVIDENCE, task="other_task", now=SGX_AT
    )
    assert "hardware_identities.sgx-dcap.measurements.other_task" in error.message
    assert SGX_MRENCLAVE in error.message


def test_the_tdx_measurement_covers_every_rtmr():
    parsed = dcap_qvl.parse_quote(TDX_QUOTE).report
    rtmrs = [parsed.rt_mr0, parsed.rt_mr1, parsed.rt_mr2, parsed.rt_mr3]
    for i in range(4):
        changed = list(rtmrs)
        changed[i] = flipped(changed[i], 0)
        assert tdx_measurement(parsed.mr_td, changed) != TDX_MEASUREMENT
    assert tdx_measurement(flipped(parsed.mr_td, 47), rtmrs) != TDX_MEASUREMENT
    assert_code("EVIDENCE_MALFORMED", tdx_measurement, parsed.mr_td, rtmrs[:3])


# --- evidence that is not what it claims ------------------------------------------------------


def test_evidence_goes_to_the_verifier_of_its_tee_type(sgx_verifier, tdx_verifier):
    assert_code("WRONG_VERIFIER", tdx_verifier.appraise_quote, SGX_EVIDENCE, task=TASK, now=SGX_AT)
    # The label is routing only: an SGX quote relabelled "tdx" is caught by the verified report.
    relabelled = {**SGX_EVIDENCE, "tee_type": "tdx"}
    error = assert_code("WRONG_VERIFIER", tdx_verifier.appraise_quote, relabelled, task=TASK, now=SGX_AT)
    assert "sgx-dcap quote" in error.message


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda e: {k: v for k, v in e.items() if k != "collateral"}, "EVIDENCE_MALFORMED"),
        (lambda e: {**e, "extra": 1}, "EVIDENCE_MALFORMED"),
        (lambda e: {**e, "quote": "not base64!"}, "EVIDENCE_MALFORMED"),
        (lambda e: {**e, "quote": "A" * 100_000}, "EVIDENCE_MALFORMED"),
        (lambda e: {**e, "collateral": "{not json"}, "EVIDENCE_MALFORMED"),
        (lambda e: {**e, "collateral": {**e["collateral"], "pck_crl": 7}}, "EVIDENCE_MALFORMED"),
        (
            lambda e: {**e, "collateral": {k: v for k, v in e["collateral"].items() if k != "tcb_info"}},
            "EVIDENCE_MALFORMED",
        ),
        (lambda e: with_quote(e, SGX_QUOTE[:400]), "QUOTE_INVALID"),
        (lambda e: with_quote(e, b"\x07" + SGX_QUOTE[1:]), "QUOTE_INVALID"),
        (lambda e: {**e, "collateral": json.loads(TDX_COLLATERAL)}, "COLLATERAL_MISMATCH"),
        (
            lambda e: {
                **e,
                "collateral": {
                    **e["collateral"],
                    "tcb_info": e["collateral"]["tcb_info"].replace("00615", "00616"),
                },
            },
            "COLLATERAL_INVALID",
        ),
        (
            lambda e: {
                **e,
                "collateral": {
                    **e["collateral"],
                    "pck_crl": flipped(bytes.fromhex(e["collateral"]["pck_crl"]), 50).hex(),
                },
            },
            "COLLATERAL_INVALID",
        ),
    ],
    ids=[
        "no-collateral",
        "extra-key",
        "bad-base64",
        "oversized-quote",
        "collateral-not-json",
        "collateral-field-type",
        "collateral-field-missing",
        "truncated-quote",
        "unknown-version",
        "tdx-collateral",
        "edited-tcb-info",
        "edited-pck-crl",
    ],
)
def test_malformed_or_mismatched_evidence_is_refused(sgx_verifier, mangle, code):
    assert_code(code, sgx_verifier.appraise_quote, mangle(copy.deepcopy(SGX_EVIDENCE)), task=TASK, now=SGX_AT)


def test_dcap_evidence_reads_the_tee_type_from_the_header_and_refuses_other_bytes():
    assert SGX_EVIDENCE["tee_type"] == "sgx-dcap" and TDX_EVIDENCE["tee_type"] == "tdx"
    assert base64.b64decode(SGX_EVIDENCE["quote"]) == SGX_QUOTE
    assert dcap_evidence(SGX_QUOTE, json.loads(SGX_COLLATERAL)) == SGX_EVIDENCE
    assert_code("EVIDENCE_MALFORMED", dcap_evidence, SGX_QUOTE[:20], SGX_COLLATERAL)
    other = SGX_QUOTE[:4] + (0x42).to_bytes(4, "little") + SGX_QUOTE[8:]
    assert_code("QUOTE_INVALID", dcap_evidence, other, SGX_COLLATERAL)


# --- the binding: real samples can never admit a session ---------------------------------------


def test_appraise_refuses_the_real_sample_whose_report_data_binds_no_session(
    sgx_verifier, session_key, store
):
    nonce = sgx_verifier.issue_nonce(now=SGX_AT)
    error = assert_code(
        "BINDING_MISMATCH",
        sgx_verifier.appraise,
        SGX_EVIDENCE,
        session_public_key=session_key.public_key,
        nonce=nonce,
        task=TASK,
        provider_id="prov-a",
        now=SGX_AT,
    )
    assert b"Hello, world!"[:8].hex() in error.message
    # Nothing half-registered: no result, nothing archived, and the nonce is still unused.
    assert sgx_verifier.db.query("SELECT count(*) FROM attestation_results")[0][0] == 0
    assert store.list("attestation/") == []
    assert sgx_verifier.db.query("SELECT consumed_at FROM nonces")[0][0] is None


# --- archive and re-verification ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgx", "tdx"])
def test_an_archived_appraisal_reverifies_to_the_same_result(kind, sgx_verifier, tdx_verifier):
    verifier, evidence, at = (
        (sgx_verifier, SGX_EVIDENCE, SGX_AT) if kind == "sgx" else (tdx_verifier, TDX_EVIDENCE, TDX_AT)
    )
    result = verifier.appraise_quote(evidence, task=TASK, now=at)
    archive = verifier.archive(evidence, result)
    assert reverify(archive) == result
    # Through JSON, as an auditor would receive it, and long after the collateral expired.
    assert reverify(json.loads(canonical_json(archive.to_dict()))) == result
    assert HardwareAttestationResult.from_dict(json.loads(canonical_json(result.to_dict()))) == result


def test_reverify_refuses_an_edited_archive(sgx_verifier):
    result = sgx_verifier.appraise_quote(SGX_EVIDENCE, task=TASK, now=SGX_AT)
    archive = sgx_verifier.archive(SGX_EVIDENCE, result).to_dict()

    edited = copy.deepcopy(archive)
    edited["evidence"] = with_quote(SGX_EVIDENCE, flipped(SGX_QUOTE, MRENCLAVE_AT))
    assert_code("ARCHIVE_TAMPERED", reverify, edited)

    edited = copy.deepcopy(archive)
    edited["policy"]["acceptable_tcb_statuses"] = ["UpToDate"]
    assert_code("ARCHIVE_TAMPERED", reverify, edited)

    edited = copy.deepcopy(archive)
    edited["result"]["expires_at"] = "2025-07-01T00:00:00.000000+00:00"
    error = assert_code("REVERIFY_MISMATCH", reverify, edited)
    assert error.context["fields"] == ["expires_at"]

    # A later appraisal time is re-run at that time: the collateral has lapsed by then.
    edited = copy.deepcopy(archive)
    edited["result"]["issued_at"] = "2026-11-03T12:00:00.000000+00:00"
    assert_code("CRL_EXPIRED", reverify, edited)

    edited = copy.deepcopy(archive)
    edited["result"]["status"] = "ok"
    assert_code("RESULT_MALFORMED", reverify, edited)
    assert_code("ARCHIVE_MALFORMED", reverify, {**archive, "root_ca": 5})


# --- the bound path, on quotes made under a test root CA ---------------------------------------


def _key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(hashlib.sha256(seed).digest()[:31], "big"), ec.SECP256R1())


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class LabPki:
    """A miniature Intel PKI: root → PCK CA → PCK leaf, root → TCB signer, both CRLs.

    The real sample supplies everything else — header, QE report, QE auth data, TCB info and QE
    identity texts (re-signed here) and the PCK certificate's SGX extension (FMSPC, TCB levels) — so
    dcap-qvl finds the same TCB status; only the keys, the enclave report and REPORTDATA are ours.
    """

    def __init__(self, at: dt.datetime, *, crl_valid_for: dt.timedelta = dt.timedelta(days=30)) -> None:
        self.at = at
        self.root_key, ca_key, self.pck_key, tcb_key = (_key(s) for s in (b"root", b"ca", b"pck", b"tcb"))
        self.attestation_key = _key(b"attestation")
        root_name, ca_name = self._name("Test SGX Root CA"), self._name("Test SGX PCK Processor CA")
        real_pck = x509.load_pem_x509_certificates(dcap_qvl.parse_quote(SGX_QUOTE).cert_chain_pem_bytes())[0]
        sgx_extension = real_pck.extensions.get_extension_for_oid(
            x509.ObjectIdentifier("1.2.840.113741.1.13.1")
        )
        self.root = self._cert(self.root_key, root_name, self.root_key, root_name, ca=True, serial=1)
        ca = self._cert(ca_key, ca_name, self.root_key, root_name, ca=True, serial=2)
        self.pck = self._cert(
            self.pck_key,
            self._name("Test PCK"),
            ca_key,
            ca_name,
            ca=False,
            serial=3,
            extra=sgx_extension.value,
        )
        tcb = self._cert(
            tcb_key, self._name("Test TCB Signing"), self.root_key, root_name, ca=False, serial=4
        )
        self.ca = ca
        real = json.loads(SGX_COLLATERAL)
        self.collateral = {
            **real,
            "root_ca_crl": self._crl(self.root_key, root_name, crl_valid_for),
            "pck_crl": self._crl(ca_key, ca_name, crl_valid_for),
            "pck_crl_issuer_chain": self._pem(ca) + self._pem(self.root),
            "tcb_info_issuer_chain": self._pem(tcb) + self._pem(self.root),
            "qe_identity_issuer_chain": self._pem(tcb) + self._pem(self.root),
            "tcb_info_signature": _raw_signature(tcb_key, real["tcb_info"].encode()).hex(),
            "qe_identity_signature": _raw_signature(tcb_key, real["qe_identity"].encode()).hex(),
        }

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    @staticmethod
    def _name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DataBright test PKI"),
            ]
        )

    @staticmethod
    def _pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _cert(
        self, key, subject, issuer_key, issuer, *, ca: bool, serial: int, extra=None
    ) -> x509.Certificate:
        usage = x509.KeyUsage(
            digital_signature=not ca,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(self.at - dt.timedelta(days=365))
            .not_valid_after(self.at + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def _crl(self, key, issuer: x509.Name, valid_for: dt.timedelta) -> str:
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(self.at - dt.timedelta(days=1))
            .next_update(self.at + valid_for)
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return crl.public_bytes(serialization.Encoding.DER).hex()

    def quote(self, report_data: bytes, *, isv_svn: int = 0, debug: bool = False) -> bytes:
        """An SGX quote v3 over the sample's enclave report with our REPORTDATA, signed by our keys."""
        report = bytearray(SGX_QUOTE[HEADER:SIG_LEN_AT])
        report[ISVSVN_AT - HEADER : ISVSVN_AT - HEADER + 2] = isv_svn.to_bytes(2, "little")
        report[48] |= 0x02 if debug else 0
        report[320:384] = report_data.ljust(64, b"\0")
        signed = SGX_QUOTE[:HEADER] + bytes(report)
        qe_report = bytearray(SGX_QUOTE[SIGNATURE_AT + 128 : SIGNATURE_AT + 512])
        auth_len = int.from_bytes(SGX_QUOTE[SIGNATURE_AT + 576 : SIGNATURE_AT + 578], "little")
        qe_auth = SGX_QUOTE[SIGNATURE_AT + 578 : SIGNATURE_AT + 578 + auth_len]
        attestation_public = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        qe_report[320:384] = hashlib.sha256(attestation_public + qe_auth).digest() + bytes(32)
        chain = (self._pem(self.pck) + self._pem(self.ca) + self._pem(self.root)).encode("ascii")
        signature_data = (
            _raw_signature(self.attestation_key, signed)
            + attestation_public
            + bytes(qe_report)
            + _raw_signature(self.pck_key, bytes(qe_report))
            + auth_len.to_bytes(2, "little")
            + qe_auth
            + (5).to_bytes(2, "little")  # certification data: the PCK chain, PEM
            + len(chain).to_bytes(4, "little")
            + chain
        )
        return signed + len(signature_data).to_bytes(4, "little") + signature_data


@pytest.fixture(scope="module")
def pki() -> LabPki:
    return LabPki(SGX_AT)


@pytest.fixture
def lab_verifier(pki, hw_policy, memory_db, store, verifier_key) -> DcapVerifier:
    return verifier_for("sgx-dcap", hw_policy, memory_db, store, verifier_key, root_ca_der=pki.root_der)


def bound_appraise(verifier: DcapVerifier, pki: LabPki, session_key: SigningKey, **quote_args: Any):
    nonce = verifier.issue_nonce(now=SGX_AT)
    quote = pki.quote(binding_report_data(session_key.public_key, nonce), **quote_args)
    evidence = dcap_evidence(quote, pki.collateral)
    result, envelope = verifier.appraise(
        evidence,
        session_public_key=session_key.public_key,
        nonce=nonce,
        task=TASK,
        provider_id="prov-a",
        now=SGX_AT,
    )
    return result, envelope, evidence, nonce


def test_a_bound_quote_admits_the_session_signed_stored_and_archived(
    lab_verifier, pki, session_key, verifier_key, store
):
    result, envelope, evidence, nonce = bound_appraise(lab_verifier, pki, session_key)
    assert (result.status, result.tee_type) == ("ok", "sgx-dcap")
    assert result.assurance == "simulated"  # a test root stands in for Intel's
    assert (result.session_public_key, result.nonce) == (session_key.public_key.hex, nonce.hex())
    assert result.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert result.report_data[:64] == binding_report_data(session_key.public_key, nonce).hex()
    assert result.valid_at(SGX_AT) and not result.valid_at(SGX_AT + dt.timedelta(days=1))

    # The envelope signs exactly the fields every backend's result shares.
    signed = json.loads(open_envelope(envelope, ATTESTATION_RESULT_TYPE, verifier_key.public_key))
    assert signed == result.signed().to_dict()
    stored = load_result(lab_verifier.db, verifier_key.public_key, result.result_id)
    assert stored == result.signed()
    assert json.loads(check_archived_evidence(store, stored)) == evidence
    consumed = lab_verifier.db.query("SELECT consumed_at FROM nonces WHERE nonce = ?", [nonce.hex()])
    assert consumed[0][0] is not None

    # An audit: the signed result → its archive → the same result, binding included.
    archive = load_archive(store, stored, root_ca_der=pki.root_der)
    assert archive.root_ca == pki.root_der.hex()
    assert reverify(archive) == result


def test_a_nonce_admits_one_hardware_appraisal_bound_to_one_key(lab_verifier, pki, session_key):
    nonce = lab_verifier.issue_nonce(now=SGX_AT)
    evidence = dcap_evidence(pki.quote(binding_report_data(session_key.public_key, nonce)), pki.collateral)
    args: dict[str, Any] = dict(
        session_public_key=session_key.public_key, nonce=nonce, task=TASK, provider_id="p", now=SGX_AT
    )
    other = SigningKey.from_seed(b"someone else's session")
    assert_code(
        "BINDING_MISMATCH",
        lab_verifier.appraise,
        evidence,
        **{**args, "session_public_key": other.public_key},
    )
    lab_verifier.appraise(evidence, **args)
    assert_code("NONCE_REUSED", lab_verifier.appraise, evidence, **args)
    late = lab_verifier.issue_nonce(now=SGX_AT - dt.timedelta(hours=1))
    late_evidence = dcap_evidence(
        pki.quote(binding_report_data(session_key.public_key, late)), pki.collateral
    )
    assert_code("NONCE_EXPIRED", lab_verifier.appraise, late_evidence, **{**args, "nonce": late})


def test_a_production_policy_refuses_a_verifier_with_a_test_root(lab_verifier, pki, session_key):
    lab_verifier.policy = production_policy(lab_verifier.policy)
    evidence = dcap_evidence(pki.quote(b"x" * 32), pki.collateral)
    error = assert_code("TEE_TYPE_NOT_ALLOWED", lab_verifier.appraise_quote, evidence, task=TASK, now=SGX_AT)
    assert "Intel's root" in error.message


def test_a_test_root_quote_is_refused_under_intels_root(pki, session_key, sgx_verifier):
    evidence = dcap_evidence(pki.quote(b"x" * 32), pki.collateral)
    error = assert_code("COLLATERAL_INVALID", sgx_verifier.appraise_quote, evidence, task=TASK, now=SGX_AT)
    assert "Intel's root" in error.message


def test_debug_enclaves_and_low_svn_are_refused(lab_verifier, pki, session_key):
    with pytest.raises(AttestationError) as info:
        bound_appraise(lab_verifier, pki, session_key, debug=True)
    assert info.value.code == "DEBUG_NOT_ALLOWED"
    lab_verifier.policy = identity_edit(lab_verifier.policy, "sgx-dcap", min_svn=3)
    with pytest.raises(AttestationError) as info:
        bound_appraise(lab_verifier, pki, session_key, isv_svn=2)
    assert info.value.code == "SVN_TOO_LOW" and "svn 2" in info.value.message
    result, *_ = bound_appraise(lab_verifier, pki, session_key, isv_svn=3)
    assert result.svn == 3


def test_the_result_does_not_outlive_its_collateral(hw_policy, memory_db, store, verifier_key, session_key):
    short = LabPki(SGX_AT, crl_valid_for=dt.timedelta(hours=6))
    verifier = verifier_for("sgx-dcap", hw_policy, memory_db, store, verifier_key, root_ca_der=short.root_der)
    result, *_ = bound_appraise(verifier, short, session_key)
    assert dt.datetime.fromisoformat(result.expires_at) == SGX_AT + dt.timedelta(hours=6)


def test_load_archive_detects_a_missing_or_edited_archive(
    lab_verifier, pki, session_key, store, verifier_key
):
    result, *_ = bound_appraise(lab_verifier, pki, session_key)
    stored = load_result(lab_verifier.db, verifier_key.public_key, result.result_id)
    assert_code("ARCHIVE_MISSING", load_archive, store, stored)  # looked for under Intel's root
    key = archive_key(stored, pki.root_der)
    record = json.loads(store.get_bytes(key))
    record["result"]["svn"] = 9
    store.put_bytes(key, canonical_json(record))
    assert_code("ARCHIVE_TAMPERED", load_archive, store, stored, root_ca_der=pki.root_der)


def test_a_replayed_appraisal_leaves_the_admitted_archive_intact(lab_verifier, pki, session_key, store):
    result, _, evidence, nonce = bound_appraise(lab_verifier, pki, session_key)
    later = SGX_AT + dt.timedelta(seconds=30)
    assert_code(
        "NONCE_REUSED",
        lab_verifier.appraise,
        evidence,
        session_public_key=session_key.public_key,
        nonce=nonce,
        task=TASK,
        provider_id="prov-a",
        now=later,
    )
    assert reverify(load_archive(store, result, root_ca_der=pki.root_der)) == result


def test_the_verifier_is_built_for_one_hardware_tee_type(settings: Settings, memory_db, store):
    with pytest.raises(ConfigError, match="sgx-dcap, tdx"):
        DcapVerifier.from_settings(settings, memory_db, store, "simulated")
    verifier = DcapVerifier.from_settings(settings, memory_db, store, "tdx")
    assert (verifier.tee_type, verifier.assurance, verifier.root_ca_der) == ("tdx", "hardware", None)
    # The shipped development policy admits no hardware enclave yet.
    assert_code("MEASUREMENT_NOT_ALLOWED", verifier.appraise_quote, TDX_EVIDENCE, task=TASK, now=TDX_AT)


def test_a_receipt_from_a_hardware_attested_session_passes_the_same_receipt_checks(
    lab_verifier, pki, session_key, store, verifier_key
):
    """The hardware result is a drop-in: receipts under it go through ``verify_usage_receipt``."""
    result, *_ = bound_appraise(lab_verifier, pki, session_key)
    receipt = UsageReceipt(
        period="2025-06",
        job_id="job-hw",
        run_id="run-hw",
        provider_id=result.provider_id,
        attestation_result_id=result.result_id,
        assurance=result.assurance,
        measurement=result.measurement,
        task=result.task,
        dataset="adult",
        dataset_version=1,
        dataset_merkle_root="12" * 32,
        owners={"alice": OwnerUsage(rows_used=2, visits=2, value=0.5)},
        records_root=records_root([("alice", "r1", 1, 0.25), ("alice", "r2", 1, 0.25)]),
        valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": "34" * 32},
        work_units=10,
        model_digest="56" * 32,
        sequence=0,
        previous_receipt_digest=None,
        issued_at=(SGX_AT + dt.timedelta(minutes=5)).isoformat(),
    )
    envelope = sign_receipt(session_key, receipt)
    later = SGX_AT + dt.timedelta(minutes=6)
    db, key = lab_verifier.db, verifier_key.public_key
    assert verify_usage_receipt(db, store, key, envelope, now=later) == receipt
    forged = sign_receipt(SigningKey.from_seed(b"not the attested session"), receipt)
    with pytest.raises(ReceiptRejected) as info:
        verify_usage_receipt(db, store, key, forged, now=later)
    assert info.value.context["reason"] == "SIGNATURE_INVALID"


def test_importing_the_trust_package_does_not_load_the_dcap_extension():
    code = "import sys, databright.trust; print('dcap_qvl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
