"""One trainer's job as parts: one part per worker, each a job row with its own escrow and receipt.

A job on ``W`` workers (data-parallel, ``data_parallel``) is booked as ``W`` *parts*, one per
worker: part ``k`` trains (with the others) on shard ``k`` of the version, its worker signs a usage
receipt for exactly those records, and the part is a job row of its own (``part_id``) whose payment
and budget are the job's, split in proportion to the shard's rows (``largest_remainder``, exact to
the minor unit). Settlement, valuation and statements therefore see ordinary jobs: one provider,
one receipt, one escrow each — nothing in them changes for data-parallel work.

An *attempt* is one try of the whole job on a set of offers. A part completes only when every part
of its attempt completed (the workers all-reduce every step, so a worker that dies stops the rest);
otherwise every part of the attempt is failed and its escrow refunded, so an attempt leaves either
``W`` receipts or none. A retry is a new attempt with new part ids, so a refunded part is never
completed and nothing is paid twice. A single-worker first attempt keeps the job's own id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from databright.db import ExchangeDB
from databright.errors import DatabrightError, TrainingError
from databright.market.offers import Offer
from databright.settlement.rounding import largest_remainder
from databright.training.data_parallel import shard_bounds
from databright.training.jobs import TrainingJob, fail_job, submit_job


def part_id(job_id: str, attempt: int, rank: int, world_size: int) -> str:
    """The job row id of shard ``rank`` of ``world_size`` in ``attempt`` (from 1) of ``job_id``."""
    if attempt == 1 and world_size == 1:
        return job_id
    return f"{job_id}.t{attempt}.{rank + 1}of{world_size}"


def split_amount(total: int, rows: int, world_size: int) -> list[int]:
    """``total`` minor units split over the shards in proportion to their rows, exactly."""
    weights = {}
    for rank in range(world_size):
        start, stop = shard_bounds(rows, rank, world_size)
        weights[f"{rank:06d}"] = stop - start
    return list(largest_remainder(total, weights).values())


@dataclass(frozen=True)
class Attempt:
    """One try of a job: its number, and per rank the offer and the part's job row."""

    job_id: str
    number: int
    offers: tuple[Offer, ...]
    parts: tuple[TrainingJob, ...]

    @property
    def world_size(self) -> int:
        return len(self.parts)


def submit_attempt(
    db: ExchangeDB,
    *,
    job_id: str,
    number: int,
    offers: Sequence[Offer],
    rows: int,
    period: str,
    trainer_id: str,
    dataset: str,
    dataset_version: int,
    task: str,
    payment: int,
    budget: int,
) -> Attempt:
    """Write and escrow every part of attempt ``number``; if one cannot be escrowed, refund the
    parts already escrowed and raise, so an attempt is escrowed whole or not at all."""
    world = len(offers)
    payments = split_amount(payment, rows, world)
    budgets = split_amount(budget, rows, world)
    if any(p == 0 for p in payments):
        raise TrainingError(
            f"a payment of {payment} minor units cannot pay {world} workers (a part would be paid 0); "
            "raise the payment or train on fewer workers"
        )
    parts: list[TrainingJob] = []
    try:
        for rank, offer in enumerate(offers):
            parts.append(
                submit_job(
                    db,
                    job_id=part_id(job_id, number, rank, world),
                    period=period,
                    trainer_id=trainer_id,
                    dataset=dataset,
                    dataset_version=dataset_version,
                    task=task,
                    payment=payments[rank],
                    provider_id=offer.provider_id,
                    offer_id=offer.offer_id,
                    budget=budgets[rank],
                    shard=(rank, world),
                )
            )
    except DatabrightError:
        fail_attempt(db, parts, "another part of the attempt could not be escrowed")
        raise
    return Attempt(job_id, number, tuple(offers), tuple(parts))


def fail_attempt(db: ExchangeDB, parts: Sequence[TrainingJob], error: str) -> list[TrainingJob]:
    """Fail every part still escrowed and refund it; parts already failed are left as they are."""
    return [fail_job(db, part, error) if part.status == "escrowed" else part for part in parts]
