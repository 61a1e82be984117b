"""The ``train`` flow: a trainer's job, from quote and escrow to a signed receipt in the store."""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.datasets import DatasetVersion, Registry
from databright.errors import NoOfferFits
from databright.market import list_providers
from databright.market.pool import LocalPool
from databright.market.remote_pool import RemotePool
from databright.money import format_amount
from databright.training.jobs import TrainingJob, job_id_for, refuse_resubmission
from databright.training.service import train_on_pool, validation_digest


class TrainConfig(BaseModel):
    dataset: str = Field(description="Dataset to train on")
    version: int | None = Field(None, description="Dataset version (latest when empty)", ge=1)
    validation: str = Field(
        description="Trainer's validation file (CSV or Parquet) the data is valued against"
    )
    payment: int | None = Field(
        None,
        description="What the job pays, in minor units (1 DBX = 1 000 000). Empty: the quote — the smallest "
        "payment whose data share covers the dataset's price and whose compute share covers the offers",
        gt=0,
    )
    budget: int | None = Field(
        None,
        description="Most the trainer will spend, in minor units; escrowed at submission, and what the job "
        "does not use (budget - payment) is refunded at settlement. Empty: exactly the payment",
        gt=0,
    )
    trainer: str = Field(description="Trainer id whose account pays", min_length=1, max_length=64)
    task: str = Field("tabular_logreg", description="Enclave task to run")
    workers: int = Field(
        1,
        description="Workers to train on at once (data-parallel, torch.distributed): each reads one shard "
        "of the rows and signs a receipt for it",
        ge=1,
        le=64,
    )
    max_price: int | None = Field(
        None, description="Highest price per work unit to accept, in minor units (empty: any)", gt=0
    )
    pool: str = Field(
        "",
        description="Work pool whose provider agents run the job (`databright worker start --pool`); "
        "empty: start and attest the registered providers' workers for this run only",
    )
    max_attempts: int = Field(
        2, description="Tries when a worker dies mid-job (each failed try is refunded)", ge=1, le=5
    )
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
def run_on_pool(settings: Settings, config: TrainConfig, version: DatasetVersion) -> list[TrainingJob]:
    db = settings.exchange_db()
    job_id = job_id_for(
        {
            # How the job is paid for, where and on how many workers it runs are not what is asked: a
            # retry with another budget, price cap, pool or worker count is the same request and must
            # not become a second job.
            **config.model_dump(
                exclude={"validation", "version", "budget", "max_price", "max_attempts", "workers", "pool"}
            ),
            "period": settings.period,
            "dataset_version": version.version,
            "validation_sha256": validation_digest(Path(config.validation)),
        }
    )
    refuse_resubmission(db, job_id)  # before the pool starts: a duplicate costs nothing
    cap = config.max_price
    if config.pool:
        pool: LocalPool | RemotePool = RemotePool(settings, db, config.pool, task=config.task)
    else:
        providers = [p for p in list_providers(db) if cap is None or p.price_per_unit <= cap]
        if not providers:
            raise NoOfferFits(
                f"no registered provider prices a work unit at or below {cap} minor units; raise "
                "--max-price or wait for cheaper providers"
            )
        pool = LocalPool(settings, db, providers, task=config.task)
    with pool:
        return train_on_pool(
            settings,
            db,
            pool,
            version,
            job_id=job_id,
            trainer_id=config.trainer,
            task=config.task,
            payment=config.payment,
            budget=config.budget,
            validation=Path(config.validation),
            seed=config.seed,
            workers=config.workers,
            max_attempts=config.max_attempts,
            max_price=cap,
        )


def deploy_train(work_pool: str, *, name: str = "train") -> str:
    """Deploy ``train`` to a process work pool (the provider agents' Prefect workers run it) from this
    checkout; return the deployment id. A run's parameters are one ``TrainConfig`` (``config``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from databright.config import PROJECT_ROOT

    # The agents' Prefect workers create the pool when they start; the deployment may come first.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    deployment_id = train_flow.from_source(  # type: ignore[attr-defined]
        source=str(PROJECT_ROOT), entrypoint="flows/train.py:train_flow"
    ).deploy(name=name, work_pool_name=work_pool, build=False, push=False, print_next_steps=False)
    return str(deployment_id)


@flow(name="train", log_prints=True)
def train_flow(config: TrainConfig) -> list[TrainingJob]:
    """Train one job; its parts come back, one per worker (a single-worker job has one part)."""
    settings = Settings.from_env().ensure_dirs()
    version = resolve_version(settings, config)
    parts = run_on_pool(settings, config, version)
    lines = "\n".join(
        f"| `{p.job_id}` | `{p.provider_id}` | {p.work_units:,} | {format_amount(p.payment)} "
        f"| `{p.receipt_key}` |"
        for p in parts
    )
    first = parts[0]
    paid = format_amount(sum(p.payment for p in parts))
    create_markdown_artifact(
        f"### {first.job_id.split('.')[0]}: {len(parts)} worker(s), {first.status}\n\n"
        f"trainer `{first.trainer_id}` paid {paid} for `{first.task}` on "
        f"`{first.dataset}@v{first.dataset_version}`; model sha256 `{first.model_digest}`\n\n"
        "| part | provider | attested work units | payment | receipt |\n|---|---|---|---|---|\n" + lines,
        key=f"train-{first.job_id.split('.')[0]}",
        description="Training job",
    )
    return parts


if __name__ == "__main__":
    import sys

    print(
        train_flow(
            TrainConfig(dataset=sys.argv[1], validation=sys.argv[2], payment=10_000_000, trainer="smoke")
        )
    )
