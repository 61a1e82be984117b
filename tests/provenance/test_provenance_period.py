"""A small full period through the library — ingest, an attested training worker, an attested value
worker, settle — then its audit, intact and with one thing altered at a time (each on a private copy
of the exchange's home)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, sign_envelope
from databright.datasets import Registry, register_file
from databright.datasets.synthetic import make_period
from databright.errors import IntegrityError
from databright.ledger import deposit
from databright.market import Provider, choose_offer, list_providers, register_provider
from databright.market.pool import LocalPool
from databright.provenance import (
    ProvenanceLog,
    audit_verify,
    record_settlement,
    record_valuation,
    stage_public_key,
    transfers_digest,
)
from databright.settlement import Settlement, settle_period
from databright.training.jobs import get_job, submit_job
from databright.training.service import execute_job, quote_job
from databright.training.valuation_store import get_valuation
from databright.training.value_service import VALUE_TASK, value_job

pytestmark = pytest.mark.integration  # starts an attested worker process

PERIOD = "2026-11"
JOB = "job-audit"
PAYMENT = 10_000_000


def settle(settings: Settings) -> Settlement:
    db = settings.exchange_db()
    return settle_period(
        db,
        settings.object_store(),
        period=PERIOD,
        policy=settings.allocation_policy(),
        verify=settings.receipt_verifier(db),
        verify_valuation=settings.valuation_verifier(db),
        statements_dir=settings.statements_dir,
        provenance=ProvenanceLog.from_settings(settings, db),
    )


def value(settings: Settings) -> None:
    db = settings.exchange_db()
    with LocalPool(settings, db, list_providers(db), task=VALUE_TASK) as pool:
        offer = min(pool.offers, key=lambda o: (o.price_per_unit, o.provider_id))
        value_job(settings, db, pool, offer, get_job(db, JOB), verify=settings.valuation_verifier(db))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice, bob and carol contribute (v1..v3), one job trains on v3, the value task values it, and
    the period is settled."""
    root = tmp_path_factory.mktemp("provenance-period")
    settings = Settings(home=root / "home", period=PERIOD).ensure_dirs()
    db = settings.exchange_db()
    synthetic = make_period(
        root / "inputs", seed=7, clean_rows=40, noisy_rows=40, copied_rows=10, own_rows=10, validation_rows=40
    )
    for owner, path in synthetic.contributions.items():
        register_file(settings, db, dataset="demo", contract_kind="tabular-v1", owner=owner, path=path)
    register_provider(db, Provider("north", price_per_unit=3, capacity=50_000_000))
    deposit(db, "acme", PAYMENT, reference="wire-1")
    version = Registry(db).get_version("demo")
    quote = quote_job(settings, version, task="tabular_logreg", payment=PAYMENT)
    with LocalPool(settings, db, list_providers(db), task="tabular_logreg") as pool:
        offer = choose_offer(pool.offers, quote)
        job = submit_job(
            db, job_id=JOB, period=PERIOD, trainer_id="acme", dataset="demo", dataset_version=version.version,
            task="tabular_logreg", payment=PAYMENT, provider_id=offer.provider_id, offer_id=offer.offer_id,
        )  # fmt: skip
        execute_job(settings, db, pool, offer, job, version, validation=synthetic.validation, seed=11)
    value(settings)
    settle(settings)
    return settings.home


@pytest.fixture
def settings(built: Path, tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    shutil.copytree(built, home, symlinks=True)
    return Settings(home=home, period=PERIOD)


def stored(settings: Settings, stage: str) -> tuple[str, dict]:
    """The object key and the envelope of the period's one statement of ``stage``."""
    log = ProvenanceLog(settings.exchange_db(), settings.object_store())
    (row,) = log.indexed(period=PERIOD, stage=stage)
    return row.envelope_key, json.loads(settings.object_store().get_bytes(row.envelope_key))


def first_broken(settings: Settings):
    report = audit_verify(settings, PERIOD)
    assert not report.ok
    assert report.first_broken is not None
    return report.first_broken


def test_the_period_audits_clean_from_transfers_back_to_files(settings):
    report = audit_verify(settings, PERIOD)
    assert report.ok, report.summary()
    assert report.statements == {"settle": 1, "value": 1, "train": 1, "ingest": 3}
    assert set(report.checked) == {"settle", "value", "train", "ingest"}
    assert report.assurance == "simulated"
    # the walk reached the contributed files of all three versions behind the trained one
    reached = {link.artifact.split(":")[0] for link in report.links if link.stage == "ingest"}
    assert "contributed-file" in reached
    files = [
        link
        for link in report.links
        if link.artifact.startswith("contributed-file:") and link.check.startswith("=")
    ]
    assert len(files) == 3
    # the value step checked the signed valuation itself, not only the statement about it
    value_checks = {link.check for link in report.links if link.stage == "value"}
    assert {
        "stored valuation receipt re-hashed = the statement",
        "signed by the attested session",
        "values exactly the job's usage receipt",
        "values table's Merkle root = the valuation receipt's",
        "values table's per-owner sums = the valuation receipt's",
        "re-derived from the stored receipts = the settle statement",
        "= the data allocations' weights",
    } <= value_checks
    # and the value statement's inputs led on to the train statement
    assert any(
        link.check == "consumed by value, produced by train with the same digest" for link in report.links
    )


def test_statements_resting_on_simulated_attestation_say_so(settings):
    log = ProvenanceLog(settings.exchange_db(), settings.object_store())
    key = stage_public_key(settings.keys_dir)
    by_stage = {}
    for row in log.indexed(period=PERIOD):
        statement, _ = log.load(row, key)
        by_stage.setdefault(statement.stage, set()).add(statement.assurance)
    assert by_stage == {
        "settle": {"simulated"},
        "value": {"simulated"},
        "train": {"simulated"},
        "ingest": {"none"},
    }


def test_the_settle_statement_binds_the_posted_transfers_and_the_train_statement_the_receipt(settings):
    db = settings.exchange_db()
    store = settings.object_store()
    log = ProvenanceLog(db, store)
    key = stage_public_key(settings.keys_dir)
    (settle_row,) = log.indexed(period=PERIOD, stage="settle")
    statement, _ = log.load(settle_row, key)
    # independently: sha256 over the canonical list of the posted rows, read straight from the table
    rows = db.query(
        "SELECT transfer_id, debit_account, credit_account, amount, ledger, code, period, settlement_id, "
        "job_id, memo FROM transfers WHERE settlement_id = ? ORDER BY transfer_id",
        [f"settlement:{PERIOD}"],
    )
    names = ["transfer_id", "debit_account", "credit_account", "amount", "ledger", "code", "period",
             "settlement_id", "job_id", "memo"]  # fmt: skip
    listing = [dict(zip(names, (int(v) if isinstance(v, int) else v for v in r), strict=True)) for r in rows]
    expected = hashlib.sha256(canonical_json(listing)).hexdigest()
    assert statement.subject(f"transfers:{PERIOD}").digest == expected == transfers_digest(db, PERIOD)[0]
    assert statement.parameters["transfers"] == len(rows) > 0
    (train_row,) = log.indexed(period=PERIOD, stage="train")
    train, _ = log.load(train_row, key)
    job = get_job(db, JOB)
    envelope = json.loads(store.get_bytes(job.receipt_key))
    assert train.subject(f"receipt:{JOB}").digest == hashlib.sha256(canonical_json(envelope)).hexdigest()
    assert train.subject(f"model:{JOB}").digest == hashlib.sha256(store.get_bytes(job.model_key)).hexdigest()
    latest = Registry(db).get_version("demo")
    assert train.input("dataset:demo@v3/manifest.json").digest == latest.manifest_digest
    assert train.input("dataset:demo@v3#merkle-root").digest == latest.merkle_root


def test_settling_again_records_nothing_new_and_moves_no_money(settings):
    db = settings.exchange_db()
    before = (
        db.query("SELECT * FROM provenance_statements ORDER BY binding_digest"),
        db.query("SELECT * FROM transfers ORDER BY transfer_id"),
    )
    settle(settings)
    after = (
        db.query("SELECT * FROM provenance_statements ORDER BY binding_digest"),
        db.query("SELECT * FROM transfers ORDER BY transfer_id"),
    )
    assert after == before
    assert audit_verify(settings, PERIOD).ok


def test_one_altered_byte_of_a_stored_statement_names_its_stage(settings):
    key, envelope = stored(settings, "settle")
    payload = bytearray(base64.b64decode(envelope["payload"]))
    at = payload.index(b'"approver"')
    payload[at + 1] = ord("A")  # one byte of the signed statement
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    settings.object_store().put_bytes(key, json.dumps(envelope).encode())
    broken = first_broken(settings)
    assert broken.stage == "settle"
    assert "does not verify" in broken.detail


def test_a_statement_re_signed_by_another_key_names_its_stage(settings):
    key, envelope = stored(settings, "value")
    forger = SigningKey.from_seed(b"not the exchange")
    payload = base64.b64decode(envelope["payload"])
    forged = sign_envelope(forger, envelope["payloadType"], payload)
    settings.object_store().put_bytes(key, json.dumps(forged).encode())
    broken = first_broken(settings)
    assert broken.stage == "value"
    assert "no signature by key" in broken.detail


def test_one_altered_byte_of_a_dataset_file_names_ingest(settings):
    path = settings.workspace_dir / "datasets/demo/v1/records.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    broken = first_broken(settings)
    assert broken.stage == "ingest"
    assert "v1/records.parquet" in broken.detail


def test_a_deleted_train_statement_is_a_missing_link(settings):
    db = settings.exchange_db()
    key, _ = stored(settings, "train")
    with db.transaction() as con:
        (binding,) = con.execute(
            "SELECT binding_digest FROM provenance_statements WHERE envelope_key = ?", [key]
        ).fetchone()
        con.execute("DELETE FROM provenance_subjects WHERE binding_digest = ?", [binding])
        con.execute("DELETE FROM provenance_statements WHERE binding_digest = ?", [binding])
    (settings.store_dir / key).unlink()
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("train", f"receipt:{JOB}")
    assert "no train statement produces it" in broken.detail


def test_an_edited_posted_transfer_breaks_the_settle_link(settings):
    db = settings.exchange_db()
    with db.transaction() as con:
        con.execute(
            "UPDATE transfers SET memo = memo || ' (edited)' WHERE transfer_id = (SELECT min(transfer_id) "
            "FROM transfers WHERE settlement_id = ?)",
            [f"settlement:{PERIOD}"],
        )
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("settle", f"transfers:{PERIOD}")


def test_an_altered_model_breaks_the_train_link(settings):
    job = get_job(settings.exchange_db(), JOB)
    settings.object_store().put_bytes(job.model_key, b"not the trained model")
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("train", f"model:{JOB}")


# --- the value step -------------------------------------------------------------------------------


def statement_of(settings: Settings, stage: str):
    log = ProvenanceLog(settings.exchange_db(), settings.object_store())
    (row,) = log.indexed(period=PERIOD, stage=stage)
    return log.load(row, stage_public_key(settings.keys_dir))[0]


def sha256_of_json(data) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()


def test_the_value_statement_binds_the_signed_valuation_and_what_it_was_computed_from(settings):
    db, store = settings.exchange_db(), settings.object_store()
    job, row = get_job(db, JOB), get_valuation(db, JOB)
    envelope = json.loads(store.get_bytes(row.receipt_key))
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]  # read without the library
    usage = json.loads(store.get_bytes(job.receipt_key))
    v = statement_of(settings, "value")
    assert v.period == PERIOD and v.assurance == predicate["assurance"] == "simulated"
    assert {a.name: a.digest for a in v.subjects} == {
        f"valuation-receipt:{JOB}": sha256_of_json(envelope),
        f"values:{JOB}": predicate["values_root"],
        f"valuation-result:{JOB}": predicate["valuation_digest"],
    }
    result = predicate["attestation_result_id"]
    (stored_result,) = db.query("SELECT envelope FROM attestation_results WHERE result_id = ?", [result])[0]
    result_envelope = json.loads(stored_result)
    latest = Registry(db).get_version("demo")
    assert {a.name: a.digest for a in v.inputs} == {
        f"receipt:{JOB}": sha256_of_json(usage),
        f"model:{JOB}": hashlib.sha256(store.get_bytes(job.model_key)).hexdigest(),
        f"validation-file:{JOB}": predicate["validation_digest"],
        f"task:{VALUE_TASK}": predicate["measurement"],
        f"attestation-result:{result}": sha256_of_json(result_envelope),
        "dataset:demo@v3#merkle-root": latest.merkle_root,
    }
    assert predicate["usage_receipt_digest"] == sha256_of_json(usage)
    assert v.parameters["job_id"] == JOB and v.parameters["task"] == VALUE_TASK
    assert (v.parameters["receipt_key"], v.parameters["values_key"]) == (row.receipt_key, row.values_key)
    assert v.parameters["owners"] == len(predicate["owners"]) == 3


def test_the_settle_statement_consumes_both_receipts_and_binds_the_signed_owner_values(settings):
    db, store = settings.exchange_db(), settings.object_store()
    job, row = get_job(db, JOB), get_valuation(db, JOB)
    s = statement_of(settings, "settle")
    assert s.input(f"receipt:{JOB}").digest == sha256_of_json(json.loads(store.get_bytes(job.receipt_key)))
    assert s.input(f"valuation-receipt:{JOB}").digest == row.receipt_digest
    assert s.input(f"owner-values:{JOB}") is None and s.input(f"valuation:{JOB}") is None
    # the owner values it names carry the valuation receipt's values, not the usage receipt's
    envelope = json.loads(store.get_bytes(row.receipt_key))
    signed = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["owners"]
    paid = settle(settings).jobs[0]
    assert {o.owner: o.value for o in paid.owners} == {owner: part["value"] for owner, part in signed.items()}
    owners = [dataclasses.asdict(o) for o in paid.owners]
    assert s.subject(f"owner-values:{JOB}").digest == sha256_of_json({"job_id": JOB, "owners": owners})


def test_recording_the_valuation_again_signs_nothing_new(settings):
    db = settings.exchange_db()
    before = db.query("SELECT * FROM provenance_statements ORDER BY binding_digest")
    again = record_valuation(settings, db, get_job(db, JOB), get_valuation(db, JOB))
    assert not again.created and again.statement.stage == "value"
    value(settings)  # the value step run again for a job already valued
    assert db.query("SELECT * FROM provenance_statements ORDER BY binding_digest") == before


def test_a_value_statement_lost_after_storing_is_recorded_by_the_next_value_run(settings):
    db = settings.exchange_db()
    binding = statement_of(settings, "value").binding_digest
    with db.transaction() as con:
        con.execute("DELETE FROM provenance_subjects WHERE binding_digest = ?", [binding])
        con.execute("DELETE FROM provenance_statements WHERE binding_digest = ?", [binding])
    assert not audit_verify(settings, PERIOD).ok
    value(settings)
    assert statement_of(settings, "value").binding_digest == binding
    assert audit_verify(settings, PERIOD).ok


def test_record_valuation_refuses_another_jobs_valuation(settings):
    db = settings.exchange_db()
    other = dataclasses.replace(get_valuation(db, JOB), job_id="job-other")
    with pytest.raises(IntegrityError, match="handed in for job"):
        record_valuation(settings, db, get_job(db, JOB), other)


def test_record_settlement_refuses_a_valuation_receipt_that_is_not_the_settled_one(settings):
    db = settings.exchange_db()
    settlement = settle(settings)
    job = dataclasses.replace(settlement.jobs[0], valuation_receipt_digest="0" * 64)
    with pytest.raises(IntegrityError, match=r"stored valuation receipt of job .* changed"):
        record_settlement(
            ProvenanceLog.from_settings(settings, db), dataclasses.replace(settlement, jobs=(job,)), ()
        )


def test_an_edited_stored_valuation_receipt_breaks_the_value_link(settings):
    row = get_valuation(settings.exchange_db(), JOB)
    store = settings.object_store()
    envelope = json.loads(store.get_bytes(row.receipt_key))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    owner = sorted(payload["predicate"]["owners"])[0]
    payload["predicate"]["owners"][owner]["value"] += 1.0  # more money for one owner
    envelope["payload"] = base64.b64encode(canonical_json(payload)).decode()
    store.put_bytes(row.receipt_key, json.dumps(envelope).encode())
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("value", f"valuation-receipt:{JOB}")
    assert broken.check == "stored valuation receipt re-hashed = the statement"
    report = audit_verify(settings, PERIOD)
    assert any(
        link.check == "signed by the attested session" and link.stage == "value" for link in report.broken
    )


def test_a_deleted_value_statement_is_a_missing_link(settings):
    db = settings.exchange_db()
    key, _ = stored(settings, "value")
    with db.transaction() as con:
        (binding,) = con.execute(
            "SELECT binding_digest FROM provenance_statements WHERE envelope_key = ?", [key]
        ).fetchone()
        con.execute("DELETE FROM provenance_subjects WHERE binding_digest = ?", [binding])
        con.execute("DELETE FROM provenance_statements WHERE binding_digest = ?", [binding])
    (settings.store_dir / key).unlink()
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("value", f"valuation-receipt:{JOB}")
    assert "no value statement produces it" in broken.detail


def test_an_edited_values_table_breaks_the_value_link(settings):
    import pandas as pd

    row = get_valuation(settings.exchange_db(), JOB)
    store = settings.object_store()
    table = pd.read_parquet(io.BytesIO(store.get_bytes(row.values_key)))
    table.loc[0, "value"] += 0.5
    store.put_bytes(row.values_key, table.to_parquet(index=False))
    broken = first_broken(settings)
    assert (broken.stage, broken.artifact) == ("value", f"values:{JOB}")
    assert broken.check == "values table's Merkle root = the valuation receipt's"
