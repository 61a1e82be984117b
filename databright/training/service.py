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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from databright.config import Settings
from databright.crypto import digest_file
from databright.datasets import DatasetVersion, check_trainable, load_contract
from databright.db import ExchangeDB
from databright.errors import DatabrightError, IntegrityError, NoOfferFits, TrainingError
from databright.market.allocation import Quote, choose_offers
from databright.market.offers import Offer
from databright.market.pool import WorkerPool
from databright.market.quotes import JobQuote, quote_job_price
from databright.processes import free_port
from databright.provenance.record import record_training
from databright.training.jobs import Completion, TrainingJob, complete_jobs
from databright.training.parts import Attempt, fail_attempt, submit_attempt
from databright.training.spec import JobOutcome, JobSpec
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


def price_job(
    settings: Settings,
    version: DatasetVersion,
    offers: Sequence[Offer],
    *,
    task: str,
    workers: int,
    budget: int,
    max_price: int | None = None,
    overrides: dict[str, object] | None = None,
) -> JobQuote:
    """Quote the job on the cheapest ``workers`` offers at or below ``max_price``: the dataset's data
    price plus the compute estimate, as the smallest payment the allocation policy splits to cover
    both; ``NoOfferFits`` with the quote when ``budget`` cannot pay it."""
    check_trainable(settings.exchange_db(), version)
    config = {
        **load_task_config(find_task(settings.enclave_tasks_dir, task)).get("config", {}),
        **(overrides or {}),
    }
    return quote_job_price(
        settings.allocation_policy(),
        settings.data_pricing(),
        [o for o in offers if max_price is None or o.price_per_unit <= max_price],
        dataset=version.dataset,
        rows=version.record_count,
        epochs=int(config["epochs"]),
        model_cost=int(config["model_cost"]),
        workers=workers,
        budget=budget,
    )


def execute_job(
    settings: Settings,
    db: ExchangeDB,
    pool: WorkerPool,
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
    attempt = Attempt(job.job_id, 1, (offer,), (job,))
    return execute_attempt(
        settings, db, pool, attempt, version, validation=validation, seed=seed, overrides=overrides, now=now
    )[0]


def execute_attempt(
    settings: Settings,
    db: ExchangeDB,
    pool: WorkerPool,
    attempt: Attempt,
    version: DatasetVersion,
    *,
    validation: Path,
    seed: int,
    overrides: dict[str, object] | None = None,
    now: dt.datetime | None = None,
) -> list[TrainingJob]:
    """Run every part of an escrowed attempt on its worker at once (data-parallel when there are
    several); complete them all, or on any failure refund them all and re-raise.

    Each worker gets its own key release, judged against its own attestation at ``now``: a worker
    whose attestation has expired gets no data keys, and the attempt fails before anything trains.
    """
    world = attempt.world_size
    try:
        shards = version_shards(settings.workspace_dir, version)
        keys = KeyService.from_settings(settings, db)
        releases = [
            keys.release(
                version.dataset,
                version.version,
                attestation_result=pool.member(offer).attestation.result_id,
                kex_envelope=pool.member(offer).kex_envelope,
                task=attempt.parts[0].task,
                now=now,
            )
            for offer in attempt.offers
        ]
        rendezvous = free_rendezvous() if world > 1 else ""
        with tempfile.TemporaryDirectory(prefix=f"{attempt.job_id}-") as out:
            specs = [
                JobSpec(
                    job_id=part.job_id,
                    period=part.period,
                    run_id=f"run-{uuid.uuid4().hex[:12]}",
                    provider_id=offer.provider_id,
                    task=part.task,
                    dataset=version.dataset,
                    dataset_version=version.version,
                    data_files=(),
                    shards=shards,
                    key_release=release.to_dict(),
                    expected_merkle_root=version.merkle_root,
                    schema=load_contract(settings.contracts_dir, version.contract_kind).schema.to_dict(),
                    validation_file=str(validation.resolve()),
                    config=dict(overrides or {}),
                    seed=seed,
                    attestation_result_id=pool.member(offer).attestation.result_id,
                    assurance=pool.member(offer).attestation.assurance,
                    output_dir=str(Path(out) / f"rank-{rank}"),
                    shard_rank=rank,
                    shard_count=world,
                    rendezvous=rendezvous,
                )
                for rank, (offer, part, release) in enumerate(
                    zip(attempt.offers, attempt.parts, releases, strict=True)
                )
            ]
            outcomes = run_parts(pool, attempt.offers, specs)
            model_digest = outcomes[0].model_digest
            model = Path(outcomes[0].model_path)
            for part, outcome in zip(attempt.parts, outcomes, strict=True):
                if outcome.model_digest != model_digest:
                    raise IntegrityError(
                        f"the workers of {attempt.job_id} ended with different models ({part.job_id}: "
                        f"{outcome.model_digest[:16]}…, rank 0: {model_digest[:16]}…); their all-reduce "
                        "diverged, so none of the parts is accepted"
                    )
                if digest_file(Path(outcome.model_path)) != outcome.model_digest:
                    raise IntegrityError(
                        f"model file of {part.job_id} does not match the digest in its receipt"
                    )
            completed = complete_jobs(
                db,
                settings.object_store(),
                [
                    Completion(part, outcome.receipt_envelope, outcome.work_units)
                    for part, outcome in zip(attempt.parts, outcomes, strict=True)
                ],
                model.read_bytes(),
                model_digest,
                validation,
            )
    except DatabrightError as exc:
        fail_attempt(db, attempt.parts, f"{type(exc).__name__}: {exc}")
        raise
    # After the try: the parts stand completed, and a failure to record them must not refund them.
    for part, spec in zip(completed, specs, strict=True):
        record_training(settings, db, part, spec)
    return completed


def free_rendezvous() -> str:
    """A tcp:// address on this host with a port that was free a moment ago, for a job's workers."""
    return f"tcp://127.0.0.1:{free_port()}"


def run_parts(pool: WorkerPool, offers: Sequence[Offer], specs: Sequence[JobSpec]) -> list[JobOutcome]:
    """Run each spec on its offer's worker, all at once, and wait for every one.

    When parts fail, the error raised is that of a worker that died if there is one (the others
    only fail because their all-reduce lost it), else the lowest rank's.
    """
    if len(specs) == 1:
        return [pool.run(offers[0], specs[0])]
    with ThreadPoolExecutor(max_workers=len(specs), thread_name_prefix="databright-part") as threads:
        futures = [threads.submit(pool.run, offer, spec) for offer, spec in zip(offers, specs, strict=True)]
        wait(futures)
    errors = [(offer, f.exception()) for offer, f in zip(offers, futures, strict=True) if f.exception()]
    if errors:
        dead = [e for offer, e in errors if not pool.alive(offer)]
        raise (dead or [e for _, e in errors])[0]  # type: ignore[misc]
    return [f.result() for f in futures]


def train_on_pool(
    settings: Settings,
    db: ExchangeDB,
    pool: WorkerPool,
    version: DatasetVersion,
    *,
    job_id: str,
    trainer_id: str,
    task: str,
    payment: int | None,
    budget: int | None,
    validation: Path,
    seed: int,
    workers: int = 1,
    max_attempts: int = 2,
    max_price: int | None = None,
    overrides: dict[str, object] | None = None,
    now: dt.datetime | None = None,
) -> list[TrainingJob]:
    """Allocate, escrow and run a job on ``workers`` of the pool's offers; return its parts.

    An attempt that fails because a worker died is refunded, the dead worker's offer withdrawn, and
    the job tried again on the remaining offers, up to ``max_attempts``; any other failure (a
    refused key release, tampered data, a task error) is not retried. When no attempt is left or
    the remaining offers cannot run it, the job fails with every attempt refunded.
    """
    if payment is None:
        if budget is None:
            raise TrainingError(
                f"job {job_id} names neither a payment nor a budget; give a budget (the most to spend) "
                "and the job is quoted, or an explicit payment"
            )
        payment = price_job(
            settings, version, pool.offers, task=task, workers=workers, budget=budget,
            max_price=max_price, overrides=overrides,
        ).payment  # fmt: skip
    quote = quote_job(settings, version, task=task, payment=payment, overrides=overrides)
    failures: list[str] = []
    for number in range(1, max_attempts + 1):
        try:
            priced = [o for o in pool.offers if max_price is None or o.price_per_unit <= max_price]
            offers = choose_offers(priced, quote, workers)
        except NoOfferFits as exc:
            if not failures:
                raise
            raise TrainingError(
                f"job {job_id} failed and its budget was refunded: {'; '.join(failures)}; it cannot be "
                f"retried because {exc}",
                job_id=job_id,
            ) from exc
        attempt = submit_attempt(
            db,
            job_id=job_id,
            number=number,
            offers=offers,
            rows=version.record_count,
            period=settings.period,
            trainer_id=trainer_id,
            dataset=version.dataset,
            dataset_version=version.version,
            task=task,
            payment=payment,
            budget=payment if budget is None else budget,
        )
        try:
            return execute_attempt(
                settings,
                db,
                pool,
                attempt,
                version,
                validation=validation,
                seed=seed,
                overrides=overrides,
                now=now,
            )
        except DatabrightError as exc:
            dead = [offer for offer in offers if not pool.alive(offer)]
            if not dead:
                raise
            for offer in dead:
                pool.retire(offer)
            failures.append(
                f"attempt {number} lost worker(s) {', '.join(o.provider_id for o in dead)} ({exc.message})"
            )
    raise TrainingError(
        f"job {job_id} failed after {max_attempts} attempt(s), each refunded: {'; '.join(failures)}",
        job_id=job_id,
    )
