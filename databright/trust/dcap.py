"""The boundary to ``dcap-qvl``: check an Intel DCAP quote against its collateral at a chosen time.

A DCAP quote is what an SGX enclave or a TDX trust domain hands out as evidence. Its layout (quote
v3 for SGX, v4 for TDX; integers little-endian):

    0     header, 48 bytes        version u16 @0, attestation key type u16 @2, tee type u32 @4
                                  (0 = SGX, 0x81 = TDX), QE svn @8, PCE svn @10, QE vendor id @12
    48    report body             SGX enclave report, 384 bytes: CPUSVN @0, ATTRIBUTES @48 (flags
                                  u64: bit 1 = DEBUG), MRENCLAVE @64, MRSIGNER @128, ISVPRODID @256,
                                  ISVSVN @258, REPORTDATA @320 (64 bytes)
                                  TDX TD report 1.0, 584 bytes: TD_ATTRIBUTES @120 (bit 0 = DEBUG),
                                  MRTD @136, MROWNER @232, RTMR0..3 @328/376/424/472, REPORTDATA @520
    then  signature data length u32, then the ECDSA signature over header ‖ body by the attestation
          key, that key, and the quoting enclave's report certified by the platform's PCK chain.

``dcap-qvl`` checks every signature from the report up to Intel's root, the collateral (TCB info,
QE identity, CRLs) and its freshness at ``now``, and returns the platform's TCB status with the
Intel advisories that apply. This module calls it once per quote, translates its failures into
``AttestationError`` codes, and reads the claims DataBright's policy needs from the *verified*
report — never from bytes dcap-qvl has not checked:

    EVIDENCE_MALFORMED        not {tee_type, quote (base64), collateral (dcap-qvl's JSON)}
    QUOTE_INVALID             the bytes are not a supported DCAP quote (version, key type, layout)
    QUOTE_SIGNATURE_INVALID   a signature inside the quote fails: the report or QE report was altered
    CRL_EXPIRED               a CRL in the collateral is past its nextUpdate
    COLLATERAL_EXPIRED        TCB info, QE identity or a certificate is past its validity
    COLLATERAL_NOT_YET_VALID  the collateral was issued after the appraisal time
    COLLATERAL_INVALID        collateral signatures, certificate chain or CRLs do not verify
    COLLATERAL_MISMATCH       collateral for another platform (FMSPC) or another tee type
    PLATFORM_REVOKED          the PCK certificate or the platform's TCB level is revoked
    DEBUG_NOT_ALLOWED         a debug enclave / TD: dcap-qvl refuses these whatever the policy says

``import dcap_qvl`` (a compiled extension) happens inside the functions that verify, so importing
DataBright stays light.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from databright.crypto import sha256_hex
from databright.errors import AttestationError

SGX_TEE_TYPE = "sgx-dcap"
TDX_TEE_TYPE = "tdx"
HEADER_BYTES = 48
REPORT_DATA_BYTES = 64
# Header tee type (u32 @4) -> DataBright tee type. Routing only: the verified report decides.
HEADER_TEE_TYPES = {0x00000000: SGX_TEE_TYPE, 0x00000081: TDX_TEE_TYPE}
TDX_MEASUREMENT_CONTEXT = b"databright/tdx-measurement/v1"
COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
# Real quotes are 4-6 KB and collateral 14-17 KB; far larger input is refused before parsing.
MAX_QUOTE_BYTES = 64 * 1024
MAX_COLLATERAL_CHARS = 1024 * 1024
_SGX_DEBUG_FLAG = 0x02  # ATTRIBUTES.FLAGS bit 1
_TDX_DEBUG_FLAG = 0x01  # TD_ATTRIBUTES bit 0 (TUD.DEBUG)

_FRESH = "fetch current collateral for this quote from a PCCS (dcap_qvl.get_collateral) and attest again"
# dcap-qvl reports failures as ValueError text; the first matching fragment names the code.
_FAILURES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("CrlExpired", "revocation list expired"), "CRL_EXPIRED", _FRESH),
    (
        (
            "TCBInfo expired",
            "QE Identity expired",
            "Collateral expired",
            "CertExpired",
            "certificate expired",
        ),
        "COLLATERAL_EXPIRED",
        _FRESH,
    ),
    (
        ("issue date is in the future", "CertNotValidYet", "not valid before"),
        "COLLATERAL_NOT_YET_VALID",
        "the collateral postdates the appraisal time; check the verifier's clock or the collateral",
    ),
    (
        ("CertRevoked", "Revoked"),
        "PLATFORM_REVOKED",
        "Intel revoked this platform's key or TCB level; the provider must replace or repair the machine",
    ),
    (
        ("Debug mode is enabled",),
        "DEBUG_NOT_ALLOWED",
        "the enclave's memory is readable by the host; start the worker without debug",
    ),
    (
        ("report signature is invalid", "Signature is invalid for qe_report", "QE report hash mismatch"),
        "QUOTE_SIGNATURE_INVALID",
        "the quote was altered after the CPU signed it; take a fresh quote from the worker",
    ),
    (
        (
            "Fmspc mismatch",
            "TCB info in the collateral",
            "QE Identity id/version",
            "component count mismatch",
        ),
        "COLLATERAL_MISMATCH",
        "the collateral belongs to another platform or tee type; " + _FRESH,
    ),
    (
        ("Failed to decode quote", "quote version", "attestation key type", "PCK cert format", "TEE type"),
        "QUOTE_INVALID",
        "send the raw quote bytes the quoting enclave returned, unchanged",
    ),
    (
        ("Signature is invalid for", "certificate", "Certificate", "CRL", "Crl", "Revocation", "TcbInfo"),
        "COLLATERAL_INVALID",
        "the collateral does not verify under Intel's root; " + _FRESH,
    ),
)


@dataclass(frozen=True)
class VerifiedQuote:
    """The claims of one quote that dcap-qvl verified, in the form the appraisal policy uses."""

    tee_type: str  # sgx-dcap | tdx, from the verified report body
    tcb_status: str
    advisory_ids: tuple[str, ...]
    measurement: str  # SGX: MRENCLAVE; TDX: tdx_measurement(MRTD, RTMR0..3)
    signer_id: str  # SGX: MRSIGNER; TDX: MROWNER
    product_id: int  # SGX: ISVPRODID; TDX: 0 (a TD has none)
    svn: int  # SGX: ISVSVN; TDX: 0 (a TD's version is its measurement)
    debug: bool
    report_data: bytes  # 64 bytes
    platform_id: str  # PPID from the PCK certificate, hex
    collateral_expires_at: dt.datetime  # the first lapse of TCB info, QE identity or a CRL
    registers: dict[str, str] = field(hash=False)  # the raw measurement registers, hex


def tdx_measurement(mr_td: bytes, rtmrs: Sequence[bytes]) -> str:
    """The policy measurement of a TD: ``sha256(context ‖ MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ RTMR3)``.

    MRTD covers the TD's initial memory (firmware); the RTMRs extend it with what booted (firmware
    config, kernel, command line and initrd, application). One 32-byte digest of all five keeps the
    policy's one-measurement-per-version shape.
    """
    if len(mr_td) != 48 or len(rtmrs) != 4 or any(len(r) != 48 for r in rtmrs):
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"tdx_measurement needs MRTD and four RTMRs of 48 bytes each, got {len(mr_td)} and "
            f"{[len(r) for r in rtmrs]}",
        )
    return sha256_hex(TDX_MEASUREMENT_CONTEXT + mr_td + b"".join(rtmrs))


# --- evidence ---------------------------------------------------------------------------------


def dcap_evidence(quote: bytes, collateral: str | dict[str, Any]) -> dict[str, Any]:
    """Evidence for ``DcapVerifier``: the raw quote and the collateral that was current for it.

    ``collateral`` is dcap-qvl's JSON (``QuoteCollateralV3.to_json()``), as text or parsed. The
    ``tee_type`` written here is read from the quote header and only routes the evidence; the
    verifier trusts the tee type of the verified report, not this label.
    """
    if not isinstance(quote, bytes) or len(quote) < HEADER_BYTES:
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"a DCAP quote is at least {HEADER_BYTES} bytes, got {type(quote).__name__} of "
            f"{len(quote) if isinstance(quote, bytes) else 0}; pass the bytes the quoting enclave returned",
        )
    header_tee = int.from_bytes(quote[4:8], "little")
    tee_type = HEADER_TEE_TYPES.get(header_tee)
    if tee_type is None:
        raise AttestationError(
            "QUOTE_INVALID",
            f"quote header tee type 0x{header_tee:x} is neither SGX (0x0) nor TDX (0x81); "
            "send a DCAP quote from an SGX enclave or a TDX trust domain",
        )
    return {
        "tee_type": tee_type,
        "quote": base64.b64encode(quote).decode("ascii"),
        "collateral": _collateral_dict(collateral),
    }


def _collateral_dict(collateral: str | dict[str, Any]) -> dict[str, str]:
    if isinstance(collateral, str):
        if len(collateral) > MAX_COLLATERAL_CHARS:
            raise AttestationError(
                "EVIDENCE_MALFORMED",
                f"collateral is {len(collateral)} characters, over the limit of {MAX_COLLATERAL_CHARS}; "
                "send the collateral dcap-qvl fetched for this quote",
            )
        try:
            collateral = json.loads(collateral)
        except ValueError as exc:
            raise AttestationError(
                "EVIDENCE_MALFORMED", f"collateral is not JSON ({exc}); send QuoteCollateralV3.to_json()"
            ) from exc
    if not isinstance(collateral, dict):
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"collateral is a {type(collateral).__name__}, expected dcap-qvl's collateral object",
        )
    missing = [f for f in COLLATERAL_FIELDS if f not in collateral]
    extra = sorted(map(str, set(collateral) - set(COLLATERAL_FIELDS)))
    if missing or extra:
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"collateral lacks {missing} / has unknown {extra}; expected exactly {list(COLLATERAL_FIELDS)} "
            "as QuoteCollateralV3.to_json() writes them",
        )
    for name in COLLATERAL_FIELDS:
        if not isinstance(collateral[name], str):
            raise AttestationError(
                "EVIDENCE_MALFORMED",
                f"collateral field {name} is a {type(collateral[name]).__name__}, expected a string",
            )
    return {name: collateral[name] for name in COLLATERAL_FIELDS}


def read_evidence(evidence: Any) -> tuple[str, bytes, dict[str, str]]:
    """``(tee_type label, quote bytes, collateral)`` from evidence made by ``dcap_evidence``."""
    if not isinstance(evidence, dict) or set(evidence) != {"tee_type", "quote", "collateral"}:
        got = sorted(map(str, evidence)) if isinstance(evidence, dict) else type(evidence).__name__
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"DCAP evidence must have exactly tee_type, quote and collateral (got {got}); "
            "build it with dcap_evidence(quote, collateral)",
        )
    label = evidence["tee_type"]
    if not isinstance(label, str):
        raise AttestationError("EVIDENCE_MALFORMED", f"evidence tee_type is {label!r}, expected a string")
    text = evidence["quote"]
    if not isinstance(text, str) or len(text) > MAX_QUOTE_BYTES * 4 // 3 + 4:
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"evidence quote must be base64 text of at most {MAX_QUOTE_BYTES} bytes; "
            "build the evidence with dcap_evidence(quote, collateral)",
        )
    try:
        quote = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError(
            "EVIDENCE_MALFORMED", f"evidence quote is not base64 ({exc}); use dcap_evidence(...)"
        ) from exc
    return label, quote, _collateral_dict(evidence["collateral"])


# --- verification -----------------------------------------------------------------------------


def _translate(message: str) -> AttestationError:
    for fragments, code, fix in _FAILURES:
        if any(fragment in message for fragment in fragments):
            return AttestationError(code, f"dcap-qvl refused the quote: {message}; {fix}")
    return AttestationError(
        "QUOTE_INVALID", f"dcap-qvl refused the quote: {message}; take a fresh quote and collateral"
    )


def _hex(body: dict[str, Any], name: str, size: int) -> bytes:
    value = body.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise AttestationError(
            "QUOTE_INVALID", f"verified report field {name} is {value!r}, expected {size} bytes of hex"
        )
    return raw


def _claims(report: dict[str, Any]) -> tuple[str, str, str, int, int, bool, bytes, dict[str, str]]:
    """(tee, measurement, signer, product, svn, debug, report data, registers) of a verified body."""
    if "SgxEnclave" in report:
        body = report["SgxEnclave"]
        attributes = _hex(body, "attributes", 16)
        registers = {
            name: _hex(body, name, size).hex()
            for name, size in (("mr_enclave", 32), ("mr_signer", 32), ("attributes", 16), ("cpu_svn", 16))
        }
        product, svn = body.get("isv_prod_id"), body.get("isv_svn")
        if not isinstance(product, int) or not isinstance(svn, int):
            raise AttestationError(
                "QUOTE_INVALID", f"verified SGX report lacks isv_prod_id/isv_svn: {product!r}, {svn!r}"
            )
        return (
            SGX_TEE_TYPE,
            registers["mr_enclave"],
            registers["mr_signer"],
            product,
            svn,
            bool(attributes[0] & _SGX_DEBUG_FLAG),
            _hex(body, "report_data", REPORT_DATA_BYTES),
            registers,
        )
    td = report.get("TD10") or (report.get("TD15") or {}).get("base")
    if isinstance(td, dict):
        names48 = ("mr_td", "rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3", "mr_owner", "mr_config_id", "mr_seam")
        registers = {name: _hex(td, name, 48).hex() for name in names48}
        registers["td_attributes"] = _hex(td, "td_attributes", 8).hex()
        registers["tee_tcb_svn"] = _hex(td, "tee_tcb_svn", 16).hex()
        rtmrs = [bytes.fromhex(registers[f"rt_mr{i}"]) for i in range(4)]
        return (
            TDX_TEE_TYPE,
            tdx_measurement(bytes.fromhex(registers["mr_td"]), rtmrs),
            registers["mr_owner"],
            0,
            0,
            bool(bytes.fromhex(registers["td_attributes"])[0] & _TDX_DEBUG_FLAG),
            _hex(td, "report_data", REPORT_DATA_BYTES),
            registers,
        )
    raise AttestationError(
        "QUOTE_INVALID",
        f"verified report is of kind {sorted(report)}, expected an SGX enclave or a TDX TD report",
    )


def collateral_expiry(collateral: dict[str, str]) -> dt.datetime:
    """The first moment the collateral stops being current: TCB info, QE identity or a CRL lapses.

    A result admitted on this collateral must not outlive it, as a simulated result must not
    outlive its platform endorsement.
    """
    from cryptography import x509

    moments: list[dt.datetime] = []
    for name in ("tcb_info", "qe_identity"):
        try:
            text = json.loads(collateral[name])["nextUpdate"]
            moments.append(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AttestationError(
                "COLLATERAL_INVALID", f"collateral {name} has no readable nextUpdate ({exc}); {_FRESH}"
            ) from exc
    for name in ("root_ca_crl", "pck_crl"):
        try:
            crl = x509.load_der_x509_crl(bytes.fromhex(collateral[name]))
        except ValueError as exc:
            raise AttestationError(
                "COLLATERAL_INVALID", f"collateral {name} is not a hex DER CRL ({exc}); {_FRESH}"
            ) from exc
        if crl.next_update_utc is not None:
            moments.append(crl.next_update_utc)
    return min(moments)


def verify_quote(
    quote: bytes, collateral: dict[str, str], moment: dt.datetime, *, root_ca_der: bytes | None = None
) -> VerifiedQuote:
    """Verify ``quote`` against ``collateral`` as of ``moment`` (UTC) and return its claims.

    ``root_ca_der`` replaces Intel's SGX root CA; only a test PKI or a private deployment needs it.
    """
    import dcap_qvl

    if len(quote) > MAX_QUOTE_BYTES:
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"quote is {len(quote)} bytes, over the limit of {MAX_QUOTE_BYTES}; send the raw quote only",
        )
    try:
        parsed = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral))
    except ValueError as exc:
        raise AttestationError(
            "EVIDENCE_MALFORMED", f"dcap-qvl cannot read the collateral ({exc}); {_FRESH}"
        ) from exc
    seconds = int(moment.timestamp())
    try:
        if root_ca_der is None:
            verified = dcap_qvl.verify(quote, parsed, seconds)
        else:
            verified = dcap_qvl.verify_with_root_ca(quote, parsed, root_ca_der, seconds)
    except ValueError as exc:
        # Its messages span lines ("...\n\nCaused by:\n    ..."); one line reads better in a log.
        raise _translate(" ".join(str(exc).removeprefix("Verification failed: ").split())) from exc
    report = json.loads(verified.to_json())
    tee, measurement, signer, product, svn, debug, report_data, registers = _claims(report["report"])
    return VerifiedQuote(
        tee_type=tee,
        tcb_status=str(verified.status),
        advisory_ids=tuple(str(a) for a in verified.advisory_ids),
        measurement=measurement,
        signer_id=signer,
        product_id=product,
        svn=svn,
        debug=debug,
        report_data=report_data,
        platform_id=bytes(verified.ppid).hex(),
        registers=registers,
        collateral_expires_at=collateral_expiry(collateral),
    )
