"""Data-parallel jobs on an attested pool of real worker processes: two workers train the model one
worker trains (to a stated tolerance), each part's receipt covers exactly its shard, a worker killed
mid-job costs the trainer nothing and is replaced, and an expired attestation gets no keys.

One exchange home and one pool of three providers serve the module; the tests run in file order
because the kill tests take workers out of the pool for good.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from databright.config import Settings
from databright.datasets import DatasetVersion, Registry, register_file
from databright.datasets.synthetic import make_period
from databright.db import ExchangeDB
from databright.errors import AttestationError, TrainingError
from databright.ledger import balance, deposit, verify_ledger
from databright.market import Provider, list_offers, list_providers, register_provider
from databright.market.pool import LocalPool
from databright.training.data_parallel import shard_bounds
from databright.training.jobs import TrainingJob, list_jobs
from databright.training.service import train_on_pool
from databright.trust import verify_receipt

pytestmark = pytest.mark.integration  # starts three attested worker processes

PERIOD = "2026-11"
TASK = "tabular_logreg"
PAYMENT = 40_000_000
TRAINER = "acme"
ACCOUNT = f"trainer:{TRAINER}"
# Two workers sum each step's gradient in another order than one worker does: the weights agree
# to rounding, which this bounds with a wide margin (observed: ~1e-15).
TOLERANCE = 1e-9


@dataclass
class Exchange:
    settings: Settings
    db: ExchangeDB
    pool: LocalPool
    version: DatasetVersion
    validation: Path

    def train(self, job_id: str, workers: int, **kwargs: object) -> list[TrainingJob]:
        return train_on_pool(
            self.settings, self.db, self.pool, self.version, job_id=job_id, trainer_id=TRAINER,
            task=TASK, payment=PAYMENT, budget=PAYMENT, validation=self.validation, seed=11,
            workers=workers, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    def parts(self, job_id: str) -> list[TrainingJob]:
        return [job for job in list_jobs(self.db) if job.job_id.startswith(job_id)]

    def receipt(self, part: TrainingJob) -> dict[str, object]:
        import json

        assert part.receipt_key is not None
        return json.loads(self.settings.object_store().get_bytes(part.receipt_key))

    def weights(self, part: TrainingJob) -> dict[str, torch.Tensor]:
        assert part.model_key is not None
        data = self.settings.object_store().get_bytes(part.model_key)
        return torch.load(io.BytesIO(data), weights_only=True)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("data-parallel")
    settings = Settings(home=root / "home", period=PERIOD).ensure_dirs()
    db = settings.exchange_db()
    synthetic = make_period(
        root / "inputs", seed=5, clean_rows=60, noisy_rows=40, copied_rows=10, own_rows=20, validation_rows=40
    )
    for owner, path in synthetic.contributions.items():
        register_file(settings, db, dataset="demo", contract_kind="tabular-v1", owner=owner, path=path)
    for name in ("east", "north", "west"):
        register_provider(db, Provider(name, price_per_unit=1, capacity=500_000_000))
    deposit(db, TRAINER, 20 * PAYMENT, reference="wire-1")
    version = Registry(db).get_version("demo")
    with LocalPool(settings, db, list_providers(db), task=TASK) as pool:
        yield Exchange(settings, db, pool, version, synthetic.validation)


def test_an_expired_attestation_gets_no_keys_and_the_job_is_refunded(exchange: Exchange) -> None:
    before = balance(exchange.db, ACCOUNT)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(AttestationError):
        exchange.train("job-expired", workers=2, now=later)
    parts = exchange.parts("job-expired")
    assert len(parts) == 2 and {p.status for p in parts} == {"failed"}
    assert not any(p.receipt_key for p in parts)
    assert balance(exchange.db, ACCOUNT) == before
    assert len(exchange.pool.offers) == 3  # a refused release is not a dead worker: nobody is retired


def test_two_workers_train_the_single_worker_model_and_each_receipt_covers_its_shard(
    exchange: Exchange,
) -> None:
    (single,) = exchange.train("job-one", workers=1)
    first, second = exchange.train("job-two", workers=2)
    assert (first.job_id, second.job_id) == ("job-two.t1.1of2", "job-two.t1.2of2")
    assert first.provider_id != second.provider_id
    assert {first.provider_id, second.provider_id} <= {"east", "north"}  # cheapest, then by id
    assert first.model_digest == second.model_digest

    one, two = exchange.weights(single), exchange.weights(first)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=TOLERANCE, atol=TOLERANCE), name

    rows = exchange.version.record_count
    members = {m.provider.provider_id: m for m in exchange.pool.members.values()}
    receipts = []
    for rank, part in enumerate((first, second)):
        receipt = verify_receipt(exchange.receipt(part), members[part.provider_id].attestation)
        start, stop = shard_bounds(rows, rank, 2)
        assert sum(o.rows_used for o in receipt.owners.values()) == stop - start
        assert receipt.job_id == part.job_id and receipt.dataset_merkle_root == exchange.version.merkle_root
        receipts.append(receipt)
    assert sum(r.work_units for r in receipts) == single.work_units
    assert first.payment + second.payment == PAYMENT == single.payment
    assert verify_ledger(exchange.db).ok


def _kill_rank_during_run(exchange: Exchange, rank: int, after_s: float) -> list[int]:
    """Make the pool kill the worker of ``rank`` ``after_s`` seconds into its first run."""
    killed: list[int] = []
    run = exchange.pool.run

    def run_and_kill(offer, spec):  # type: ignore[no-untyped-def]
        if spec.shard_rank == rank and not killed:
            pid = exchange.pool.worker(offer).pid
            assert pid is not None
            killed.append(pid)
            threading.Timer(after_s, os.kill, (pid, signal.SIGKILL)).start()
        return run(offer, spec)

    exchange.pool.run = run_and_kill  # type: ignore[method-assign]
    return killed


def test_a_worker_killed_mid_job_is_replaced_and_nothing_is_paid_twice(exchange: Exchange) -> None:
    before = balance(exchange.db, ACCOUNT)
    killed = _kill_rank_during_run(exchange, rank=1, after_s=1.0)
    try:
        parts = exchange.train("job-killed", workers=2, overrides={"epochs": 400})
    finally:
        del exchange.pool.run
    assert killed, "the worker of rank 1 was never started"
    assert [p.job_id for p in parts] == ["job-killed.t2.1of2", "job-killed.t2.2of2"]
    failed = [p for p in exchange.parts("job-killed") if ".t1." in p.job_id]
    assert len(failed) == 2 and all(p.status == "failed" and not p.receipt_key for p in failed)
    # The dead worker's offer is withdrawn and it got no part of the retry.
    dead = "north"
    assert dead not in {p.provider_id for p in parts}
    assert {o.provider_id for o in list_offers(exchange.db, status="open")} == {"east", "west"}
    # Escrow: the failed attempt refunded in full, the retry holds exactly the budget once.
    assert balance(exchange.db, ACCOUNT) == before - PAYMENT
    assert verify_ledger(exchange.db).ok


def test_a_job_that_loses_a_worker_with_no_spare_fails_cleanly_with_a_refund(exchange: Exchange) -> None:
    before = balance(exchange.db, ACCOUNT)
    _kill_rank_during_run(exchange, rank=0, after_s=1.0)
    try:
        with pytest.raises(TrainingError, match="refunded"):
            exchange.train("job-stranded", workers=2, overrides={"epochs": 400})
    finally:
        del exchange.pool.run
    parts = exchange.parts("job-stranded")
    assert len(parts) == 2 and {p.status for p in parts} == {"failed"}
    assert not any(p.receipt_key for p in parts)
    assert balance(exchange.db, ACCOUNT) == before
    assert verify_ledger(exchange.db).ok


def test_the_period_values_and_settles_every_completed_part_once(exchange: Exchange) -> None:
    from databright.settlement.period import settle_period
    from flows.value import ValueConfig, value_period

    value_period.fn(exchange.settings, ValueConfig(period=PERIOD))
    settings, db = exchange.settings, exchange.db
    settlement = settle_period(
        db, settings.object_store(), period=PERIOD, policy=settings.allocation_policy(),
        verify=settings.receipt_verifier(db), verify_valuation=settings.valuation_verifier(db),
        intake=settings.receipt_intake(db), statements_dir=settings.statements_dir,
    )  # fmt: skip
    completed = {job.job_id: job for job in list_jobs(db) if job.status == "completed"}
    assert {job.job_id for job in settlement.jobs} == set(completed)
    parts = {"job-two.t1.1of2", "job-two.t1.2of2", "job-killed.t2.1of2", "job-killed.t2.2of2"}
    assert parts <= set(completed)
    # Each part pays its own worker's provider for the work units its receipt attests.
    for job in settlement.jobs:
        assert job.provider_id == completed[job.job_id].provider_id
    assert settlement.state == "posted"
    assert verify_ledger(db).ok
