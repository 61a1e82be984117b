"""Provenance: every stage signs what it read and what it wrote, so a period can be audited.

A guide, in the order a period runs:

1. ``ingest`` and ``withdraw`` — when a version commits, ``record_version`` signs the contributed
   file (or withdrawn ids), contract and parent manifest → manifest, Merkle root and version files.
2. ``train`` — when a job completes, ``record_training`` signs the version, task measurement, job
   spec, attestation result and validation file → receipt, model and (in-run) valuation.
3. ``value`` — when the attested value task's signed valuation of a job is stored
   (``training.value_service.value_job``), ``record_valuation`` signs the usage receipt, model,
   validation file, value-task measurement, attestation result and Merkle root → valuation
   receipt, values root and valuation result.
4. ``settle`` — ``settle_period(..., provenance=ProvenanceLog.from_settings(settings))`` signs the
   policy and, per job, the usage and valuation receipts → allocation root, inputs digest,
   transfers digest, holder statements and the owner values each job's data share was paid on.
5. ``audit_verify(settings, period)`` checks every signature and walks from the posted transfers
   back to the contributed files; ``AuditReport.first_broken`` names the first broken ``Link``.

Statements are in-toto Statements in DSSE envelopes signed by the stage key ``keys/provenance.pem``
(``statements``), stored content-addressed in the object store and indexed in the exchange
database; recording is idempotent by content, so re-running a stage never signs a second statement.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from databright.provenance.artifacts import transfers_digest
    from databright.provenance.audit import audit_period, audit_verify
    from databright.provenance.record import (
        record_settlement,
        record_training,
        record_valuation,
        record_version,
        version_statement,
    )
    from databright.provenance.report import AuditReport, Link
    from databright.provenance.statements import (
        PAYLOAD_TYPE,
        PREDICATE_TYPE,
        STAGES,
        Artifact,
        IndexedStatement,
        ProvenanceLog,
        RecordedStatement,
        StageStatement,
        load_stage_key,
        open_statement,
        sign_statement,
        stage_public_key,
    )

# Names resolve on first use: ``databright.db`` imports ``databright.provenance.statements`` for its
# DDL, and that must not drag in the datasets, trust and settlement packages the audit reads.
_EXPORTS = {
    "AuditReport": "report",
    "Link": "report",
    "audit_period": "audit",
    "audit_verify": "audit",
    "record_settlement": "record",
    "record_training": "record",
    "record_valuation": "record",
    "record_version": "record",
    "transfers_digest": "artifacts",
    "version_statement": "record",
    "PAYLOAD_TYPE": "statements",
    "PREDICATE_TYPE": "statements",
    "STAGES": "statements",
    "Artifact": "statements",
    "IndexedStatement": "statements",
    "ProvenanceLog": "statements",
    "RecordedStatement": "statements",
    "StageStatement": "statements",
    "load_stage_key": "statements",
    "open_statement": "statements",
    "sign_statement": "statements",
    "stage_public_key": "statements",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'databright.provenance' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"databright.provenance.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STAGES",
    "Artifact",
    "AuditReport",
    "IndexedStatement",
    "Link",
    "ProvenanceLog",
    "RecordedStatement",
    "StageStatement",
    "audit_period",
    "audit_verify",
    "load_stage_key",
    "open_statement",
    "record_settlement",
    "record_training",
    "record_valuation",
    "record_version",
    "sign_statement",
    "stage_public_key",
    "transfers_digest",
    "version_statement",
]
