"""The command line: errors are one line, ``ErrorName: message``, exit 1, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from databright.cli import app


@pytest.fixture
def runner(settings, monkeypatch) -> CliRunner:
    monkeypatch.setenv("DATABRIGHT_HOME", str(settings.home))
    monkeypatch.setenv("DATABRIGHT_PERIOD", settings.period)
    return CliRunner()


def test_unknown_dataset_is_one_line_and_exit_1(runner):
    result = runner.invoke(app, ["dataset", "show", "no-such-data"])
    assert result.exit_code == 1
    assert result.output.startswith("UnknownDataset: ")
    assert "Traceback" not in result.output


def test_statement_for_an_unsettled_period_names_the_fix(runner):
    result = runner.invoke(app, ["statement", "show", "alice"])
    assert result.exit_code == 1
    assert result.output.startswith("SettlementError: ")
    assert "settle the period first" in result.output


def test_bad_period_setting_is_a_config_error(runner, monkeypatch):
    monkeypatch.setenv("DATABRIGHT_PERIOD", "November")
    result = runner.invoke(app, ["ledger", "verify"])
    assert result.exit_code == 1
    assert result.output.startswith("ConfigError: DATABRIGHT_PERIOD='November'")


def test_ledger_verify_on_an_empty_exchange_passes(runner):
    result = runner.invoke(app, ["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert "balanced per ledger" in result.output


def test_enclave_measure_prints_the_policy_measurement(runner, settings):
    from databright.trust import AttestationPolicy

    result = runner.invoke(app, ["enclave", "measure", "tabular_logreg"])
    assert result.exit_code == 0, result.output
    policy = AttestationPolicy.load(settings.attestation_policy_path)
    assert result.output.strip() in policy.measurements["tabular_logreg"]


def test_worker_register_then_list(runner):
    result = runner.invoke(
        app, ["worker", "register", "--provider", "p1", "--price", "0.000003", "--capacity", "1000"]
    )
    assert result.exit_code == 0, result.output
    assert "0.000003 DBX per work unit" in result.output
    listed = runner.invoke(app, ["worker", "list"])
    assert "p1" in listed.output and "1,000" in listed.output


def test_worker_register_refuses_a_float_price_with_too_many_decimals(runner):
    result = runner.invoke(
        app, ["worker", "register", "--provider", "p1", "--price", "0.0000001", "--capacity", "5"]
    )
    assert result.exit_code != 0
    assert "more than 6 decimals" in result.output


def test_synthesize_writes_three_contributions_and_a_validation_file(runner, tmp_path):
    result = runner.invoke(app, ["synthesize", str(tmp_path / "inputs"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == [
        "alice.csv",
        "bob.csv",
        "carol.csv",
        "validation.csv",
    ]


def test_ledger_deposit_is_idempotent_per_reference(runner, settings):
    from databright.ledger import balance

    for _ in range(2):
        result = runner.invoke(app, ["ledger", "deposit", "acme", "25", "--reference", "wire-1"])
        assert result.exit_code == 0, result.output
        assert "trainer:acme credited 25.000000 DBX" in result.output
    assert balance(settings.exchange_db(), "trainer:acme") == 25_000_000


def test_ledger_cash_commands_move_money_through_suspense_and_payout_clearing(runner, settings):
    from databright.ledger import balance, verify_ledger

    def ok(*args: str) -> str:
        result = runner.invoke(app, ["ledger", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "suspense holds 10.000000 DBX under bank-9" in ok(
        "deposit-unmatched", "10", "--reference", "bank-9"
    )
    assert "trainer:acme credited 10.000000 DBX from suspense" in ok("match", "bank-9", "acme")
    assert "is in payout clearing" in ok("withdraw", "trainer:acme", "4", "--reference", "out-1")
    assert "4.000000 DBX sent" in ok(
        "withdrawal", "trainer:acme", "--reference", "out-1", "--outcome", "sent"
    )
    db = settings.exchange_db()
    assert balance(db, "trainer:acme") == 6_000_000
    assert verify_ledger(db).ok
    bad = runner.invoke(
        app, ["ledger", "withdrawal", "trainer:acme", "--reference", "out-1", "--outcome", "lost"]
    )
    assert bad.exit_code != 0 and "write sent or returned" in bad.output


def test_settle_status_without_settlements_says_how_to_propose(runner, settings):
    result = runner.invoke(app, ["settle", "status"])
    assert result.exit_code == 0, result.output
    assert (
        "no period has been settled yet; propose one with `databright settle --period YYYY-MM`"
        in result.output
    )


def test_ledger_reverse_and_correct_from_the_terminal(runner, settings):
    from databright.ledger import Ledger, balance, verify_ledger

    assert runner.invoke(app, ["ledger", "deposit", "acme", "5", "--reference", "wire-7"]).exit_code == 0
    [wrong] = Ledger(settings.exchange_db()).transfers()
    result = runner.invoke(
        app, ["ledger", "correct", wrong.transfer_id, "--reason", "it was 3 DBX", "--amount", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "posted external:deposits -> trainer:acme 3.000000 DBX" in result.output
    assert balance(settings.exchange_db(), "trainer:acme") == 3_000_000
    assert verify_ledger(settings.exchange_db()).ok
    again = runner.invoke(app, ["ledger", "reverse", "0" * 64, "--reason", "typo"])
    assert again.exit_code != 0 and "no transfer '000" in again.output
