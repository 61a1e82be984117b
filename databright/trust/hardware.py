"""Hardware attestation: appraise Intel SGX (DCAP) and TDX quotes, and re-verify them for an audit.

``DcapVerifier`` is the hardware twin of ``SimulatedVerifier``: the same ``Verifier`` interface,
nonces, binding, policy file, signed ``AttestationResult`` and result table; only the evidence
differs: ``dcap_evidence(quote, collateral)``, the raw DCAP quote and the collateral (CRLs, TCB
info, QE identity, issuer chains) current for it. dcap-qvl checks the quote up to Intel's root at
the appraisal time (codes in ``trust.dcap``); then come ``WRONG_VERIFIER``, the policy's hardware
rules (``AttestationPolicy.check_hardware``: TEE_TYPE_NOT_ALLOWED, MEASUREMENT_NOT_ALLOWED,
SIGNER_NOT_ALLOWED, SVN_TOO_LOW, DEBUG_NOT_ALLOWED, TCB_STATUS_NOT_ALLOWED, ADVISORY_DENIED),
``BINDING_MISMATCH`` (REPORTDATA[0:32] is not ``binding_report_data(session key, nonce)``) and the
nonce (NONCE_UNKNOWN / _REUSED / _EXPIRED).

* ``appraise_quote(evidence, task=...)``: is this a genuine enclave the policy accepts? Every check
  but the binding and the nonce; the result is ``unbound`` (no session key, never valid, signed or
  stored), so it admits nobody. Public samples (REPORTDATA ``Hello, world!``) get no further.
* ``appraise(evidence, session_public_key=..., nonce=...)`` also requires the binding, consumes the
  nonce, signs the result and stores it: only this admits a worker session.

Archive. An accepted appraisal stores the evidence under ``attestation/evidence/<digest>.json``
(as the simulated path does) and the admitting policy with the signed result under ``archive_key``.
``load_archive`` checks both against the signed result; ``reverify`` re-runs the appraisal at the
original ``issued_at`` (collateral since expired still verifies then) and fails with
``REVERIFY_MISMATCH`` unless it reaches the very same result. The hardware claims (TCB status,
advisories, debug, REPORTDATA, registers) ride in ``HardwareAttestationResult`` beside the signed
fields all backends share; ``evidence_digest`` commits to them and ``reverify`` recomputes them.

Assurance: ``hardware`` under Intel's root. A verifier given another root (``root_ca_der``: a test
PKI, a lab) writes ``simulated``: a key not Intel's stands in for the vendor, as in that backend.

Producing evidence on real hardware — the extension point; nothing here fakes it. A Gramine worker
whose manifest sets ``sgx.remote_attestation = "dcap"``:

1. creates its session key inside the enclave and receives the verifier's nonce;
2. writes ``binding_report_data(session_public_key, nonce)``, zero-padded to 64 bytes, to
   ``/dev/attestation/user_report_data``;
3. reads ``/dev/attestation/quote``: Gramine has the quoting enclave (AESM and the DCAP quote
   provider library) sign a report carrying exactly those 64 bytes;
4. fetches the quote's collateral from a PCCS, ``dcap_qvl.get_collateral(PCCS_URL, quote)`` (any
   host may: Intel signs it, so it need not be trusted);
5. sends ``dcap_evidence(quote, collateral.to_json())`` with its session public key.

The policy's ``hardware_identities.sgx-dcap`` then lists the MRENCLAVE that ``gramine-sgx-sign``
prints for the task, its MRSIGNER and the manifest's ``sgx.isvprodid`` / ``sgx.isvsvn``. A TDX
worker does the same through the kernel's TSM report interface
(``/sys/kernel/config/tsm/report/<name>/inblob``, then ``outblob``); its entry is
``tdx_measurement(MRTD, RTMR0..3)`` and its MROWNER. Until then the simulated backend stands in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from databright.crypto import PublicKey, SigningKey, canonical_json, digest_json, sha256_hex, sign_envelope
from databright.db import ExchangeDB
from databright.errors import AttestationError, ConfigError, IntegrityError, StorageError
from databright.storage.objectstore import ObjectStore
from databright.trust import registry
from databright.trust.dcap import VerifiedQuote, read_evidence, verify_quote
from databright.trust.evidence import (
    ATTESTATION_RESULT_TYPE,
    HARDWARE_TEE_TYPES,
    evidence_digest,
    evidence_key,
    iso,
    parse_iso,
    require_binding,
    utc,
)
from databright.trust.policy import AttestationPolicy
from databright.trust.verifier import AttestationResult, check_archived_evidence, load_verifier_key

if TYPE_CHECKING:
    from databright.config import Settings

UNBOUND = "unbound"
_SIGNED_FIELDS = tuple(f.name for f in dataclasses.fields(AttestationResult))


def _signed(result: AttestationResult) -> AttestationResult:
    return result.signed() if isinstance(result, HardwareAttestationResult) else result


def archive_key(result: AttestationResult, root_ca_der: bytes | None = None) -> str:
    """Where the archive of ``result`` lives, named by the signed result and the root.

    Not by the result id alone: a replayed appraisal (same evidence and nonce, a later time) has the
    same id, and writing its record before its transaction fails must not overwrite the admitted one.
    """
    root = None if root_ca_der is None else root_ca_der.hex()
    return f"attestation/archive/{digest_json([_signed(result).to_dict(), root])}.json"


@dataclass(frozen=True)
class HardwareAttestationResult(AttestationResult):
    """An ``AttestationResult`` plus what the verified quote said about the platform and enclave."""

    tcb_status: str  # e.g. UpToDate, ConfigurationAndSWHardeningNeeded
    advisory_ids: tuple[str, ...]  # Intel advisories that apply to the platform's TCB level
    debug: bool
    report_data: str  # hex, all 64 bytes of REPORTDATA
    registers: dict[str, str] = dataclasses.field(hash=False)  # raw measurement registers, hex

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["advisory_ids"] = list(self.advisory_ids)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> HardwareAttestationResult:
        kinds: dict[str, Any] = {"tcb_status": str, "advisory_ids": list | tuple, "debug": bool}
        kinds.update(report_data=str, registers=dict)
        if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in kinds.items()):
            raise AttestationError(
                "RESULT_MALFORMED", f"a hardware result needs {sorted(kinds)}, typed; got {data!r:.200}"
            )
        signed = AttestationResult.from_dict({k: v for k, v in data.items() if k not in kinds})
        return cls(
            **dataclasses.asdict(signed),
            tcb_status=data["tcb_status"],
            advisory_ids=tuple(str(a) for a in data["advisory_ids"]),
            debug=data["debug"],
            report_data=data["report_data"],
            registers={str(k): str(v) for k, v in data["registers"].items()},
        )

    def signed(self) -> AttestationResult:
        """The fields the verifier signs: the shape every backend's result shares."""
        return AttestationResult(**{name: getattr(self, name) for name in _SIGNED_FIELDS})


@dataclass(frozen=True)
class HardwareArchive:
    """Everything an audit needs to re-run one hardware appraisal: evidence, policy, signed result."""

    evidence: dict[str, Any]
    policy: dict[str, Any]
    result: dict[str, Any]  # the signed fields, as in the verifier's envelope
    root_ca: str | None = None  # hex DER of a non-Intel root, None for Intel's

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> HardwareArchive:
        keys = {"evidence", "policy", "result", "root_ca"}
        if (
            not isinstance(data, dict)
            or set(data) != keys
            or not all(isinstance(data[k], dict) for k in ("evidence", "policy", "result"))
            or not isinstance(data["root_ca"], str | None)
        ):
            raise AttestationError("ARCHIVE_MALFORMED", f"not a HardwareArchive.to_dict(): {data!r:.100}")
        return cls(**data)


# --- the appraisal, shared by the verifier and by reverify ------------------------------------


def _appraise(
    tee_type: str,
    evidence: Any,
    policy: AttestationPolicy,
    task: str,
    moment: dt.datetime,
    root_ca_der: bytes | None,
) -> tuple[str, VerifiedQuote]:
    """Verify the quote and apply the policy; return the evidence digest and the verified claims."""
    if root_ca_der is not None and "simulated" not in policy.allowed_tee_types:
        raise AttestationError(
            "TEE_TYPE_NOT_ALLOWED",
            f"this verifier trusts a root CA other than Intel's, so its results are simulated, and policy "
            f"{policy.name!r} does not allow simulated evidence; verify under Intel's root (no root_ca_der)",
        )
    label, quote, collateral = read_evidence(evidence)
    if label != tee_type:
        raise AttestationError(
            "WRONG_VERIFIER",
            f"evidence of tee_type {label!r} was sent to the {tee_type} verifier; "
            "route it to the verifier for its tee type",
        )
    digest = evidence_digest(evidence)
    claims = verify_quote(quote, collateral, moment, root_ca_der=root_ca_der)
    if claims.tee_type != tee_type:
        raise AttestationError(
            "WRONG_VERIFIER",
            f"the evidence is labelled {label!r} but the verified quote is a {claims.tee_type} quote; "
            f"route it to the {claims.tee_type} verifier",
        )
    policy.check_hardware(claims, task)
    return digest, claims


def _result(
    claims: VerifiedQuote,
    *,
    digest: str,
    policy: AttestationPolicy,
    task: str,
    provider_id: str,
    session_public_key: str,
    nonce: str,
    moment: dt.datetime,
    assurance: str,
    status: str,
) -> HardwareAttestationResult:
    expires_at = min(
        moment + dt.timedelta(seconds=policy.result_lifetime_seconds), claims.collateral_expires_at
    )
    if expires_at <= moment:
        raise AttestationError(
            "COLLATERAL_EXPIRED",
            f"the collateral lapsed at {iso(claims.collateral_expires_at)}, before the appraisal at "
            f"{iso(moment)}; fetch current collateral and attest again",
        )
    # The same recipe as the simulated backend: a nonce admits one appraisal, so the id is unique.
    identity = canonical_json([digest, nonce, session_public_key, provider_id, task])
    return HardwareAttestationResult(
        result_id="ar-" + sha256_hex(identity)[:32],
        tee_type=claims.tee_type,
        assurance=assurance,
        measurement=claims.measurement,
        signer_id=claims.signer_id,
        product_id=claims.product_id,
        svn=claims.svn,
        platform_id=claims.platform_id,
        session_public_key=session_public_key,
        nonce=nonce,
        status=status,
        issued_at=iso(moment),
        expires_at=iso(expires_at),
        evidence_digest=digest,
        policy_digest=policy.digest,
        provider_id=provider_id,
        task=task,
        tcb_status=claims.tcb_status,
        advisory_ids=claims.advisory_ids,
        debug=claims.debug,
        report_data=claims.report_data.hex(),
        registers=dict(claims.registers),
    )


# --- the verifier -----------------------------------------------------------------------------


class DcapVerifier:
    """Appraises ``sgx-dcap`` or ``tdx`` evidence with dcap-qvl against the appraisal policy."""

    def __init__(
        self,
        tee_type: str,
        policy: AttestationPolicy,
        db: ExchangeDB,
        store: ObjectStore,
        verifier_key: SigningKey,
        *,
        root_ca_der: bytes | None = None,
    ) -> None:
        if tee_type not in HARDWARE_TEE_TYPES:
            raise ConfigError(
                f"DcapVerifier tee_type {tee_type!r} must be one of {', '.join(HARDWARE_TEE_TYPES)}"
            )
        self.tee_type = tee_type
        self.policy = policy
        self.db = db
        self.store = store
        self.verifier_key = verifier_key
        self.root_ca_der = root_ca_der
        self.assurance = "hardware" if root_ca_der is None else "simulated"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        db: ExchangeDB,
        store: ObjectStore,
        tee_type: str,
        policy: AttestationPolicy | None = None,
    ) -> DcapVerifier:
        """The exchange's hardware verifier: Intel's root, the verifier key and the policy file."""
        return cls(
            tee_type,
            policy or AttestationPolicy.load(settings.attestation_policy_path),
            db,
            store,
            load_verifier_key(settings.keys_dir),
        )

    def issue_nonce(self, now: dt.datetime | None = None) -> bytes:
        return registry.issue_nonce(self.db, self.policy.nonce_ttl_seconds, now=now)

    def appraise_quote(
        self, evidence: dict[str, Any], *, task: str, now: dt.datetime | None = None
    ) -> HardwareAttestationResult:
        """Is this a genuine enclave the policy accepts for ``task``? Nothing is bound, signed or stored.

        The result has status ``unbound`` and no session key: it proves what ran where, and admits
        no session. ``archive(evidence, result)`` keeps it re-verifiable.
        """
        moment = utc(now)
        digest, claims = _appraise(self.tee_type, evidence, self.policy, task, moment, self.root_ca_der)
        return _result(
            claims,
            digest=digest,
            policy=self.policy,
            task=task,
            provider_id="",
            session_public_key="",
            nonce="",
            moment=moment,
            assurance=self.assurance,
            status=UNBOUND,
        )

    def archive(self, evidence: dict[str, Any], result: AttestationResult) -> HardwareArchive:
        """The record ``reverify`` needs for ``result``, appraised by this verifier from ``evidence``."""
        return HardwareArchive(
            evidence=evidence,
            policy=self.policy.to_dict(),
            result=_signed(result).to_dict(),
            root_ca=None if self.root_ca_der is None else self.root_ca_der.hex(),
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
    ) -> tuple[HardwareAttestationResult, dict[str, Any]]:
        """Admit a worker session: the quote, the policy, the binding and the nonce must all hold.

        Returns the result and its envelope signed by the verifier key; the evidence and the
        archive record are stored and the nonce consumed together with the result row.
        """
        moment = utc(now)
        if not isinstance(session_public_key, PublicKey) or not isinstance(nonce, bytes):
            raise AttestationError(
                "EVIDENCE_MALFORMED", "session_public_key must be a PublicKey and nonce must be bytes"
            )
        digest, claims = _appraise(self.tee_type, evidence, self.policy, task, moment, self.root_ca_der)
        require_binding(claims.report_data, session_public_key, nonce)
        result = _result(
            claims,
            digest=digest,
            policy=self.policy,
            task=task,
            provider_id=provider_id,
            session_public_key=session_public_key.hex,
            nonce=nonce.hex(),
            moment=moment,
            assurance=self.assurance,
            status="ok",
        )
        signed = result.signed()
        envelope = sign_envelope(self.verifier_key, ATTESTATION_RESULT_TYPE, canonical_json(signed.to_dict()))
        # Both keys name their content, so writing before the transaction is safe if it rolls back.
        key = evidence_key(digest)
        self.store.put_bytes(key, canonical_json(evidence))
        record = self.archive(evidence, result).to_dict()
        del record["evidence"]  # already stored under its digest
        self.store.put_bytes(archive_key(result, self.root_ca_der), canonical_json(record))
        registry.admit_result(
            self.db, nonce, result, provider_id=provider_id, issued_at=moment,
            expires_at=parse_iso(result.expires_at, field="expires_at"), evidence_key=key, envelope=envelope,
        )  # fmt: skip
        return result, envelope


# --- audit ------------------------------------------------------------------------------------


def load_archive(
    store: ObjectStore, result: AttestationResult, *, root_ca_der: bytes | None = None
) -> HardwareArchive:
    """The archive behind a stored hardware ``result`` (load it with ``load_result`` first).

    Checks the evidence against the result's ``evidence_digest``, the policy against its
    ``policy_digest`` and the archived result against ``result`` itself. ``root_ca_der`` is the
    verifier's non-Intel root, if it had one.
    """
    key = archive_key(result, root_ca_der)
    try:
        record = json.loads(store.get_bytes(key))
    except StorageError as exc:
        raise AttestationError(
            "ARCHIVE_MISSING",
            f"archive {key} of attestation result {result.result_id} is missing ({exc}); "
            "restore the object store from backup",
        ) from exc
    except ValueError as exc:
        raise AttestationError("ARCHIVE_MALFORMED", f"archive {key} is not JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise AttestationError("ARCHIVE_MALFORMED", f"archive {key} holds a {type(record).__name__}")
    evidence = json.loads(check_archived_evidence(store, result))
    archive = HardwareArchive.from_dict({**record, "evidence": evidence})
    if archive.result != _signed(result).to_dict():
        raise AttestationError(
            "ARCHIVE_TAMPERED",
            f"archive {key} records a result that differs from the signed result {result.result_id}; "
            "the archive was edited — trust the signed result and investigate",
        )
    return archive


def reverify(archived: HardwareArchive | dict[str, Any]) -> HardwareAttestationResult:
    """Re-run an archived appraisal at its original time and return the result it reaches.

    Raises ``ARCHIVE_TAMPERED`` when the evidence or policy no longer match the digests the result
    names, the appraisal's own code when the evidence no longer passes (for instance an altered
    quote: ``QUOTE_SIGNATURE_INVALID``), and ``REVERIFY_MISMATCH`` when it passes but reaches a
    different result than the one archived.
    """
    archive = archived if isinstance(archived, HardwareArchive) else HardwareArchive.from_dict(archived)
    signed = AttestationResult.from_dict(archive.result)
    if signed.tee_type not in HARDWARE_TEE_TYPES:
        raise AttestationError(
            "ARCHIVE_MALFORMED", f"result {signed.result_id} is of tee_type {signed.tee_type!r}, not hardware"
        )
    for what, actual, named in (
        ("policy", digest_json(archive.policy), signed.policy_digest),
        ("evidence", evidence_digest(archive.evidence), signed.evidence_digest),
    ):
        if actual != named:
            raise AttestationError(
                "ARCHIVE_TAMPERED",
                f"the archived {what} hashes to {actual[:16]}…, but result {signed.result_id} names "
                f"{what} {named[:16]}…; the archive was edited — restore it from backup",
            )
    try:
        policy = AttestationPolicy.from_dict(archive.policy, source="archived policy")
        root = None if archive.root_ca is None else bytes.fromhex(archive.root_ca)
    except (ConfigError, ValueError) as exc:
        raise AttestationError("ARCHIVE_MALFORMED", f"archive of {signed.result_id}: {exc}") from exc
    moment = parse_iso(signed.issued_at, field="issued_at", code="RESULT_MALFORMED")
    digest, claims = _appraise(signed.tee_type, archive.evidence, policy, signed.task, moment, root)
    if signed.status == "ok":
        try:
            session_key = PublicKey.from_hex(signed.session_public_key)
            nonce = bytes.fromhex(signed.nonce)
        except (IntegrityError, ValueError) as exc:
            raise AttestationError(
                "RESULT_MALFORMED", f"result {signed.result_id} has an unreadable session key or nonce"
            ) from exc
        require_binding(claims.report_data, session_key, nonce)
    elif signed.status != UNBOUND or signed.session_public_key or signed.nonce:
        raise AttestationError(
            "RESULT_MALFORMED",
            f"result {signed.result_id} has status {signed.status!r}; a hardware result is 'ok' (bound "
            "to a session key and nonce) or 'unbound' (neither)",
        )
    again = _result(
        claims,
        digest=digest,
        policy=policy,
        task=signed.task,
        provider_id=signed.provider_id,
        session_public_key=signed.session_public_key,
        nonce=signed.nonce,
        moment=moment,
        assurance="hardware" if root is None else "simulated",
        status=signed.status,
    )
    if again.signed() != signed:
        differ = [name for name in _SIGNED_FIELDS if getattr(again, name) != getattr(signed, name)]
        raise AttestationError(
            "REVERIFY_MISMATCH",
            f"re-verifying result {signed.result_id} at {signed.issued_at} gives different {differ}; "
            "the stored result does not follow from its evidence and policy — do not trust it",
            fields=differ,
        )
    return again
