"""A whole period through the real flows: what each stage left behind, and the money rules."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from databright.cli import app
from databright.datasets import Registry
from databright.ledger import verify_ledger
from databright.money import parse_amount
from databright.trust import load_verifier_key, parse_receipt, verify_usage_receipt

pytestmark = pytest.mark.integration

PERIOD = "2026-11"  # the period tests/flows/conftest.py settles


def transfers_table(settings):
    return settings.exchange_db().query("SELECT * FROM transfers ORDER BY transfer_id")


def test_ingest_flow_quarantines_dedups_and_versions(demo_period, exchange_home):
    by_owner = {r.owner: r for r in demo_period.ingests}
    assert by_owner["alice"].accepted == 400 and by_owner["alice"].duplicates_refused == 0
    # bob's three planted rows: a missing label, a feature out of range, a label outside {0, 1}
    assert by_owner["bob"].quarantined_rows == 3
    assert {q.column for q in by_owner["bob"].report.quarantined} == {"label", "f2"}
    # carol's copies of alice's rows are refused; credit stays with alice
    assert by_owner["carol"].duplicates_refused == demo_period.synthetic.planted_duplicates["carol"]
    latest = Registry(exchange_home.exchange_db()).get_version("tabular-demo")
    assert latest.version == 3
    assert latest.owner_counts == {"alice": 400, "bob": 400, "carol": 60}
    # the version is in the DVC remote (the local object store)
    assert any((exchange_home.dvc_remote_dir).rglob("*")), "DVC pushed nothing to the remote"


def test_train_flow_runs_cheapest_attested_offer_and_stores_a_valid_receipt(demo_period, exchange_home):
    job = demo_period.job
    assert job.status == "completed"
    assert job.provider_id == "north-gpu"  # cheaper of the two providers, both fit the budget
    store = exchange_home.object_store()
    envelope = json.loads(store.get_bytes(job.receipt_key))
    db = exchange_home.exchange_db()
    receipt = verify_usage_receipt(db, store, load_verifier_key(exchange_home.keys_dir).public_key, envelope)
    assert receipt.assurance == "simulated"
    assert receipt.dataset_version == 3
    assert {o: u.rows_used for o, u in receipt.owners.items()} == {"alice": 400, "bob": 400, "carol": 60}
    assert receipt.work_units == job.work_units == sum(u.visits for u in receipt.owners.values()) * 9


def test_settle_flow_pays_clean_data_more_than_noisy_data(demo_period):
    settlement = demo_period.settlement
    totals = settlement.totals
    assert settlement.state == "posted"
    assert settlement.assurance == "simulated"
    assert totals["contributor:alice"] > totals["contributor:bob"] > 0
    assert sum(totals.values()) == parse_amount("10")  # every minor unit of the payment is accounted for


def test_ledger_verify_passes_after_the_period(demo_period, exchange_home):
    report = verify_ledger(exchange_home.exchange_db())
    assert report.ok, report.failures
    result = CliRunner().invoke(app, ["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert "balanced per ledger" in result.output
    assert "pools and fee 10 000 000 = revenue = payment, escrow closed" in result.output
    assert "payouts 9 000 000 + fee 1 000 000 = revenue 10 000 000" in result.output


def test_settling_the_same_period_again_changes_nothing(demo_period, exchange_home):
    from flows.settle import SettleConfig, settle_flow

    before = transfers_table(exchange_home)
    again = settle_flow(SettleConfig(period=PERIOD))
    assert transfers_table(exchange_home) == before
    assert again.allocation_root == demo_period.settlement.allocation_root
    assert again.inputs_digest == demo_period.settlement.inputs_digest


def test_settle_admits_each_receipt_through_intake_once(demo_period, exchange_home):
    from flows.settle import SettleConfig, settle_flow

    db = exchange_home.exchange_db()
    held = db.query("SELECT job_id, sequence, period FROM usage_receipts ORDER BY job_id")
    jobs = db.query("SELECT job_id FROM jobs WHERE status = 'completed' ORDER BY job_id")
    assert [(h[0], h[2]) for h in held] == [(j[0], PERIOD) for j in jobs]
    settle_flow(SettleConfig(period=PERIOD))  # the receipts come back "replayed": still held once
    assert db.query("SELECT job_id, sequence, period FROM usage_receipts ORDER BY job_id") == held
    assert db.query("SELECT count(*) FROM quarantined_sessions")[0][0] == 0


def test_statements_say_simulated_and_match_the_ledger(demo_period, exchange_home):
    result = CliRunner().invoke(app, ["statement", "show", "alice", "--period", PERIOD, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["assurance"] == "simulated"
    assert data["total"] == demo_period.settlement.totals["contributor:alice"]
    text = CliRunner().invoke(app, ["statement", "show", "contributor:alice", "--period", PERIOD]).output
    assert "simulated" in text


def test_receipt_names_every_record_the_job_read(demo_period, exchange_home):
    store = exchange_home.object_store()
    receipt = parse_receipt(json.loads(store.get_bytes(demo_period.job.receipt_key)))
    latest = Registry(exchange_home.exchange_db()).get_version("tabular-demo")
    assert receipt.dataset_merkle_root == latest.merkle_root
    assert sum(u.rows_used for u in receipt.owners.values()) == latest.record_count


def test_the_same_training_request_twice_is_refused_before_any_escrow(demo_period, exchange_home):
    from databright.errors import TrainingError
    from databright.ledger import balance
    from flows.demo import PAYMENT, TRAINER
    from flows.train import TrainConfig, train_flow

    db = exchange_home.exchange_db()
    before = balance(db, f"trainer:{TRAINER}")
    config = TrainConfig(
        dataset="tabular-demo",
        validation=str(demo_period.synthetic.validation),
        payment=PAYMENT,
        trainer=TRAINER,
    )
    with pytest.raises(TrainingError, match=f"already submitted as {demo_period.job.job_id}"):
        train_flow(config)
    assert balance(db, f"trainer:{TRAINER}") == before


def test_a_budget_no_offer_fits_fails_with_the_quote_and_escrows_nothing(demo_period, exchange_home):
    from databright.errors import NoOfferFits
    from databright.ledger import balance
    from databright.market import list_offers
    from flows.demo import TRAINER
    from flows.train import TrainConfig, train_flow

    db = exchange_home.exchange_db()
    before = balance(db, f"trainer:{TRAINER}")
    jobs_before = db.query("SELECT count(*) FROM jobs")
    config = TrainConfig(
        dataset="tabular-demo",
        validation=str(demo_period.synthetic.validation),
        payment=1_000,
        trainer=TRAINER,
    )
    with pytest.raises(NoOfferFits, match="raise the budget to at least"):
        train_flow(config)
    assert balance(db, f"trainer:{TRAINER}") == before
    assert db.query("SELECT count(*) FROM jobs") == jobs_before
    # the pool attested both providers, and withdrew their offers when it closed
    assert {o.status for o in list_offers(db)} == {"withdrawn"}
    assert {o.assurance for o in list_offers(db)} == {"simulated"}


def test_the_value_flow_signs_what_settlement_paid_on(demo_period, exchange_home):
    from databright.crypto import digest_json
    from databright.training.valuation_store import list_valuations, load_valuation_envelope
    from databright.trust import verify_signed_valuation
    from databright.trust.valuation_receipts import check_binding

    db, store = exchange_home.exchange_db(), exchange_home.object_store()
    (valuation,) = list_valuations(db, PERIOD)
    assert valuation.job_id == demo_period.job.job_id
    assert valuation.task == "knn_shapley" and valuation.method == "knn-shapley+replication-robust"
    envelope = load_valuation_envelope(store, valuation)
    key = load_verifier_key(exchange_home.keys_dir).public_key
    signed = verify_signed_valuation(db, store, key, envelope)
    usage_envelope = json.loads(store.get_bytes(demo_period.job.receipt_key))
    check_binding(signed, parse_receipt(usage_envelope), digest_json(usage_envelope))
    assert signed.assurance == "simulated"
    # Settlement's per-owner values are exactly the signed ones, and its inputs name the valuation.
    (job,) = demo_period.settlement.jobs
    assert {o.owner: o.value for o in job.owners} == {o: p.value for o, p in signed.owners.items()}
    assert job.valuation_receipt_digest == valuation.receipt_digest
    # The usage receipt's own values are the in-run contributions of the training run.
    assert parse_receipt(usage_envelope).valuation["method"] == "in-run-first-order"


def test_valuing_the_period_again_values_nothing_new(demo_period, exchange_home):
    from flows.value import ValueConfig, value_flow

    db = exchange_home.exchange_db()
    before = db.query("SELECT * FROM valuations ORDER BY job_id")
    result = CliRunner().invoke(app, ["value", "--period", PERIOD])
    assert result.exit_code == 0, result.output
    assert demo_period.job.job_id in result.output
    assert [v.job_id for v in value_flow(ValueConfig(period=PERIOD))] == [demo_period.job.job_id]
    assert db.query("SELECT * FROM valuations ORDER BY job_id") == before


def test_statement_verify_succeeds_for_every_holder_of_the_demo(demo_period, exchange_home):
    folder = exchange_home.statements_dir / PERIOD
    holders = sorted(json.loads(p.read_text())["holder"] for p in folder.glob("*.json"))
    assert len(holders) >= 5  # three contributors, the provider, the trainer
    for holder in holders:
        result = CliRunner().invoke(app, ["statement", "verify", holder, PERIOD])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"ok — {holder} {PERIOD}: re-derived")
