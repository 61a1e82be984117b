"""Running one training job on the pool: quote it, release the data to the attested worker, archive
what comes back. The ``train`` flow calls these steps as tasks; tests call them directly.

Releasing the data means: the job spec names the version's *sealed* shards (``version_shards``)
and carries the data keys of v1..vn wrapped to the X25519 key the worker's attested session
published (``KeyService.release``). The key service refuses a session whose attestation result is
unknown, not ``ok``, expired or no longer allowed by the policy (``AttestationError``, recorded in
its release log); like any failure here, that refunds the job and leaves no receipt.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from pathlib import Path

from databright.config import Settings
from databright.crypto import digest_file
from databright.datasets import DatasetVersion, check_trainable, load_contract
from databright.db import ExchangeDB
from databright.errors import DatabrightError, IntegrityError, TrainingError
from databright.market.allocation import Quote
from databright.market.offers import Offer
from databright.market.pool import LocalPool
from databright.provenance.record import record_training
from databright.training.jobs import TrainingJob, complete_job, fail_job
from databright.training.spec import JobSpec
from databright.trust import find_task, load_task_config
from databright.trust.keys import KeyService
from databright.trust.sealing import version_shards


def validation_digest(path: Path) -> str:
    """sha256 of the trainer's validation file, which is part of what a job request names."""
    if not path.is_file():
        raise TrainingError(
            f"validation file {path} does not exist; pass the CSV or Parquet file (feature and label "
            "columns of the dataset's contract) that the model and the data are measured against"
        )
    return digest_file(path)


def quote_job(
    settings: Settings,
    version: DatasetVersion,
    *,
    task: str,
    payment: int,
    overrides: dict[str, object] | None = None,
) -> Quote:
    """Estimate the job's work units from the task manifest and the version's size."""
    check_trainable(settings.exchange_db(), version)
    config = {
        **load_task_config(find_task(settings.enclave_tasks_dir, task)).get("config", {}),
        **(overrides or {}),
    }
    split = settings.allocation_policy().split_payment(payment)
    return Quote(
        rows=version.record_count,
        epochs=int(config["epochs"]),
        model_cost=int(config["model_cost"]),
        payment=payment,
        compute_budget=split["compute"],
    )


def execute_job(
    settings: Settings,
    db: ExchangeDB,
    pool: LocalPool,
    offer: Offer,
    job: TrainingJob,
    version: DatasetVersion,
    *,
    validation: Path,
    seed: int,
    overrides: dict[str, object] | None = None,
    now: dt.datetime | None = None,
) -> TrainingJob:
    """Run an escrowed job on the worker behind ``offer``; on any failure refund and re-raise.

    ``now`` is the moment the key service judges the worker's attestation at (default: the clock).
    """
    member = pool.member(offer)
    try:
        shards = version_shards(settings.workspace_dir, version)
        keys = KeyService.from_settings(settings, db).release(
            version.dataset,
            version.version,
            attestation_result=member.attestation.result_id,
            kex_envelope=member.kex_envelope,
            task=job.task,
            now=now,
        )
        with tempfile.TemporaryDirectory(prefix=f"{job.job_id}-") as out:
            spec = JobSpec(
                job_id=job.job_id,
                period=job.period,
                run_id=f"run-{uuid.uuid4().hex[:12]}",
                provider_id=offer.provider_id,
                task=job.task,
                dataset=version.dataset,
                dataset_version=version.version,
                data_files=(),
                shards=shards,
                key_release=keys.to_dict(),
                expected_merkle_root=version.merkle_root,
                schema=load_contract(settings.contracts_dir, version.contract_kind).schema.to_dict(),
                validation_file=str(validation.resolve()),
                config=dict(overrides or {}),
                seed=seed,
                attestation_result_id=member.attestation.result_id,
                assurance=member.attestation.assurance,
                output_dir=out,
            )
            outcome = pool.run(offer, spec)
            model = Path(outcome.model_path)
            if digest_file(model) != outcome.model_digest:
                raise IntegrityError(f"model file of {job.job_id} does not match the digest in its receipt")
            completed = complete_job(
                db,
                settings.object_store(),
                job,
                receipt_envelope=outcome.receipt_envelope,
                model_bytes=model.read_bytes(),
                model_digest=outcome.model_digest,
                work_units=outcome.work_units,
                validation=validation,
            )
    except DatabrightError as exc:
        fail_job(db, job, f"{type(exc).__name__}: {exc}")
        raise
    # After the try: the job stands completed, and a failure to record it must not refund it.
    record_training(settings, db, completed, spec)
    return completed
