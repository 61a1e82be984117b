"""The dataset and contract commands, end to end on a real registry, DVC workspace and store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from databright.cli import app
from databright.datasets import register_file
from databright.datasets.synthetic import make_period


@pytest.fixture
def runner(settings, monkeypatch) -> CliRunner:
    monkeypatch.setenv("DATABRIGHT_HOME", str(settings.home))
    monkeypatch.setenv("DATABRIGHT_PERIOD", settings.period)
    return CliRunner()


@pytest.fixture
def period(tmp_path):
    return make_period(tmp_path / "inputs", seed=3, clean_rows=40, noisy_rows=40, copied_rows=10, own_rows=5)


@pytest.fixture
def registered(settings, period):
    db = settings.exchange_db()
    for owner in ("alice", "bob"):
        register_file(
            settings, db, dataset="demo", contract_kind="tabular-v1", owner=owner,
            path=period.contributions[owner],
        )  # fmt: skip
    return db


def test_show_diff_and_shares(runner, registered):
    shown = runner.invoke(app, ["dataset", "show", "demo@v2"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["version"]["owner_counts"] == {"alice": 40, "bob": 40}
    assert data["manifest"]["merkle_root"] == data["version"]["merkle_root"]

    diff = runner.invoke(app, ["dataset", "diff", "demo@1", "demo@2"])
    assert diff.exit_code == 0, diff.output
    assert "+40 −0" in diff.output

    shares = runner.invoke(app, ["dataset", "shares", "demo"])
    assert shares.exit_code == 0, shares.output
    assert "50.0000 %" in shares.output  # 40 of 80 records each, by count until valued


def test_withdraw_then_pull_verifies_every_digest(runner, registered, settings):
    withdrawn = runner.invoke(app, ["dataset", "withdraw", "demo", "--owner", "bob"])
    assert withdrawn.exit_code == 0, withdrawn.output
    assert "40 record(s) of bob withdrawn" in withdrawn.output
    shares = runner.invoke(app, ["dataset", "shares", "demo"])
    assert "bob" not in shares.output

    # lose the local data: pull restores it from the DVC remote and re-derives every id and root
    for parquet in (settings.workspace_dir / "datasets").rglob("*.parquet"):
        parquet.unlink()
    pulled = runner.invoke(app, ["dataset", "pull", "demo"])
    assert pulled.exit_code == 0, pulled.output
    assert "40 records" in pulled.output


def test_diff_refuses_two_datasets(runner, registered):
    result = runner.invoke(app, ["dataset", "diff", "demo@1", "other@2"])
    assert result.exit_code != 0
    assert "two versions of one dataset" in result.output


def test_contract_show_check_and_init(runner, period, settings, tmp_path, monkeypatch):
    shown = runner.invoke(app, ["contract", "show", "tabular-v1"])
    assert shown.exit_code == 0, shown.output
    assert "label" in shown.output

    clean = runner.invoke(app, ["contract", "check", "tabular-v1", str(period.contributions["alice"])])
    assert clean.exit_code == 0, clean.output
    assert "0 would be quarantined" in clean.output
    dirty = runner.invoke(app, ["contract", "check", "tabular-v1", str(period.contributions["bob"])])
    assert dirty.exit_code == 1
    assert "3 would be quarantined" in dirty.output

    # init writes into the settings' contracts folder: point it at a copy so the repo stays untouched
    import dataclasses

    import databright.cli as cli

    scratch = dataclasses.replace(settings, project_root=tmp_path / "project")
    (scratch.contracts_dir).mkdir(parents=True)
    monkeypatch.setattr(cli, "_settings", lambda period=None: scratch)
    made = runner.invoke(
        app, ["contract", "init", "demo-v1", str(period.contributions["alice"]), "--label", "label"]
    )
    assert made.exit_code == 0, made.output
    assert (scratch.contracts_dir / "demo-v1" / "suite.json").is_file()
    again = runner.invoke(app, ["contract", "init", "demo-v1", str(period.contributions["alice"])])
    assert again.exit_code == 1 and "demo-v1" in again.output
