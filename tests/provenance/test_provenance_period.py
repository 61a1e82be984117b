"""A small full period through the library — ingest, an attested worker, settle — then its audit, intact
and with one thing altered at a time (each on a private copy of the exchange's home)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, sign_envelope
from databright.datasets import Registry, register_file
from databright.datasets.synthetic import make_period
from databright.ledger import deposit
from databright.market import Provider, choose_offer, list_providers, register_provider
from databright.market.pool import LocalPool
from databright.provenance import ProvenanceLog, audit_verify, stage_public_key, transfers_digest
from databright.settlement import Settlement, settle_period
from databright.training.jobs import get_job, submit_job
from databright.training.service import execute_job, quote_job

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
        statements_dir=settings.statements_dir,
        provenance=ProvenanceLog.from_settings(settings, db),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice, bob and carol contribute (v1..v3), one job trains on v3, and the period is settled."""
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
