"""Ingest and withdrawal statements, and the audit of a period that only registered data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from databright.config import Settings
from databright.crypto import merkle_root_hex
from databright.datasets import Registry, load_contract, register_file, withdraw_records
from databright.db import ExchangeDB
from databright.errors import SettlementError
from databright.provenance import ProvenanceLog, audit_verify, record_version, stage_public_key

PERIOD = "2026-11"
HEADER = ",".join([*(f"f{i}" for i in range(8)), "label"])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_rows(path: Path, rng: np.random.Generator, n: int, bad_label: bool = False) -> Path:
    x = rng.normal(0.0, 2.0, size=(n, 8)).round(4)
    labels = [str(int(v)) for v in rng.integers(0, 2, size=n)]
    if bad_label:
        labels[-1] = "7"  # outside {0, 1}: quarantined by the contract
    lines = [",".join([*(f"{v:.4f}" for v in row), y]) for row, y in zip(x, labels, strict=True)]
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """``credit`` v1: 8 rows of alice; v2: 5 of bob's 6 (one quarantined); v3: bob withdraws two."""
    root = tmp_path_factory.mktemp("provenance-versions")
    settings = Settings(home=root / "home", period=PERIOD).ensure_dirs()
    db = ExchangeDB(settings.db_path)
    rng = np.random.default_rng(5)
    files = {
        "alice": write_rows(root / "alice.csv", rng, 8),
        "bob": write_rows(root / "bob.csv", rng, 6, True),
    }
    for owner, path in files.items():
        register_file(settings, db, dataset="credit", contract_kind="tabular-v1", owner=owner, path=path)
    bob = [r for r, o in Registry(db).record_owners("credit", 2).items() if o == "bob"]
    withdraw_records(settings, db, dataset="credit", owner="bob", record_ids=bob[:2])
    return settings.home, files


@pytest.fixture
def settings(built: tuple[Path, dict[str, Path]], tmp_path: Path) -> Settings:
    """A private copy of the built home, free to be tampered with."""
    home = tmp_path / "home"
    shutil.copytree(built[0], home, symlinks=True)
    return Settings(home=home, period=PERIOD)


def statements(settings: Settings) -> dict[tuple[str, int], object]:
    log = ProvenanceLog(settings.exchange_db(), settings.object_store())
    out = {}
    for row in log.indexed(period=PERIOD):
        statement, _ = log.load(row, stage_public_key(settings.keys_dir))
        out[(statement.stage, statement.parameters["version"])] = statement
    return out


def test_each_version_has_a_statement_binding_its_inputs_to_its_outputs(settings, built):
    db = settings.exchange_db()
    registry = Registry(db)
    found = statements(settings)
    assert sorted(found) == [("ingest", 1), ("ingest", 2), ("withdraw", 3)]
    contract = load_contract(settings.contracts_dir, "tabular-v1")
    for number, owner in ((1, "alice"), (2, "bob")):
        s = found[("ingest", number)]
        folder = settings.workspace_dir / f"datasets/credit/v{number}"
        version = registry.get_version("credit", number)
        assert s.assurance == "none"  # ingest rests on no attestation
        assert s.input(f"contributed-file:{s.parameters['submission_id']}").digest == sha256_file(
            built[1][owner]
        )
        assert s.input("contract:tabular-v1").digest == contract.digest
        assert s.subject(f"dataset:credit@v{number}/manifest.json").digest == sha256_file(
            folder / "manifest.json"
        )
        for file in ("records.parquet", "quarantine.parquet", "contract_report.json"):
            assert s.subject(f"dataset:credit@v{number}/{file}").digest == sha256_file(folder / file)
        ids = registry.version_record_ids("credit", number)
        assert s.subject(f"dataset:credit@v{number}#merkle-root").digest == merkle_root_hex(
            [bytes.fromhex(i) for i in ids]
        )
        assert s.subject(f"dataset:credit@v{number}#merkle-root").digest == version.merkle_root
    assert found[("ingest", 2)].parameters["quarantined_rows"] == 1
    assert found[("ingest", 2)].input("dataset:credit@v1/manifest.json").digest == sha256_file(
        settings.workspace_dir / "datasets/credit/v1/manifest.json"
    )
    withdrawal = found[("withdraw", 3)]
    v3 = settings.workspace_dir / "datasets/credit/v3"
    assert withdrawal.input("withdrawn-ids:credit@v3").digest == sha256_file(v3 / "withdrawn.parquet")
    assert withdrawal.input("dataset:credit@v2/manifest.json") is not None
    assert withdrawal.parameters["withdrawn"] == 2


def test_recording_a_version_again_signs_nothing_new(settings):
    db = settings.exchange_db()
    before = db.query("SELECT count(*) FROM provenance_statements")
    again = record_version(settings, db, "credit", 1)
    assert not again.created
    assert db.query("SELECT count(*) FROM provenance_statements") == before == [(3,)]


def test_the_audit_of_a_registration_period_walks_every_version(settings):
    report = audit_verify(settings, PERIOD)
    assert report.ok, report.summary()
    assert report.first_broken is None
    assert report.statements == {"withdraw": 1, "ingest": 2}
    assert report.assurance is None  # nothing was settled
    assert set(report.checked) == {"withdraw", "ingest"}
    every_file = {
        f"dataset:credit@v{n}/{f}"
        for n in (1, 2)
        for f in ("records.parquet", "quarantine.parquet", "contract_report.json")
    }
    rehashed = {link.artifact for link in report.links if link.check == "re-hashed = the manifest"}
    assert every_file <= rehashed
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_one_altered_byte_of_a_version_file_breaks_the_ingest_link(settings):
    path = settings.workspace_dir / "datasets/credit/v1/records.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = audit_verify(settings, PERIOD)
    assert not report.ok
    broken = report.first_broken
    assert broken is not None
    assert (broken.stage, broken.artifact) == ("ingest", "dataset:credit@v1/records.parquet")
    assert "pull the version again" in broken.detail


def test_a_deleted_statement_is_a_missing_link(settings):
    db = settings.exchange_db()
    v1 = statements(settings)[("ingest", 1)].binding_digest
    with db.transaction() as con:
        con.execute("DELETE FROM provenance_subjects WHERE binding_digest = ?", [v1])
        con.execute("DELETE FROM provenance_statements WHERE binding_digest = ?", [v1])
    report = audit_verify(settings, PERIOD)
    broken = report.first_broken
    assert broken is not None
    assert (broken.stage, broken.artifact) == ("ingest", "dataset:credit@v1/manifest.json")
    assert "no ingest/withdraw statement produces it" in broken.detail


def test_an_edited_index_row_no_longer_matches_its_signed_statement(settings):
    db = settings.exchange_db()
    with db.transaction() as con:
        con.execute(
            "UPDATE provenance_subjects SET digest = ? WHERE name = 'dataset:credit@v3#merkle-root'",
            ["0" * 64],
        )
    broken = audit_verify(settings, PERIOD).first_broken
    assert broken is not None
    assert broken.stage == "withdraw"
    assert broken.check == "signed by the stage key, content = its index row"


def test_a_registry_that_disagrees_with_the_contributed_file_breaks_the_ingest_link(settings):
    db = settings.exchange_db()
    with db.transaction() as con:
        con.execute("UPDATE submissions SET file_digest = ? WHERE owner = 'alice'", ["1" * 64])
    broken = audit_verify(settings, PERIOD).first_broken
    assert broken is not None
    assert broken.stage == "ingest"
    assert broken.artifact.startswith("contributed-file:")
    assert "1" * 64 in broken.detail


def test_a_period_with_nothing_in_it_is_refused(settings):
    with pytest.raises(SettlementError, match="nothing to audit"):
        audit_verify(settings, "2026-10")
    with pytest.raises(SettlementError, match="is not a month"):
        audit_verify(settings, "2026-1")
