"""What each stage binds, and the calls the stages make to record it.

Artifact names (one scheme, shared with the audit)::

    dataset:<name>@v<n>/manifest.json   the version's manifest (its sha256 is the version's identity)
    dataset:<name>@v<n>#merkle-root     RFC 6962 root over the version's record ids
    dataset:<name>@v<n>/<file>          records.parquet, contract_report.json, quarantine.parquet
    contributed-file:<submission>       the file a contributor sent (registry ``file_digest``)
    contract:<kind>                     the contract digest the rows were checked against
    withdrawn-ids:<name>@v<n>           the withdrawal file (``withdrawn.parquet``) of a withdrawal
    task:<task>                         the enclave task's measurement
    job-spec:<job>                      the location-independent job spec, stored content-addressed
    attestation-result:<id>             the verifier-signed result envelope
    validation-file:<job>               the trainer's validation file
    receipt:<job> / model:<job>         the signed usage receipt (settlement's receipt digest) / model
    valuation:<job>                     the ``ValuationResult`` digest the receipt quotes
    owner-values:<job>                  per-owner rows, visits, value and quantized weight of a job
    allocation-policy:v<n>              the allocation policy digest
    allocation-root:<period> / settlement-inputs:<period> / transfers:<period>
    holder-statement:<period>/<file>    each holder statement file written for the period

Stages and what they bind (inputs → subjects):

* ``ingest``: contributed file, contract, parent manifest → manifest, Merkle root, records, report,
  quarantine; ``withdraw``: parent manifest, withdrawn ids → manifest, Merkle root, (empty) records.
  Both are derived from the registry row and the checked manifest right after the version commits,
  so ``record_version`` can be called again for a version whose recording was interrupted.
* ``train`` (per job): manifest, Merkle root, task measurement, job spec, attestation result,
  validation file → receipt, model, valuation. Assurance: the attestation result's.
* ``value`` (per job, where settlement reads the valuation): receipt, valuation → owner values.
* ``settle``: receipts, owner values, allocation policy → allocation root, settlement inputs,
  transfers (sha256 over the canonical list of posted transfers), holder statements.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databright.config import current_period
from databright.crypto import canonical_json, digest_file, digest_json, sha256_hex
from databright.errors import IntegrityError
from databright.provenance.statements import Artifact, ProvenanceLog, RecordedStatement, StageStatement

if TYPE_CHECKING:
    from databright.config import Settings
    from databright.datasets.versions import DatasetVersion
    from databright.db import ExchangeDB
    from databright.settlement.allocation import SettledJob
    from databright.settlement.result import Settlement
    from databright.storage.objectstore import ObjectStore
    from databright.training.jobs import TrainingJob
    from databright.training.spec import JobSpec

_TRANSFER_FIELDS = (
    "transfer_id", "debit_account", "credit_account", "amount", "ledger", "code", "period", "settlement_id",
    "job_id", "memo",
)  # fmt: skip


# --- names ----------------------------------------------------------------------------------------


def version_name(dataset: str, version: int, part: str = "manifest.json") -> str:
    return f"dataset:{dataset}@v{version}/{part}"


def merkle_root_name(dataset: str, version: int) -> str:
    return f"dataset:{dataset}@v{version}#merkle-root"


def receipt_name(job_id: str) -> str:
    return f"receipt:{job_id}"


def model_name(job_id: str) -> str:
    return f"model:{job_id}"


def valuation_name(job_id: str) -> str:
    return f"valuation:{job_id}"


def owner_values_name(job_id: str) -> str:
    return f"owner-values:{job_id}"


# --- digests the audit recomputes the same way ---------------------------------------------------


def envelope_digest(envelope: dict[str, Any]) -> str:
    """A stored receipt's digest as settlement binds it (``SettledJob.receipt_digest``)."""
    return digest_json(envelope)


def owner_values_digest(job: SettledJob) -> str:
    """The per-owner facts settlement weighs a job's data pool by, in owner order."""
    return digest_json({"job_id": job.job_id, "owners": [dataclasses.asdict(o) for o in job.owners]})


def transfers_digest(db: ExchangeDB, period: str) -> tuple[str, int]:
    """sha256 over the canonical list of the period's posted settlement transfers, and their count."""
    rows = db.query(
        f"SELECT {', '.join(_TRANSFER_FIELDS)} FROM transfers WHERE settlement_id = ? ORDER BY transfer_id",
        [f"settlement:{period}"],
    )
    listing = [dict(zip(_TRANSFER_FIELDS, row, strict=True)) for row in rows]  # amounts: exact Python ints
    return digest_json(listing), len(listing)


def attestation_result_digest(db: ExchangeDB, result_id: str) -> str:
    """Digest of the verifier-signed result envelope the exchange stored for ``result_id``."""
    from databright.trust.registry import fetch_result_row

    return digest_json(fetch_result_row(db, result_id)["envelope"])


def job_spec_record(spec: JobSpec, version: DatasetVersion, validation_digest: str) -> dict[str, Any]:
    """The job spec without host paths: data by digest, so the audit can check it anywhere."""
    return {
        "job_id": spec.job_id,
        "period": spec.period,
        "run_id": spec.run_id,
        "provider_id": spec.provider_id,
        "task": spec.task,
        "dataset": spec.dataset,
        "dataset_version": spec.dataset_version,
        "data_digests": list(version.data_digests),
        "withdrawn_digests": list(version.withdrawn_digests),
        "expected_merkle_root": spec.expected_merkle_root,
        "schema": spec.schema,
        "validation_digest": validation_digest,
        "config": spec.config,
        "seed": spec.seed,
        "attestation_result_id": spec.attestation_result_id,
        "assurance": spec.assurance,
    }


def job_spec_key(digest: str) -> str:
    return f"provenance/job-specs/{digest}.json"


def load_envelope(store: ObjectStore, key: str) -> dict[str, Any]:
    try:
        envelope = json.loads(store.get_bytes(key))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{key} is not a JSON envelope ({exc}); restore it from a backup") from exc
    if not isinstance(envelope, dict):
        raise IntegrityError(f"{key} holds a {type(envelope).__name__}, not a DSSE envelope object")
    return envelope


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


# --- value and settle -----------------------------------------------------------------------------


def record_settlement(
    log: ProvenanceLog, settlement: Settlement, statement_paths: Sequence[Path]
) -> tuple[RecordedStatement, ...]:
    """Record one ``value`` statement per job and the period's ``settle`` statement (idempotent)."""
    from databright.trust.receipts import parse_receipt

    period = settlement.period
    recorded = []
    for job in settlement.jobs:
        keys = log.db.query("SELECT receipt_key FROM jobs WHERE job_id = ?", [job.job_id])
        if not keys or not keys[0][0]:
            raise IntegrityError(f"job {job.job_id} has no receipt_key, so its valuation cannot be bound")
        envelope = load_envelope(log.store, keys[0][0])
        if envelope_digest(envelope) != job.receipt_digest:
            raise IntegrityError(
                f"the stored receipt of job {job.job_id} changed while period {period} was settled "
                f"(digest {envelope_digest(envelope)[:16]}…, settled {job.receipt_digest[:16]}…); "
                "investigate the object store before settling again"
            )
        valuation = parse_receipt(envelope).valuation.get("digest")
        inputs = [Artifact(receipt_name(job.job_id), job.receipt_digest)]
        if isinstance(valuation, str):
            inputs.append(Artifact(valuation_name(job.job_id), valuation))
        recorded.append(
            log.record(
                StageStatement(
                    stage="value",
                    period=period,
                    subjects=(Artifact(owner_values_name(job.job_id), owner_values_digest(job)),),
                    inputs=tuple(inputs),
                    parameters={"job_id": job.job_id, "owners": len(job.owners)},
                    assurance=job.assurance,
                )
            )
        )
    transfers, count = transfers_digest(log.db, period)
    subjects = [
        Artifact(f"allocation-root:{period}", settlement.allocation_root),
        Artifact(f"settlement-inputs:{period}", settlement.inputs_digest),
        Artifact(f"transfers:{period}", transfers),
        *(Artifact(f"holder-statement:{period}/{p.name}", digest_file(p)) for p in statement_paths),
    ]
    inputs = [Artifact(f"allocation-policy:v{settlement.policy_version}", settlement.policy_digest)]
    for job in settlement.jobs:
        inputs += [
            Artifact(receipt_name(job.job_id), job.receipt_digest),
            Artifact(owner_values_name(job.job_id), owner_values_digest(job)),
        ]
    recorded.append(
        log.record(
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
    )
    return tuple(recorded)
