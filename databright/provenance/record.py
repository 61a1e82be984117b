"""What each stage binds, and the calls the stages make to record it.

Artifact names and the digests the audit recomputes the same way are in ``artifacts``.

Stages and what they bind (inputs → subjects):

* ``ingest``: contributed file, contract, parent manifest → manifest, Merkle root, records, report,
  quarantine; ``withdraw``: parent manifest, withdrawn ids → manifest, Merkle root, (empty) records.
  Both are derived from the registry row and the checked manifest right after the version commits,
  so ``record_version`` can be called again for a version whose recording was interrupted.
* ``train`` (per job): manifest, Merkle root, task measurement, job spec, attestation result,
  validation file → receipt, model, valuation (in-run contributions). Assurance: the attestation
  result's.
* ``value`` (per job, when the attested value task's signed valuation is stored): usage receipt,
  model, validation file, value-task measurement, its attestation result, Merkle root → valuation
  receipt, values, valuation result. Assurance: the valuation receipt's. Derived from the
  ``valuations`` row and the stored envelope alone, so ``record_valuation`` can be called again.
* ``settle``: allocation policy, and per job the usage receipt and the valuation receipt →
  allocation root, settlement inputs, transfers (sha256 over the canonical list of posted
  transfers), holder statements, and per job the owner values it paid the data share on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.config import current_period
from databright.crypto import canonical_json, digest_file, sha256_hex
from databright.errors import IntegrityError
from databright.provenance.artifacts import (
    attestation_result_digest,
    envelope_digest,
    job_spec_key,
    job_spec_record,
    load_envelope,
    merkle_root_name,
    model_name,
    owner_values_digest,
    owner_values_name,
    receipt_name,
    transfers_digest,
    valuation_name,
    valuation_receipt_name,
    valuation_result_name,
    values_name,
    version_name,
)
from databright.provenance.statements import Artifact, ProvenanceLog, RecordedStatement, StageStatement

if TYPE_CHECKING:
    from databright.config import Settings
    from databright.db import ExchangeDB
    from databright.settlement.allocation import SettledJob
    from databright.settlement.result import Settlement
    from databright.training.jobs import TrainingJob
    from databright.training.spec import JobSpec
    from databright.training.valuation_store import SignedValuation


# --- ingest and withdraw --------------------------------------------------------------------------


def version_statement(settings: Settings, db: ExchangeDB, dataset: str, version: int) -> StageStatement:
    """The ``ingest`` or ``withdraw`` statement of a registered version, from its registry rows and
    its manifest (checked against the registry's manifest digest)."""
    from databright.datasets.registry import Registry
    from databright.datasets.versions import WITHDRAWN_FILE, read_manifest

    registry = Registry(db)
    found = registry.get_version(dataset, version)
    manifest = read_manifest(settings.workspace_dir, found)
    files: dict[str, str] = manifest["files"]
    subjects = [
        Artifact(version_name(dataset, version), found.manifest_digest),
        Artifact(merkle_root_name(dataset, version), found.merkle_root),
        *(Artifact(version_name(dataset, version, f), d) for f, d in files.items() if f != WITHDRAWN_FILE),
    ]
    inputs = []
    if found.parent is not None:
        inputs.append(Artifact(version_name(dataset, found.parent), manifest["parent_manifest_digest"]))
    parameters: dict[str, Any] = {
        "dataset": dataset,
        "version": version,
        "parent": found.parent,
        "record_count": found.record_count,
        "contract_kind": found.contract_kind,
        "schema_digest": found.schema_digest,
        "dvc_md5": found.dvc_md5,
    }
    withdrawal = db.query(
        "SELECT owner, record_count, withdrawn_digest FROM withdrawals WHERE dataset = ? AND version = ?",
        [dataset, version],
    )
    if withdrawal:
        owner, count, withdrawn_digest = withdrawal[0]
        stage = "withdraw"
        inputs.append(Artifact(f"withdrawn-ids:{dataset}@v{version}", withdrawn_digest))
        parameters |= {"owner": owner, "withdrawn": int(count)}
    else:
        made_by = [s for s in registry.list_submissions(dataset) if s.version == version]
        if len(made_by) != 1:
            raise IntegrityError(
                f"{dataset} v{version} is named by {len(made_by)} submissions in the registry, expected one; "
                "the registry was edited — restore it before recording provenance"
            )
        submission = made_by[0]
        stage = "ingest"
        inputs += [
            Artifact(f"contributed-file:{submission.submission_id}", submission.file_digest),
            Artifact(f"contract:{found.contract_kind}", manifest["contract_digest"]),
        ]
        parameters |= {
            "submission_id": submission.submission_id,
            "owner": submission.owner,
            "file_name": submission.file_name,
            "rows_received": submission.rows_received,
            "accepted": submission.accepted,
            "quarantined_rows": submission.quarantined,
            "duplicates_refused": submission.duplicates,
            "report_digest": submission.report_digest,
        }
    return StageStatement(
        stage=stage,
        period=settings.period or current_period(),
        subjects=tuple(subjects),
        inputs=tuple(inputs),
        parameters=parameters,
        assurance="none",
    )


def record_version(
    settings: Settings, db: ExchangeDB, dataset: str, version: int, *, log: ProvenanceLog | None = None
) -> RecordedStatement:
    """Record the ``ingest`` or ``withdraw`` statement of a version (idempotent)."""
    log = log or ProvenanceLog.from_settings(settings, db)
    return log.record(version_statement(settings, db, dataset, version))


# --- train ----------------------------------------------------------------------------------------


def record_training(
    settings: Settings, db: ExchangeDB, job: TrainingJob, spec: JobSpec, *, log: ProvenanceLog | None = None
) -> RecordedStatement:
    """Record the ``train`` statement of a completed job: what it read, under which attestation,
    and the receipt, model and valuation it produced."""
    from databright.datasets.registry import Registry
    from databright.trust.receipts import parse_receipt

    log = log or ProvenanceLog.from_settings(settings, db)
    if job.status != "completed" or not job.receipt_key or not job.model_key or not job.model_digest:
        raise IntegrityError(
            f"job {job.job_id} is {job.status} without a stored receipt and model; only a completed job "
            "has a train statement"
        )
    version = Registry(db).get_version(job.dataset, job.dataset_version)
    envelope = load_envelope(log.store, job.receipt_key)
    receipt = parse_receipt(envelope)
    validation_digest = digest_file(Path(spec.validation_file))
    spec_bytes = canonical_json(job_spec_record(spec, version, validation_digest))
    spec_digest = sha256_hex(spec_bytes)
    log.store.put_bytes(job_spec_key(spec_digest), spec_bytes)
    subjects = [
        Artifact(receipt_name(job.job_id), envelope_digest(envelope)),
        Artifact(model_name(job.job_id), job.model_digest),
    ]
    if isinstance(receipt.valuation.get("digest"), str):
        subjects.append(Artifact(valuation_name(job.job_id), receipt.valuation["digest"]))
    inputs = [
        Artifact(version_name(version.dataset, version.version), version.manifest_digest),
        Artifact(merkle_root_name(version.dataset, version.version), version.merkle_root),
        Artifact(f"task:{job.task}", receipt.measurement),
        Artifact(f"job-spec:{job.job_id}", spec_digest),
        Artifact(
            f"attestation-result:{spec.attestation_result_id}",
            attestation_result_digest(db, spec.attestation_result_id),
        ),
        Artifact(f"validation-file:{job.job_id}", validation_digest),
    ]
    return log.record(
        StageStatement(
            stage="train",
            period=job.period,
            subjects=tuple(subjects),
            inputs=tuple(inputs),
            parameters={
                "job_id": job.job_id,
                "run_id": spec.run_id,
                "trainer_id": job.trainer_id,
                "provider_id": spec.provider_id,
                "task": job.task,
                "dataset": job.dataset,
                "dataset_version": job.dataset_version,
                "seed": spec.seed,
                "payment": job.payment,
                "work_units": job.work_units,
                "attestation_result_id": spec.attestation_result_id,
                "receipt_key": job.receipt_key,
                "model_key": job.model_key,
                "job_spec_key": job_spec_key(spec_digest),
            },
            assurance=spec.assurance,
        )
    )


# --- value ---------------------------------------------------------------------------------------


def record_valuation(
    settings: Settings,
    db: ExchangeDB,
    job: TrainingJob,
    valuation: SignedValuation,
    *,
    log: ProvenanceLog | None = None,
) -> RecordedStatement:
    """Record the ``value`` statement of a stored, verified valuation: which usage receipt, model,
    validation file, version and attested value task it rests on, and the signed receipt, values
    table root and ``ValuationResult`` it produced (idempotent)."""
    from databright.training.valuation_store import load_valuation_envelope
    from databright.trust.valuation_receipts import parse_valuation_receipt

    log = log or ProvenanceLog.from_settings(settings, db)
    if valuation.job_id != job.job_id:
        raise IntegrityError(
            f"the valuation of job {valuation.job_id} was handed in for job {job.job_id}; pass the job's "
            "own valuation (valuation_store.get_valuation(db, job.job_id))"
        )
    if not job.receipt_key:
        raise IntegrityError(f"job {job.job_id} has no stored usage receipt, so its valuation binds nothing")
    usage = envelope_digest(load_envelope(log.store, job.receipt_key))
    envelope = load_valuation_envelope(log.store, valuation)
    receipt = parse_valuation_receipt(envelope)
    # The value task signed these; a row that disagrees with its own envelope was edited.
    row = (valuation.usage_receipt_digest, valuation.valuation_digest, valuation.attestation_result_id)
    signed = (receipt.usage_receipt_digest, receipt.valuation_digest, receipt.attestation_result_id)
    if receipt.job_id != job.job_id or row != signed or usage != receipt.usage_receipt_digest:
        raise IntegrityError(
            f"the stored valuation of job {job.job_id} does not match its row or the job's usage receipt "
            f"(receipt values job {receipt.job_id}, usage receipt {receipt.usage_receipt_digest[:16]}…, "
            f"stored usage receipt {usage[:16]}…); value the job again before recording it"
        )
    return log.record(
        StageStatement(
            stage="value",
            period=job.period,
            subjects=(
                Artifact(valuation_receipt_name(job.job_id), valuation.receipt_digest),
                Artifact(values_name(job.job_id), receipt.values_root),
                Artifact(valuation_result_name(job.job_id), receipt.valuation_digest),
            ),
            inputs=(
                Artifact(receipt_name(job.job_id), receipt.usage_receipt_digest),
                Artifact(model_name(job.job_id), receipt.model_digest),
                Artifact(f"validation-file:{job.job_id}", receipt.validation_digest),
                Artifact(f"task:{receipt.task}", receipt.measurement),
                Artifact(
                    f"attestation-result:{receipt.attestation_result_id}",
                    attestation_result_digest(db, receipt.attestation_result_id),
                ),
                Artifact(
                    merkle_root_name(receipt.dataset, receipt.dataset_version), receipt.dataset_merkle_root
                ),
            ),
            parameters={
                "job_id": job.job_id,
                "provider_id": receipt.provider_id,
                "task": receipt.task,
                "method": receipt.method,
                "params": dict(receipt.params),
                "seed": receipt.seed,
                "dataset": receipt.dataset,
                "dataset_version": receipt.dataset_version,
                "attestation_result_id": receipt.attestation_result_id,
                "receipt_key": valuation.receipt_key,
                "values_key": valuation.values_key,
                "owners": len(receipt.owners),
                "near_duplicate_groups": receipt.near_duplicate_groups,
            },
            assurance=receipt.assurance,
        )
    )


# --- settle ---------------------------------------------------------------------------------------


def _check_stored(log: ProvenanceLog, period: str, job: SettledJob) -> None:
    """The stored usage and valuation receipts must still be the ones the settlement bound."""
    from databright.training.valuation_store import get_valuation, load_valuation_envelope

    keys = log.db.query("SELECT receipt_key FROM jobs WHERE job_id = ?", [job.job_id])
    if not keys or not keys[0][0]:
        raise IntegrityError(f"job {job.job_id} has no receipt_key, so its settlement cannot be bound")
    found = envelope_digest(load_envelope(log.store, keys[0][0]))
    valuation = get_valuation(log.db, job.job_id)
    if valuation is None:
        raise IntegrityError(
            f"job {job.job_id} was settled on valuation receipt {job.valuation_receipt_digest[:16]}…, but "
            "its valuations row is gone; restore the exchange database before recording provenance"
        )
    valued = envelope_digest(load_valuation_envelope(log.store, valuation))
    for what, stored, settled in (
        ("receipt", found, job.receipt_digest),
        ("valuation receipt", valued, job.valuation_receipt_digest),
    ):
        if stored != settled:
            raise IntegrityError(
                f"the stored {what} of job {job.job_id} changed while period {period} was settled "
                f"(digest {stored[:16]}…, settled {settled[:16]}…); investigate the object store before "
                "settling again"
            )


def record_settlement(
    log: ProvenanceLog, settlement: Settlement, statement_paths: Sequence[Path]
) -> RecordedStatement:
    """Record the period's ``settle`` statement (idempotent)."""
    period = settlement.period
    for job in settlement.jobs:
        _check_stored(log, period, job)
    transfers, count = transfers_digest(log.db, period)
    subjects = [
        Artifact(f"allocation-root:{period}", settlement.allocation_root),
        Artifact(f"settlement-inputs:{period}", settlement.inputs_digest),
        Artifact(f"transfers:{period}", transfers),
        *(Artifact(f"holder-statement:{period}/{p.name}", digest_file(p)) for p in statement_paths),
        *(Artifact(owner_values_name(job.job_id), owner_values_digest(job)) for job in settlement.jobs),
    ]
    inputs = [Artifact(f"allocation-policy:v{settlement.policy_version}", settlement.policy_digest)]
    for job in settlement.jobs:
        inputs += [
            Artifact(receipt_name(job.job_id), job.receipt_digest),
            Artifact(valuation_receipt_name(job.job_id), job.valuation_receipt_digest),
        ]
    return log.record(
        StageStatement(
            stage="settle",
            period=period,
            subjects=tuple(subjects),
            inputs=tuple(inputs),
            parameters={
                "settlement_id": settlement.settlement_id,
                "policy_version": settlement.policy_version,
                "approver": settlement.approver,
                "jobs": [job.job_id for job in settlement.jobs],
                "transfers": count,
                "total_paid": settlement.total_paid,
            },
            assurance=settlement.assurance,
        )
    )
