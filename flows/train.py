"""The ``train`` flow: a trainer's job, from quote and escrow to a signed receipt in the store."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.datasets import DatasetVersion, Registry
from databright.market import choose_offer, list_providers
from databright.market.pool import LocalPool
from databright.money import format_amount
from databright.training.jobs import TrainingJob, job_id_for, refuse_resubmission, submit_job
from databright.training.service import execute_job, quote_job, validation_digest


class TrainConfig(BaseModel):
    dataset: str = Field(description="Dataset to train on")
    version: int | None = Field(None, description="Dataset version (latest when empty)", ge=1)
    validation: str = Field(
        description="Trainer's validation file (CSV or Parquet) the data is valued against"
    )
    payment: int = Field(description="What the job pays, in minor units (1 DBX = 1 000 000)", gt=0)
    budget: int | None = Field(
        None,
        description="Most the trainer will spend, in minor units; escrowed at submission, and what the job "
        "does not use (budget - payment) is refunded at settlement. Empty: exactly the payment",
        gt=0,
    )
    trainer: str = Field(description="Trainer id whose account pays", min_length=1, max_length=64)
    task: str = Field("tabular_logreg", description="Enclave task to run")
    seed: int = Field(11, description="Training seed", ge=0)
    request_id: str = Field(
        "",
        description="Idempotency key: the same request with the same key is one job, never two",
        max_length=64,
    )


@task(cache_policy=NO_CACHE)
def resolve_version(settings: Settings, config: TrainConfig) -> DatasetVersion:
    return Registry(settings.exchange_db()).get_version(config.dataset, config.version)


@task(cache_policy=NO_CACHE)
def run_on_pool(settings: Settings, config: TrainConfig, version: DatasetVersion) -> TrainingJob:
    db = settings.exchange_db()
    job_id = job_id_for(
        {
            # The budget is how the job is paid for, not what is asked: a retry with another budget is
            # the same request and must not become a second job.
            **config.model_dump(exclude={"validation", "version", "budget"}),
            "period": settings.period,
            "dataset_version": version.version,
            "validation_sha256": validation_digest(Path(config.validation)),
        }
    )
    refuse_resubmission(db, job_id)  # before the pool starts: a duplicate costs nothing
    quote = quote_job(settings, version, task=config.task, payment=config.payment)
    with LocalPool(settings, db, list_providers(db), task=config.task) as pool:
        offer = choose_offer(pool.offers, quote)
        job = submit_job(
            db,
            job_id=job_id,
            period=settings.period,
            trainer_id=config.trainer,
            dataset=version.dataset,
            dataset_version=version.version,
            task=config.task,
            payment=config.payment,
            provider_id=offer.provider_id,
            offer_id=offer.offer_id,
            budget=config.budget,
        )
        return execute_job(
            settings, db, pool, offer, job, version, validation=Path(config.validation), seed=config.seed
        )


@flow(name="train", log_prints=True)
def train_flow(config: TrainConfig) -> TrainingJob:
    settings = Settings.from_env().ensure_dirs()
    version = resolve_version(settings, config)
    job = run_on_pool(settings, config, version)
    create_markdown_artifact(
        f"### {job.job_id}: {job.status}\n\n"
        f"trainer `{job.trainer_id}` paid {format_amount(job.payment)} for `{job.task}` on "
        f"`{job.dataset}@v{job.dataset_version}`; provider `{job.provider_id}` did "
        f"{job.work_units:,} attested work units;\n\nmodel sha256 `{job.model_digest}`\n\n"
        f"receipt `{job.receipt_key}`",
        key=f"train-{job.job_id}",
        description="Training job",
    )
    return job


if __name__ == "__main__":
    import sys

    print(
        train_flow(
            TrainConfig(dataset=sys.argv[1], validation=sys.argv[2], payment=10_000_000, trainer="smoke")
        )
    )
