"""Appraisal: turn evidence into a signed ``AttestationResult``, or refuse it with a stable code.

``SimulatedVerifier.appraise`` runs these checks, in order, each failing with its own
``AttestationError.code``:

    EVIDENCE_MALFORMED / WRONG_VERIFIER   not simulated evidence in the expected shape
    ENDORSEMENT_INVALID                   endorsement not signed by the (simulated) vendor root
    ENDORSEMENT_EXPIRED                   the platform's endorsement has lapsed
    QUOTE_SIGNATURE_INVALID               quote not signed by the endorsed platform key
    TEE_TYPE_NOT_ALLOWED                  the policy does not trust this tee type
    MEASUREMENT_NOT_ALLOWED               the code measured is not an allowed version of the task
    SIGNER_NOT_ALLOWED                    signer id or product id not in the policy
    SVN_TOO_LOW                           enclave security version below the policy minimum
    DEBUG_NOT_ALLOWED                     a debug enclave (its memory is readable) and the policy says no
    BINDING_MISMATCH                      report data is not sha256(context ‖ session key ‖ nonce)
    NONCE_UNKNOWN / NONCE_REUSED / NONCE_EXPIRED

Every value the decision rests on — tee_type included — is read from signed bytes, never from the
unsigned wrapper. An accepted appraisal archives the raw evidence in the object store under
``attestation/evidence/<digest>.json``, signs the result with the exchange's verifier key
(``keys/verifier.pem``) and, in one transaction, consumes the nonce and stores the result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.crypto import PublicKey, SigningKey, canonical_json, open_envelope, sha256_hex, sign_envelope
from databright.db import ExchangeDB
from databright.errors import AttestationError, IntegrityError, StorageError
from databright.storage.objectstore import ObjectStore
from databright.trust import registry
from databright.trust.evidence import (
    ATTESTATION_RESULT_TYPE,
    PLATFORM_ENDORSEMENT_TYPE,
    SIM_QUOTE_TYPE,
    binding_report_data,
    evidence_digest,
    evidence_key,
    iso,
    parse_iso,
    utc,
)
from databright.trust.policy import AttestationPolicy
from databright.trust.simulated import ROOT_KEY_FILE, TEE_TYPE, SimulatedVendorRoot

if TYPE_CHECKING:
    from databright.config import Settings

VERIFIER_KEY_FILE = "verifier.pem"


def load_verifier_key(keys_dir: Path) -> SigningKey:
    """The exchange's result-signing key, ``keys_dir/verifier.pem`` (created on first use)."""
    return SigningKey.load_or_create(keys_dir / VERIFIER_KEY_FILE)


@dataclass(frozen=True)
class AttestationResult:
    """What the exchange concluded about one worker session; signed by the verifier key."""

    result_id: str
    tee_type: str
    assurance: str  # "simulated" | "hardware"
    measurement: str
    signer_id: str
    product_id: int
    svn: int
    platform_id: str
    session_public_key: str  # hex
    nonce: str  # hex
    status: str  # "ok"
    issued_at: str  # ISO 8601, UTC
    expires_at: str
    evidence_digest: str
    policy_digest: str
    provider_id: str
    task: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> AttestationResult:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != set(fields):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise AttestationError(
                "RESULT_MALFORMED", f"attestation result has fields {got}, expected {sorted(fields)}"
            )
        for name, kind in fields.items():
            expected: type = int if kind == "int" else str
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise AttestationError(
                    "RESULT_MALFORMED", f"attestation result field {name} is {value!r}, expected {kind}"
                )
        return cls(**data)

    @property
    def session_key(self) -> PublicKey:
        return PublicKey.from_hex(self.session_public_key)

    def valid_at(self, moment: dt.datetime) -> bool:
        """True when ``moment`` lies in [issued_at, expires_at) and the status is ``ok``."""
        moment = utc(moment)
        issued = parse_iso(self.issued_at, field="issued_at", code="RESULT_MALFORMED")
        expires = parse_iso(self.expires_at, field="expires_at", code="RESULT_MALFORMED")
        return self.status == "ok" and issued <= moment < expires


def _payload_json(payload: bytes, code: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise AttestationError(code, f"{what} payload is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise AttestationError(code, f"{what} payload is a {type(data).__name__}, expected an object")
    return data


def _field(data: dict[str, Any], name: str, kind: type, code: str, what: str) -> Any:
    value = data.get(name)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise AttestationError(code, f"{what} field {name} is {value!r}, expected {kind.__name__}")
    return value


class SimulatedVerifier:
    """Appraises ``simulated`` evidence against a policy; every result says ``assurance: simulated``."""

    tee_type = TEE_TYPE
    # The cap: no policy can lift a simulated result to hardware assurance.
    assurance = "simulated"

    def __init__(
        self,
        root_public_key: PublicKey,
        policy: AttestationPolicy,
        db: ExchangeDB,
        store: ObjectStore,
        verifier_key: SigningKey,
    ) -> None:
        self.root_public_key = root_public_key
        self.policy = policy
        self.db = db
        self.store = store
        self.verifier_key = verifier_key

    @classmethod
    def from_settings(
        cls, settings: Settings, db: ExchangeDB, store: ObjectStore, policy: AttestationPolicy | None = None
    ) -> SimulatedVerifier:
        """The exchange's verifier: local root and verifier keys, and the configured policy file."""
        root = SimulatedVendorRoot.load_or_create(settings.keys_dir)
        return cls(
            root.public_key,
            policy or AttestationPolicy.load(settings.attestation_policy_path),
            db,
            store,
            load_verifier_key(settings.keys_dir),
        )

    def issue_nonce(self, now: dt.datetime | None = None) -> bytes:
        return registry.issue_nonce(self.db, self.policy.nonce_ttl_seconds, now=now)

    # --- appraisal -----------------------------------------------------------------------------
    def _endorsement(self, envelope: Any, moment: dt.datetime) -> tuple[str, PublicKey, dt.datetime]:
        code = "ENDORSEMENT_INVALID"
        if not isinstance(envelope, dict):
            raise AttestationError(
                code, f"endorsement is {type(envelope).__name__}, expected a DSSE envelope"
            )
        try:
            payload = open_envelope(envelope, PLATFORM_ENDORSEMENT_TYPE, self.root_public_key)
        except IntegrityError as exc:
            raise AttestationError(
                code,
                f"platform endorsement is not signed by the vendor root {self.root_public_key.key_id} "
                f"({exc}); provision the platform with this exchange's root ({ROOT_KEY_FILE})",
            ) from exc
        data = _payload_json(payload, code, "endorsement")
        platform_id = _field(data, "platform_id", str, code, "endorsement")
        _field(data, "tcb_svn", int, code, "endorsement")
        try:
            platform_key = PublicKey.from_hex(_field(data, "platform_public_key", str, code, "endorsement"))
        except IntegrityError as exc:
            raise AttestationError(code, f"endorsement carries a bad platform key: {exc}") from exc
        expires_at = parse_iso(data.get("expires_at"), field="endorsement expires_at", code=code)
        if expires_at <= moment:
            raise AttestationError(
                "ENDORSEMENT_EXPIRED",
                f"the endorsement of platform {platform_id!r} expired at {iso(expires_at)} "
                f"(now {iso(moment)}); provision the platform again to renew it",
                platform_id=platform_id,
            )
        return platform_id, platform_key, expires_at

    def _quote(self, envelope: Any, platform_id: str, platform_key: PublicKey) -> dict[str, Any]:
        code = "QUOTE_SIGNATURE_INVALID"
        if not isinstance(envelope, dict):
            raise AttestationError(code, f"quote is {type(envelope).__name__}, expected a DSSE envelope")
        try:
            payload = open_envelope(envelope, SIM_QUOTE_TYPE, platform_key)
        except IntegrityError as exc:
            raise AttestationError(
                code,
                f"quote is not signed by the endorsed key {platform_key.key_id} of platform "
                f"{platform_id!r} ({exc}); the evidence was altered or made on another platform",
            ) from exc
        data = _payload_json(payload, "EVIDENCE_MALFORMED", "quote")
        quote = {
            "tee_type": _field(data, "tee_type", str, "EVIDENCE_MALFORMED", "quote"),
            "measurement": _field(data, "measurement", str, "EVIDENCE_MALFORMED", "quote"),
            "signer_id": _field(data, "signer_id", str, "EVIDENCE_MALFORMED", "quote"),
            "product_id": _field(data, "product_id", int, "EVIDENCE_MALFORMED", "quote"),
            "svn": _field(data, "svn", int, "EVIDENCE_MALFORMED", "quote"),
            "debug": _field(data, "debug", bool, "EVIDENCE_MALFORMED", "quote"),
            "report_data": _field(data, "report_data", str, "EVIDENCE_MALFORMED", "quote"),
            "platform_id": _field(data, "platform_id", str, "EVIDENCE_MALFORMED", "quote"),
        }
        if quote["platform_id"] != platform_id:
            raise AttestationError(
                code,
                f"quote names platform {quote['platform_id']!r} but is signed by the key endorsed for "
                f"{platform_id!r}; evidence from one platform cannot be relabelled as another",
            )
        return quote

    def _check_policy(self, quote: dict[str, Any], task: str) -> None:
        policy = self.policy
        tee = quote["tee_type"]
        if tee != TEE_TYPE or tee not in policy.allowed_tee_types:
            raise AttestationError(
                "TEE_TYPE_NOT_ALLOWED",
                f"tee_type {tee!r} is not allowed by policy {policy.name!r} v{policy.version} "
                f"(allowed: {list(policy.allowed_tee_types)}); simulated evidence is for development — "
                "run the worker on attested hardware or use the development policy",
            )
        allowed = policy.measurements.get(task)
        measurement = quote["measurement"]
        if allowed is None:
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"task {task!r} is not in policy {policy.name!r} (tasks: {sorted(policy.measurements)}); "
                f"run `databright enclave measure {task}` and add the value to the policy",
                measurement=measurement,
            )
        if not allowed:
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"policy {policy.name!r} allows no measurement of task {task!r} yet (got {measurement}); "
                f"run `databright enclave measure {task}` and add the value to the policy",
                measurement=measurement,
            )
        if measurement not in allowed:
            raise AttestationError(
                "MEASUREMENT_NOT_ALLOWED",
                f"measurement {measurement} of task {task!r} is not allowed by policy {policy.name!r} "
                f"(allowed: {list(allowed)}); the worker runs different code — redeploy the task, or run "
                f"`databright enclave measure {task}` and add the value to the policy",
                measurement=measurement,
            )
        if quote["signer_id"] not in policy.signer_ids:
            raise AttestationError(
                "SIGNER_NOT_ALLOWED",
                f"signer_id {quote['signer_id']!r} is not allowed (allowed: {list(policy.signer_ids)}); "
                "sign the task with an allowed key or add the signer to the policy",
            )
        if quote["product_id"] not in policy.product_ids:
            raise AttestationError(
                "SIGNER_NOT_ALLOWED",
                f"product_id {quote['product_id']} is not allowed (allowed: {list(policy.product_ids)}); "
                "use the product id the policy names",
            )
        if quote["svn"] < policy.min_svn:
            raise AttestationError(
                "SVN_TOO_LOW",
                f"enclave svn {quote['svn']} is below the policy minimum {policy.min_svn}; "
                "deploy the patched task version",
            )
        if quote["debug"] and not policy.allow_debug:
            raise AttestationError(
                "DEBUG_NOT_ALLOWED",
                "the enclave runs in debug mode, so its memory is readable by the host; "
                "start the worker without debug",
            )

    def appraise(
        self,
        evidence: dict[str, Any],
        *,
        session_public_key: PublicKey,
        nonce: bytes,
        task: str,
        provider_id: str,
        now: dt.datetime | None = None,
    ) -> tuple[AttestationResult, dict[str, Any]]:
        """Check ``evidence`` for ``task`` run by ``provider_id``; return the result and its envelope."""
        moment = utc(now)
        if not isinstance(evidence, dict) or not {"tee_type", "quote", "endorsement"} <= set(evidence):
            raise AttestationError(
                "EVIDENCE_MALFORMED",
                "evidence must be a dict with tee_type, quote and endorsement, as SimulatedAttester makes it",
            )
        if evidence["tee_type"] != TEE_TYPE:
            raise AttestationError(
                "WRONG_VERIFIER",
                f"evidence of tee_type {evidence['tee_type']!r} was sent to the simulated verifier; "
                "route it to the verifier for its tee type",
            )
        if not isinstance(session_public_key, PublicKey) or not isinstance(nonce, bytes):
            raise AttestationError(
                "EVIDENCE_MALFORMED", "session_public_key must be a PublicKey and nonce must be bytes"
            )
        digest = evidence_digest(evidence)
        platform_id, platform_key, endorsement_expiry = self._endorsement(evidence["endorsement"], moment)
        quote = self._quote(evidence["quote"], platform_id, platform_key)
        self._check_policy(quote, task)
        expected = binding_report_data(session_public_key, nonce).hex()
        if not hmac.compare_digest(quote["report_data"], expected):
            raise AttestationError(
                "BINDING_MISMATCH",
                f"report data {quote['report_data'][:16]}… does not bind session key "
                f"{session_public_key.key_id} to the nonce; the enclave must put "
                "binding_report_data(session key, nonce) in its quote",
            )

        expires_at = min(
            moment + dt.timedelta(seconds=self.policy.result_lifetime_seconds), endorsement_expiry
        )
        # A nonce admits one appraisal, so digesting it with the evidence gives a unique, stable id.
        identity = canonical_json([digest, nonce.hex(), session_public_key.hex, provider_id, task])
        result = AttestationResult(
            result_id="ar-" + sha256_hex(identity)[:32],
            tee_type=TEE_TYPE,
            assurance=self.assurance,
            measurement=quote["measurement"],
            signer_id=quote["signer_id"],
            product_id=quote["product_id"],
            svn=quote["svn"],
            platform_id=platform_id,
            session_public_key=session_public_key.hex,
            nonce=nonce.hex(),
            status="ok",
            issued_at=iso(moment),
            expires_at=iso(expires_at),
            evidence_digest=digest,
            policy_digest=self.policy.digest,
            provider_id=provider_id,
            task=task,
        )
        envelope = sign_envelope(self.verifier_key, ATTESTATION_RESULT_TYPE, canonical_json(result.to_dict()))
        # Content-addressed, so archiving before the transaction is safe to repeat if it rolls back.
        key = evidence_key(digest)
        self.store.put_bytes(key, canonical_json(evidence))
        registry.admit_result(
            self.db, nonce, result, provider_id=provider_id, issued_at=moment,
            expires_at=expires_at, evidence_key=key, envelope=envelope,
        )  # fmt: skip
        return result, envelope


def open_result(envelope: dict[str, Any], verifier_public_key: PublicKey) -> AttestationResult:
    """Check a result envelope's signature by the verifier key and return the result."""
    try:
        payload = open_envelope(envelope, ATTESTATION_RESULT_TYPE, verifier_public_key)
    except IntegrityError as exc:
        raise AttestationError(
            "RESULT_TAMPERED",
            f"attestation result envelope does not verify under verifier key {verifier_public_key.key_id} "
            f"({exc}); do not trust this result — the worker must attest again",
        ) from exc
    return AttestationResult.from_dict(_payload_json(payload, "RESULT_MALFORMED", "attestation result"))


def load_result(db: ExchangeDB, verifier_public_key: PublicKey, result_id: str) -> AttestationResult:
    """Load a stored result, re-check its signature, and check the row's columns agree with it."""
    row = registry.fetch_result_row(db, result_id)
    result = open_result(row["envelope"], verifier_public_key)
    signed: dict[str, Any] = {
        "result_id": result.result_id,
        "tee_type": result.tee_type,
        "assurance": result.assurance,
        "measurement": result.measurement,
        "session_public_key": result.session_public_key,
        "provider_id": result.provider_id,
        "status": result.status,
        "issued_at": parse_iso(result.issued_at, field="issued_at", code="RESULT_MALFORMED"),
        "expires_at": parse_iso(result.expires_at, field="expires_at", code="RESULT_MALFORMED"),
        "evidence_key": evidence_key(result.evidence_digest),
    }
    for column, value in signed.items():
        stored = row[column]
        if isinstance(stored, dt.datetime):
            stored = stored.astimezone(dt.UTC)
        if stored != value:
            raise AttestationError(
                "RESULT_TAMPERED",
                f"attestation result {result_id!r}: column {column} holds {stored!r} but the signed result "
                f"says {value!r}; the row was edited — investigate and have the worker attest again",
                result_id=result_id,
            )
    return result


def check_archived_evidence(store: ObjectStore, result: AttestationResult) -> bytes:
    """Fetch the raw evidence behind ``result`` and check it still hashes to its digest."""
    key = evidence_key(result.evidence_digest)
    try:
        data = store.get_bytes(key)
    except StorageError as exc:
        raise AttestationError(
            "EVIDENCE_MISSING",
            f"evidence {key} of attestation result {result.result_id} is missing from the store ({exc}); "
            "restore the object store from backup",
        ) from exc
    actual = sha256_hex(data)
    if actual != result.evidence_digest:
        raise AttestationError(
            "EVIDENCE_MISSING",
            f"evidence {key} hashes to {actual}, not {result.evidence_digest}; the archive was altered",
        )
    return data
