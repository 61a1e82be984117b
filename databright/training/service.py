"""Running one training job on the pool: quote it, release the data to the attested worker, archive
what comes back. The ``train`` flow calls these steps as tasks; tests call them directly.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from databright.config import Settings
from databright.crypto import digest_file
from databright.datasets import DatasetVersion, check_trainable, load_contract, release
from databright.db import ExchangeDB
from databright.errors import DatabrightError, IntegrityError, TrainingError
from databright.market.allocation import Quote
from databright.market.offers import Offer
from databright.market.pool import LocalPool
from databright.provenance.record import record_training
from databright.training.jobs import TrainingJob, complete_job, fail_job
from databright.training.spec import JobSpec
from databright.trust import find_task, load_task_config


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
) -> TrainingJob:
    """Run an escrowed job on the worker behind ``offer``; on any failure refund and re-raise."""
    member = pool.member(offer)
    files = release(settings.workspace_dir, version)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{job.job_id}-") as out:
            spec = JobSpec(
                job_id=job.job_id,
                period=job.period,
                run_id=f"run-{uuid.uuid4().hex[:12]}",
                provider_id=offer.provider_id,
                task=job.task,
                dataset=version.dataset,
                dataset_version=version.version,
                data_files=tuple(str(p) for p in files.data_files),
                withdrawn_files=tuple(str(p) for p in files.withdrawn_files),
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
            )
    except DatabrightError as exc:
        fail_job(db, job, f"{type(exc).__name__}: {exc}")
        raise
    # After the try: the job stands completed, and a failure to record it must not refund it.
    record_training(settings, db, completed, spec)
    return completed
