"""Trust: who may touch data, proven by attestation, and what they did, proven by signed receipts.

A guide, in the order things happen:

1. ``measure_task(enclave_tasks/<name>)`` names the exact code and config of an enclave task; the
   appraisal policy (``AttestationPolicy.load("policies/attestation.yaml")``) lists the allowed
   measurements per task, signers, minimum svn, debug, TCB statuses and lifetimes.
2. The exchange's verifier issues a single-use nonce (``SimulatedVerifier.issue_nonce``).
3. Inside the worker, the enclave makes a session key and an ``Attester`` (``SimulatedAttester``)
   produces evidence whose report data is ``binding_report_data(session key, nonce)``.
4. ``SimulatedVerifier.appraise`` checks the evidence against the policy, consumes the nonce,
   archives the evidence, and returns an ``AttestationResult`` signed by the verifier key.
   On Intel hardware, ``DcapVerifier`` (tee types ``sgx-dcap``, ``tdx``) does the same with a real
   DCAP quote and its collateral (``dcap_evidence``), checked by dcap-qvl; ``reverify`` re-runs an
   archived hardware appraisal at its original time for an audit.
5. The enclave signs a ``UsageReceipt`` (in-toto Statement in a DSSE envelope) with its session
   key; settlement calls ``verify_usage_receipt`` before paying anyone from it.

The simulated cap. The ``simulated`` backend has no hardware root of trust: a key file on the
exchange stands in for the CPU vendor, so anyone who can read ``keys/`` could forge a quote. Its
results are therefore capped below full trust: ``SimulatedVerifier`` always writes
``assurance: "simulated"`` (no policy can raise it to ``"hardware"``), receipts must repeat the
result's assurance, everything paid from them inherits it, and ``production_policy`` refuses the
``simulated`` tee type outright. The code paths — binding, nonces, policy, signed results and
receipts — are the ones a hardware verifier uses, so moving to real TEEs changes the evidence,
not the callers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from databright.crypto import PublicKey
from databright.db import ExchangeDB
from databright.errors import AttestationError, ReceiptRejected
from databright.storage.objectstore import ObjectStore
from databright.trust.dcap import VerifiedQuote, dcap_evidence, tdx_measurement, verify_quote
from databright.trust.evidence import (
    ATTESTATION_RESULT_TYPE,
    BINDING_CONTEXT,
    PLATFORM_ENDORSEMENT_TYPE,
    SIM_QUOTE_TYPE,
    USAGE_RECEIPT_TYPE,
    VALUATION_RECEIPT_TYPE,
    Attester,
    Verifier,
    binding_report_data,
    evidence_digest,
)
from databright.trust.hardware import (
    DcapVerifier,
    HardwareArchive,
    HardwareAttestationResult,
    load_archive,
    reverify,
)
from databright.trust.intake import Admission, IntakeReport, ReceiptIntake, Rejection
from databright.trust.kex import KexKeyPair, KeyRelease
from databright.trust.keys import DataKeys, KeyService
from databright.trust.measurement import find_task, load_task_config, measure_task, task_manifest
from databright.trust.policy import AttestationPolicy, HardwareIdentity, production_policy
from databright.trust.receipts import (
    ComputeClaim,
    OwnerUsage,
    UsageReceipt,
    parse_receipt,
    receipt_digest,
    records_leaf,
    records_root,
    sign_receipt,
    verify_receipt,
)
from databright.trust.registry import issue_nonce, purge_nonces
from databright.trust.simulated import (
    SimulatedAttester,
    SimulatedPlatform,
    SimulatedVendorRoot,
    provision_platform,
)
from databright.trust.valuation_receipts import (
    OwnerValue,
    ValuationReceipt,
    parse_valuation_receipt,
    sign_valuation_receipt,
    valuation_receipt_digest,
    values_root,
    verify_valuation_receipt,
)
from databright.trust.verifier import (
    AttestationResult,
    SimulatedVerifier,
    check_archived_evidence,
    load_result,
    load_verifier_key,
    open_result,
)


def _trusted_result(
    db: ExchangeDB, store: ObjectStore, verifier_public_key: PublicKey, *, result_id: str, what: str
) -> AttestationResult:
    """The attestation result a receipt names, its verifier signature and archived evidence checked."""
    try:
        result = load_result(db, verifier_public_key, result_id)
        check_archived_evidence(store, result)
    except AttestationError as exc:
        raise ReceiptRejected(
            f"{what} names attestation result {result_id}, which cannot be trusted: {exc.message}",
            reason=exc.code,
        ) from exc
    return result


def verify_usage_receipt(
    db: ExchangeDB,
    store: ObjectStore,
    verifier_public_key: PublicKey,
    envelope: dict[str, Any],
    *,
    now: dt.datetime | None = None,
) -> UsageReceipt:
    """Verify a usage receipt end to end before anyone is paid from it.

    Loads the attestation result the receipt names, re-checks the verifier's signature over it and
    that its archived evidence is intact, then checks the receipt against it (``verify_receipt``).
    Any failure is a ``ReceiptRejected``; its ``context['reason']`` says which check failed.
    """
    claimed = parse_receipt(envelope)
    result = _trusted_result(
        db,
        store,
        verifier_public_key,
        result_id=claimed.attestation_result_id,
        what=f"usage receipt for job {claimed.job_id}",
    )
    return verify_receipt(envelope, result, now=now)


def verify_signed_valuation(
    db: ExchangeDB,
    store: ObjectStore,
    verifier_public_key: PublicKey,
    envelope: dict[str, Any],
    *,
    now: dt.datetime | None = None,
) -> ValuationReceipt:
    """Verify a valuation receipt end to end, like ``verify_usage_receipt``, before paying on its values."""
    claimed = parse_valuation_receipt(envelope)
    result = _trusted_result(
        db,
        store,
        verifier_public_key,
        result_id=claimed.attestation_result_id,
        what=f"valuation receipt for job {claimed.job_id}",
    )
    return verify_valuation_receipt(envelope, result, now=now)


__all__ = [
    "ATTESTATION_RESULT_TYPE",
    "BINDING_CONTEXT",
    "PLATFORM_ENDORSEMENT_TYPE",
    "SIM_QUOTE_TYPE",
    "USAGE_RECEIPT_TYPE",
    "VALUATION_RECEIPT_TYPE",
    "Admission",
    "AttestationPolicy",
    "AttestationResult",
    "Attester",
    "ComputeClaim",
    "DataKeys",
    "DcapVerifier",
    "HardwareArchive",
    "HardwareAttestationResult",
    "HardwareIdentity",
    "IntakeReport",
    "KexKeyPair",
    "KeyRelease",
    "KeyService",
    "OwnerUsage",
    "OwnerValue",
    "ReceiptIntake",
    "Rejection",
    "SimulatedAttester",
    "SimulatedPlatform",
    "SimulatedVendorRoot",
    "SimulatedVerifier",
    "UsageReceipt",
    "ValuationReceipt",
    "VerifiedQuote",
    "Verifier",
    "binding_report_data",
    "check_archived_evidence",
    "dcap_evidence",
    "evidence_digest",
    "find_task",
    "issue_nonce",
    "load_archive",
    "load_result",
    "load_task_config",
    "load_verifier_key",
    "measure_task",
    "open_result",
    "parse_receipt",
    "parse_valuation_receipt",
    "production_policy",
    "provision_platform",
    "purge_nonces",
    "receipt_digest",
    "records_leaf",
    "records_root",
    "reverify",
    "sign_receipt",
    "sign_valuation_receipt",
    "task_manifest",
    "tdx_measurement",
    "valuation_receipt_digest",
    "values_root",
    "verify_quote",
    "verify_receipt",
    "verify_signed_valuation",
    "verify_usage_receipt",
    "verify_valuation_receipt",
]
