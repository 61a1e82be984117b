"""The names the stages give their artifacts, and the digests the audit recomputes the same way.

One scheme, shared by the recording stages and the audit::

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
    valuation:<job>                     the in-run contributions' ``ValuationResult`` digest the usage
                                        receipt quotes (reported, never paid on)
    valuation-receipt:<job>             the signed valuation receipt of the value task (its envelope's
                                        digest, ``SettledJob.valuation_receipt_digest``)
    values:<job>                        Merkle root over the job's ``(owner, record, value)`` rows: the
                                        values table, named as the valuation receipt's own subject
    valuation-result:<job>              the value task's ``ValuationResult`` digest (method, params,
                                        seed, inputs, library versions, values)
    owner-values:<job>                  per-owner rows, visits, signed value and quantized weight of a job
    allocation-policy:v<n>              the allocation policy digest
    allocation-root:<period> / settlement-inputs:<period> / transfers:<period>
    holder-statement:<period>/<file>    each holder statement file written for the period
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from databright.crypto import digest_json
from databright.errors import IntegrityError

if TYPE_CHECKING:
    from databright.datasets.versions import DatasetVersion
    from databright.db import ExchangeDB
    from databright.settlement.allocation import SettledJob
    from databright.storage.objectstore import ObjectStore
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


def valuation_receipt_name(job_id: str) -> str:
    return f"valuation-receipt:{job_id}"


def values_name(job_id: str) -> str:
    return f"values:{job_id}"


def valuation_result_name(job_id: str) -> str:
    return f"valuation-result:{job_id}"


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
