"""A job escrows its budget: refused below the payment, refunded whole when the job fails."""

from __future__ import annotations

import pytest

from databright.errors import TrainingError
from databright.ledger import balance, deposit, verify_ledger
from databright.training.jobs import fail_job, get_job, submit_job


def submit(db, **kw):
    return submit_job(
        db,
        job_id=kw.pop("job_id", "job-1"),
        period="2026-11",
        trainer_id="acme",
        dataset="census",
        dataset_version=1,
        task="tabular_logreg",
        provider_id="p1",
        offer_id="offer-p1",
        **kw,
    )


def test_the_budget_is_escrowed_and_kept_on_the_job(memory_db):
    deposit(memory_db, "acme", 2_000, reference="w")
    job = submit(memory_db, payment=1_000, budget=1_500)
    assert (job.status, job.payment, job.budget) == ("escrowed", 1_000, 1_500)
    assert get_job(memory_db, "job-1") == job
    assert balance(memory_db, "escrow") == 1_500 and balance(memory_db, "trainer:acme") == 500
    assert submit(memory_db, job_id="job-2", payment=400).budget == 400  # no budget: the payment


def test_a_budget_below_the_payment_is_refused_before_anything_is_written(memory_db):
    deposit(memory_db, "acme", 2_000, reference="w")
    with pytest.raises(TrainingError, match="budget 900 is below its payment 1000"):
        submit(memory_db, payment=1_000, budget=900)
    assert memory_db.query("SELECT count(*) FROM jobs") == [(0,)]
    assert balance(memory_db, "escrow") == 0


def test_a_failed_job_gets_its_whole_budget_back(memory_db):
    deposit(memory_db, "acme", 2_000, reference="w")
    job = submit(memory_db, payment=1_000, budget=1_500)
    failed = fail_job(memory_db, job, "worker lost")
    assert failed.status == "failed"
    assert balance(memory_db, "escrow") == 0 and balance(memory_db, "trainer:acme") == 2_000
    report = verify_ledger(memory_db)
    assert report.ok, str(report)
