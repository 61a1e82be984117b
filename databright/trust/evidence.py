"""The shape every attestation backend shares: message types, the session binding, and the two roles.

An ``Attester`` lives inside a worker and turns (measurement, identity, report data) into evidence;
a ``Verifier`` lives in the exchange and appraises that evidence against a policy. Backends differ
only in how evidence is signed and endorsed; the binding and the result they produce are the same,
so a verifier for real hardware slots in beside the simulated one without touching its callers.

Each kind of signed message has its own DSSE ``payloadType``. DSSE signs the type together with the
body, so a signature over a quote can never be replayed as an endorsement, a result or a receipt.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any, Protocol

from databright.crypto import PublicKey, canonical_json, sha256, sha256_hex
from databright.errors import AttestationError

# Domain separation: one payloadType per message, versioned so formats can evolve side by side.
SIM_QUOTE_TYPE = "application/vnd.databright.sim-quote.v1+json"
PLATFORM_ENDORSEMENT_TYPE = "application/vnd.databright.platform-endorsement.v1+json"
ATTESTATION_RESULT_TYPE = "application/vnd.databright.attestation-result.v1+json"
USAGE_RECEIPT_TYPE = "application/vnd.databright.usage-receipt.v1+json"
VALUATION_RECEIPT_TYPE = "application/vnd.databright.valuation-receipt.v1+json"

BINDING_CONTEXT = b"databright/attestation-binding/v1"
BINDING_BYTES = 32

# Tee types a policy may name. A typo in a policy must fail loudly, not silently allow nothing.
KNOWN_TEE_TYPES = ("simulated", "sgx-dcap", "tdx")
HARDWARE_TEE_TYPES = ("sgx-dcap", "tdx")


def binding_report_data(session_public_key: PublicKey, nonce: bytes) -> bytes:
    """``sha256(context ‖ session public key ‖ nonce)``: what the enclave puts in its report data.

    Binding the session key proves that the key was made inside the measured code; binding the
    verifier's nonce proves the evidence is fresh and was made for this appraisal only.
    """
    return sha256(BINDING_CONTEXT + session_public_key.raw + nonce)


def require_binding(report_data: bytes, session_public_key: PublicKey, nonce: bytes) -> None:
    """Refuse hardware report data whose first 32 bytes are not the binding (``BINDING_MISMATCH``).

    SGX and TDX REPORTDATA is 64 bytes: the binding fills [0:32]; [32:64] is the enclave's to use.
    """
    expected = binding_report_data(session_public_key, nonce)
    got = report_data[:BINDING_BYTES]
    if not hmac.compare_digest(got, expected):
        raise AttestationError(
            "BINDING_MISMATCH",
            f"REPORTDATA[0:32] is {got.hex()[:16]}…, not binding_report_data(session key "
            f"{session_public_key.key_id}, nonce) = {expected.hex()[:16]}…; the enclave must write that "
            "binding to /dev/attestation/user_report_data before it reads its quote",
        )


def evidence_digest(evidence: dict[str, Any]) -> str:
    """Hex sha256 of the canonical JSON of raw evidence: its name in the object store."""
    try:
        return sha256_hex(canonical_json(evidence))
    except (TypeError, ValueError) as exc:
        raise AttestationError(
            "EVIDENCE_MALFORMED",
            f"evidence is not plain JSON ({exc}); send the dict the attester returned, unchanged",
        ) from exc


def evidence_key(digest: str) -> str:
    return f"attestation/evidence/{digest}.json"


def utc(now: dt.datetime | None) -> dt.datetime:
    """``now`` as an aware UTC datetime (the current time when ``None``)."""
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise AttestationError(
            "CLOCK_INVALID", f"time {now.isoformat()} has no time zone; pass an aware datetime (UTC)"
        )
    return now.astimezone(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """The one text form of a moment in signed messages: UTC, microseconds, ``+00:00``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def parse_iso(text: Any, *, field: str, code: str = "EVIDENCE_MALFORMED") -> dt.datetime:
    if not isinstance(text, str):
        raise AttestationError(code, f"{field} is {text!r}, expected an ISO 8601 time string")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise AttestationError(code, f"{field} {text!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise AttestationError(code, f"{field} {text!r} has no time zone; signed times are UTC")
    return moment.astimezone(dt.UTC)


class Attester(Protocol):
    """Runs inside the worker. Builds evidence from plain inputs; never touches the exchange DB."""

    tee_type: str

    def evidence(
        self,
        measurement: str,
        signer_id: str,
        product_id: int,
        svn: int,
        report_data: bytes,
        debug: bool = False,
    ) -> dict[str, Any]: ...


class Verifier(Protocol):
    """Runs in the exchange. Issues single-use nonces and appraises evidence of one tee_type."""

    tee_type: str

    def issue_nonce(self, now: dt.datetime | None = None) -> bytes: ...

    def appraise(
        self,
        evidence: dict[str, Any],
        *,
        session_public_key: PublicKey,
        nonce: bytes,
        task: str,
        provider_id: str,
        now: dt.datetime | None = None,
    ) -> tuple[Any, dict[str, Any]]: ...
