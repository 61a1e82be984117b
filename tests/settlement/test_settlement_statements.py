"""Statements: per-holder JSON and text whose totals equal the ledger's balances."""

from __future__ import annotations

import json

import pytest
from settlement_testkit import PERIOD, add_job, make_receipt, make_verify, make_verify_valuation

from databright.errors import SettlementError
from databright.ledger import account_balances, deposit
from databright.settlement import (
    load_statement,
    render_statement,
    settle_period,
    statement_filename,
    write_statements,
)


@pytest.fixture
def settled(memory_db, store, settings, policy, session_key):
    deposit(memory_db, "acme", 2_000_000, reference="wire-1")
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)}, provider_id="p1"),
        payment=1_000_000,
    )
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt(
            "j-2",
            {"alice": (4, 8, 0.0), "carol": (6, 6, -1.0)},
            provider_id="p1",
            dataset="clinics",
            work_units=300,
        ),
        payment=500_001,
    )
    settlement = settle_period(
        memory_db,
        store,
        period=PERIOD,
        policy=policy,
        verify=make_verify(session_key.public_key),
        verify_valuation=make_verify_valuation(session_key.public_key),
        statements_dir=settings.statements_dir,
    )
    return memory_db, settlement


def test_statement_totals_equal_ledger_balances(settled, settings):
    db, settlement = settled
    balances = account_balances(db)
    folder = settings.statements_dir / PERIOD
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        f"{h}.{ext}"
        for h in ("contributor-alice", "contributor-bob", "contributor-carol", "provider-p1", "trainer-acme")
        for ext in ("json", "txt")
    )
    for holder in ("contributor:alice", "contributor:bob", "contributor:carol", "provider:p1"):
        statement = load_statement(settings.statements_dir, PERIOD, holder)
        assert statement.total == balances[holder] == settlement.totals[holder]
        assert sum(line["amount"] for line in statement.lines) == statement.total
    trainer = load_statement(settings.statements_dir, PERIOD, "trainer:acme")
    assert trainer.total == 1_500_001 == 2_000_000 - balances["trainer:acme"]
    for line in trainer.lines:
        assert line["data_amount"] + line["compute_amount"] + line["fee_amount"] == line["payment"]


def test_contributor_statement_lists_each_job_with_its_proofs(settled, settings):
    _, settlement = settled
    alice = load_statement(settings.statements_dir, PERIOD, "contributor:alice")
    assert [line["job_id"] for line in alice.lines] == ["j-1", "j-2"]
    j1, j2 = alice.lines
    receipt = make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)})
    assert (j1["rows_used"], j1["visits"], j1["value"], j1["weight"]) == (30, 60, 0.3, 300_000_000)
    assert (j1["amount"], j1["amount_text"], j1["basis"]) == (525_000, "0.525000 DBX", "value")
    assert j1["records_root"] == receipt.records_root
    assert j1["dataset_merkle_root"] == receipt.dataset_merkle_root
    # j-2: no positive value, so its 350 000 data share (70% of 500 001 = 350 000.7 -> 350 001) goes by
    # rows used 4:6 -> 140 000.4 and 210 000.6, carol's larger remainder takes the extra unit.
    assert (j2["basis"], j2["weight"], j2["amount"]) == ("rows_used", 4, 140_000)
    assert alice.total == 665_000
    assert alice.to_dict()["total_text"] == "0.665000 DBX"
    assert alice.assurance == "simulated"
    assert alice.inputs_digest == settlement.inputs_digest
    assert alice.allocation_root == settlement.allocation_root


def test_text_statement_shows_amounts_and_says_simulated(settled, settings):
    text = (settings.statements_dir / PERIOD / "contributor-alice.txt").read_text()
    assert "assurance: simulated" in text
    assert "no hardware protected" in text
    assert "amount 0.525000 DBX (525000 minor units)" in text
    assert "total received: 0.665000 DBX (665000 minor units) over 2 job(s)" in text
    statement = load_statement(settings.statements_dir, PERIOD, "contributor:alice")
    assert render_statement(statement) == text
    trainer_text = (settings.statements_dir / PERIOD / "trainer-acme.txt").read_text()
    assert "paid 1.000000 DBX = data 0.700000 DBX + compute 0.200000 DBX + fee 0.100000 DBX" in trainer_text


def test_json_keeps_integer_minor_units(settled, settings):
    data = json.loads((settings.statements_dir / PERIOD / "provider-p1.json").read_text())
    assert data["total"] == 200_000 + 100_000
    assert all(isinstance(line["amount"], int) for line in data["lines"])
    assert data["total_text"] == "0.300000 DBX"


def test_rewriting_statements_is_deterministic(settled, settings):
    _, settlement = settled
    folder = settings.statements_dir / PERIOD
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_statements(settlement, settings.statements_dir)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_file_names_are_safe_and_distinct(settings):
    assert statement_filename("contributor:alice") == "contributor-alice"
    odd = statement_filename("contributor:a@b")
    assert odd.startswith("contributor_a_b-") and "/" not in odd
    assert statement_filename("contributor:a@b") != statement_filename("contributor:a_b")
    with pytest.raises(SettlementError, match="no statement for 'contributor:nobody'"):
        load_statement(settings.statements_dir, PERIOD, "contributor:nobody")
    with pytest.raises(SettlementError, match="is not a month"):
        load_statement(settings.statements_dir, "../etc", "contributor:alice")


def test_find_statement_accepts_a_bare_holder_id(settled, settings):
    from databright.settlement import find_statement

    assert find_statement(settings.statements_dir, PERIOD, "alice").holder == "contributor:alice"
    assert find_statement(settings.statements_dir, PERIOD, "p1").kind == "provider"
    assert find_statement(settings.statements_dir, PERIOD, "trainer:acme").total == 1_500_001
    with pytest.raises(SettlementError, match="no statement for 'zed'"):
        find_statement(settings.statements_dir, PERIOD, "zed")
    # A name that is both a contributor and a trainer must be qualified.
    (settings.statements_dir / PERIOD / "trainer-alice.json").write_text(
        (settings.statements_dir / PERIOD / "trainer-acme.json").read_text()
    )
    with pytest.raises(SettlementError, match="contributor:alice, trainer:alice"):
        find_statement(settings.statements_dir, PERIOD, "alice")
