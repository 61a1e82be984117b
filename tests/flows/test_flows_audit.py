"""``databright audit verify`` on the demo period: clean after the flows, and broken at the right stage
when one stored statement, one dataset byte or the stored signed valuation is altered, or the value
statement is deleted (on a copy of the home, so the shared demo period stays intact)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from databright.cli import app
from databright.config import Settings

pytestmark = pytest.mark.integration

PERIOD = "2026-11"  # the period tests/flows/conftest.py settles


def _audit(home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("DATABRIGHT_HOME", str(home))
    result = CliRunner().invoke(app, ["audit", "verify", PERIOD])
    return result.exit_code, result.output


def test_the_demo_period_audits_clean_and_says_simulated(demo_period, exchange_home, monkeypatch):
    code, output = _audit(exchange_home.home, monkeypatch)
    assert code == 0, output
    assert f"audit {PERIOD}: ok" in output and "assurance: simulated" in output
    for stage in ("ingest", "train", "value", "settle"):
        assert f"{stage} " in output


@pytest.fixture
def home_copy(demo_period, exchange_home: Settings, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(exchange_home.home, copy)
    return copy


def test_one_altered_dataset_byte_breaks_the_audit_at_ingest(home_copy, monkeypatch):
    delta = sorted((home_copy / "workspace" / "datasets").rglob("records.parquet"))[0]
    data = bytearray(delta.read_bytes())
    data[len(data) // 2] ^= 0x01
    delta.chmod(0o644)
    delta.write_bytes(bytes(data))
    code, output = _audit(home_copy, monkeypatch)
    assert code == 1
    assert "BROKEN" in output and "first broken link: [ingest]" in output


def test_one_altered_settle_statement_breaks_the_audit_at_settle(home_copy, monkeypatch):
    statements = sorted(home_copy.rglob("provenance/*/settle/*.dsse.json"))
    assert len(statements) == 1
    text = statements[0].read_text()
    statements[0].chmod(0o644)
    tampered = text.replace('"payload":"', '"payload":"A', 1)
    assert tampered != text
    statements[0].write_text(tampered)
    code, output = _audit(home_copy, monkeypatch)
    assert code == 1
    assert "first broken link: [settle]" in output


def _valuation_key(home: Path) -> str:
    from databright.training.valuation_store import list_valuations

    settings = Settings(home=home, period=PERIOD)
    valuations = list_valuations(settings.exchange_db(), PERIOD)
    assert valuations, "the demo period values its jobs before settling them"
    return valuations[0].receipt_key


def test_an_edited_stored_valuation_receipt_breaks_the_audit_at_value(home_copy, monkeypatch):
    import base64
    import json

    path = Settings(home=home_copy, period=PERIOD).store_dir / _valuation_key(home_copy)
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    owners = statement["predicate"]["owners"]
    first = sorted(owners)[0]
    owners[first]["value"] = owners[first]["value"] + 1.0  # a larger dividend for one owner
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.chmod(0o644)
    path.write_text(json.dumps(envelope))
    code, output = _audit(home_copy, monkeypatch)
    flat = " ".join(output.split())  # the console wraps long lines
    assert code == 1
    assert "first broken link: [value] valuation-receipt:" in flat
    assert "stored valuation receipt re-hashed = the statement" in flat


def test_a_deleted_value_statement_breaks_the_audit_at_value(home_copy, monkeypatch):
    settings = Settings(home=home_copy, period=PERIOD)
    db = settings.exchange_db()
    with db.transaction() as con:
        rows = con.execute(
            "SELECT binding_digest FROM provenance_statements WHERE stage = 'value' AND period = ?", [PERIOD]
        ).fetchall()
        assert rows, "the demo's value flow records one value statement per job"
        for (binding,) in rows:
            con.execute("DELETE FROM provenance_subjects WHERE binding_digest = ?", [binding])
            con.execute("DELETE FROM provenance_statements WHERE binding_digest = ?", [binding])
    code, output = _audit(home_copy, monkeypatch)
    flat = " ".join(output.split())  # the console wraps long lines
    assert code == 1
    assert "first broken link: [value] valuation-receipt:" in flat
    assert "no value statement produces it" in flat
