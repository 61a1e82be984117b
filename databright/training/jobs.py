"""Training jobs: what a trainer asked for, who ran it, what it cost, where its receipt is.

A job's life: ``submitted`` (row written) → ``escrowed`` (its budget moved from the trainer to
escrow) → ``completed`` (the signed receipt and the model are in the object store) or ``failed``
(the budget refunded). Only completed jobs are settled: settlement recognises the job's ``payment``
as revenue and refunds the rest of its ``budget`` (``budget >= payment``) to the trainer.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from databright.crypto import digest_json, sha256_hex
from databright.db import ExchangeDB
from databright.errors import DatabrightError, TrainingError
from databright.storage.objectstore import ObjectStore

DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id          VARCHAR PRIMARY KEY,
    period          VARCHAR NOT NULL,
    trainer_id      VARCHAR NOT NULL,
    dataset         VARCHAR NOT NULL,
    dataset_version INTEGER NOT NULL,
    task            VARCHAR NOT NULL,
    payment         HUGEINT NOT NULL CHECK (payment > 0),   -- minor units, escrowed at submit
    provider_id     VARCHAR,
    offer_id        VARCHAR,
    status          VARCHAR NOT NULL,                       -- submitted | escrowed | completed | failed
    receipt_key     VARCHAR,
    model_key       VARCHAR,
    model_digest    VARCHAR,
    work_units      BIGINT,
    error           VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL,
    validation_key  VARCHAR,                                -- the trainer's validation file, archived
    budget          HUGEINT NOT NULL,                       -- minor units escrowed; the rest is refunded
    shard_rank      INTEGER NOT NULL DEFAULT 0,             -- this part's shard of a data-parallel job
    shard_count     INTEGER NOT NULL DEFAULT 1,             -- the job's workers (1: not data-parallel)
    CHECK (budget >= payment),
    CHECK (shard_count >= 1 AND shard_rank >= 0 AND shard_rank < shard_count)
);
"""

_COLUMNS = (
    "job_id, period, trainer_id, dataset, dataset_version, task, payment, budget, provider_id, offer_id, "
    "status, receipt_key, model_key, model_digest, work_units, error, validation_key, shard_rank, shard_count"
)


@dataclass(frozen=True)
class TrainingJob:
    job_id: str
    period: str
    trainer_id: str
    dataset: str
    dataset_version: int
    task: str
    payment: int
    budget: int  # escrowed at submit; settlement charges ``payment`` and refunds the rest
    provider_id: str | None
    offer_id: str | None
    status: str
    receipt_key: str | None = None
    model_key: str | None = None
    model_digest: str | None = None
    work_units: int | None = None
    error: str | None = None
    validation_key: str | None = None
    # Part ``shard_rank`` of a job trained on ``shard_count`` workers (``training.parts``).
    shard_rank: int = 0
    shard_count: int = 1


def _row_to_job(row: tuple[object, ...]) -> TrainingJob:
    values = list(row)
    values[4] = int(values[4])  # type: ignore[call-overload]
    values[6] = int(values[6])  # type: ignore[call-overload]
    values[7] = int(values[7])  # type: ignore[call-overload]
    if values[14] is not None:
        values[14] = int(values[14])  # type: ignore[call-overload]
    return TrainingJob(*values)  # type: ignore[arg-type]


def get_job(db: ExchangeDB, job_id: str) -> TrainingJob:
    rows = db.query(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", [job_id])
    if not rows:
        raise TrainingError(f"no job {job_id!r}; `databright train` prints the ids of the jobs it runs")
    return _row_to_job(rows[0])


def list_jobs(db: ExchangeDB, *, period: str | None = None) -> list[TrainingJob]:
    sql, params = f"SELECT {_COLUMNS} FROM jobs", []
    if period:
        sql, params = sql + " WHERE period = ?", [period]
    return [_row_to_job(r) for r in db.query(sql + " ORDER BY created_at, job_id", params)]


def job_id_for(request: dict[str, object]) -> str:
    """A job's id is the digest of what was asked for: submitting the same request twice (a retry,
    a double click) names the same job, so it can never be escrowed or paid twice."""
    return f"job-{digest_json(request)[:24]}"


def refuse_resubmission(db: ExchangeDB, job_id: str) -> None:
    """Refuse a request already submitted: as the job itself or as parts of it (``parts.part_id``)."""
    rows = db.query(
        "SELECT job_id, status FROM jobs WHERE job_id = ? OR starts_with(job_id, ?) ORDER BY job_id",
        [job_id, f"{job_id}.t"],
    )
    if rows:
        states = ", ".join(f"{r[0]} {r[1]}" for r in rows[:4])
        raise TrainingError(
            f"this exact request was already submitted as {job_id} ({states}); to train again "
            "on purpose, change the seed or pass a new request id",
            job_id=job_id,
        )


def submit_job(
    db: ExchangeDB,
    *,
    job_id: str,
    period: str,
    trainer_id: str,
    dataset: str,
    dataset_version: int,
    task: str,
    payment: int,
    provider_id: str,
    offer_id: str,
    budget: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> TrainingJob:
    """Write the job (``shard``: part (rank, count) of a data-parallel job), then escrow its budget
    (``payment`` when not given); a trainer who cannot pay leaves a ``failed`` job. Settlement
    charges ``payment`` and refunds the rest of the budget."""
    refuse_resubmission(db, job_id)
    from databright.ledger import escrow_job_payment

    budget = payment if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < payment:
        raise TrainingError(
            f"job {job_id!r}: budget {budget!r} is below its payment {payment}; a budget is the most the "
            "trainer will spend, an int of minor units at least the payment (leave it out to escrow "
            "exactly the payment)",
            job_id=job_id,
        )

    job = TrainingJob(
        job_id=job_id,
        period=period,
        trainer_id=trainer_id,
        dataset=dataset,
        dataset_version=dataset_version,
        task=task,
        payment=payment,
        provider_id=provider_id,
        offer_id=offer_id,
        budget=budget,
        status="submitted",
        shard_rank=shard[0],
        shard_count=shard[1],
    )
    with db.transaction() as con:
        con.execute(
            f"INSERT INTO jobs ({_COLUMNS}, created_at) VALUES ({', '.join(['?'] * 20)})",
            [
                job.job_id,
                period,
                trainer_id,
                dataset,
                dataset_version,
                task,
                payment,
                budget,
                provider_id,
                offer_id,
                "submitted",
                None,
                None,
                None,
                None,
                None,
                None,
                shard[0],
                shard[1],
                dt.datetime.now(dt.UTC),
            ],
        )
    try:
        escrow_job_payment(db, trainer_id=trainer_id, job_id=job.job_id, period=period, amount=budget)
    except DatabrightError as exc:
        _set_status(db, job.job_id, "failed", error=str(exc))
        raise
    _set_status(db, job.job_id, "escrowed")
    return get_job(db, job.job_id)


def _set_status(db: ExchangeDB, job_id: str, status: str, *, error: str | None = None) -> None:
    with db.transaction() as con:
        con.execute("UPDATE jobs SET status = ?, error = ? WHERE job_id = ?", [status, error, job_id])


def complete_job(
    db: ExchangeDB,
    store: ObjectStore,
    job: TrainingJob,
    *,
    receipt_envelope: dict[str, object],
    model_bytes: bytes,
    model_digest: str,
    work_units: int,
    validation: Path,
) -> TrainingJob:
    """Archive the signed receipt, the model and the trainer's validation file (the value step
    values the records against it), then mark the job completed (settlement reads it)."""
    return complete_jobs(
        db, store, [Completion(job, receipt_envelope, work_units)], model_bytes, model_digest, validation
    )[0]


@dataclass(frozen=True)
class Completion:
    """One job finished by its worker: the signed receipt and the work units it attests."""

    job: TrainingJob
    receipt_envelope: dict[str, object]
    work_units: int


def complete_jobs(
    db: ExchangeDB,
    store: ObjectStore,
    completions: list[Completion],
    model_bytes: bytes,
    model_digest: str,
    validation: Path,
) -> list[TrainingJob]:
    """Complete jobs that trained one model together (the parts of a data-parallel attempt): every
    receipt, the model and the validation file are archived first, then all the jobs are marked
    completed in one transaction — all of them, or (on any failure) none."""
    data = validation.read_bytes()
    updates = []
    for done in completions:
        job = done.job
        receipt_key = f"receipts/{job.period}/{job.job_id}.dsse.json"
        model_key = f"models/{job.job_id}/{model_digest}.pt"
        validation_key = f"validation/{job.job_id}/{sha256_hex(data)}{validation.suffix.lower()}"
        store.put_bytes(model_key, model_bytes)
        store.put_bytes(validation_key, data)
        receipt = json.dumps(done.receipt_envelope, sort_keys=True, indent=2).encode("utf-8")
        store.put_bytes(receipt_key, receipt)
        updates.append([receipt_key, model_key, model_digest, done.work_units, validation_key, job.job_id])
    with db.transaction() as con:
        for update in updates:
            con.execute(
                """UPDATE jobs SET status = 'completed', receipt_key = ?, model_key = ?, model_digest = ?,
                   work_units = ?, validation_key = ? WHERE job_id = ? AND status = 'escrowed'""",
                update,
            )
    return [get_job(db, done.job.job_id) for done in completions]


def fail_job(db: ExchangeDB, job: TrainingJob, error: str) -> TrainingJob:
    """Mark a job failed and give its escrowed budget back to the trainer."""
    from databright.ledger import refund_job_payment

    if job.status == "escrowed":
        refund_job_payment(
            db, trainer_id=job.trainer_id, job_id=job.job_id, period=job.period, amount=job.budget
        )
    _set_status(db, job.job_id, "failed", error=error)
    return get_job(db, job.job_id)
