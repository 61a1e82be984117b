"""``statement verify``: a holder's payout re-derived from signed receipts, and formula-safe exports."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
from settlement_testkit import PERIOD, add_job, make_receipt, make_verify, make_verify_valuation

from databright.errors import SettlementError
from databright.ledger import deposit
from databright.settlement import AllocationPolicy, settle_period
from databright.settlement.exports import csv_safe, export_period
from databright.settlement.statement_check import check_statement


@pytest.fixture
def settled(memory_db, store, settings, policy, session_key):
    deposit(memory_db, "acme", 5_000_000, reference="wire-1")
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
        make_receipt("j-2", {"bob": (5, 5, 0.25), "carol": (7, 14, 0.5)}, provider_id="p2", work_units=800),
        payment=333_333,
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


def check(db, store, settings, policy, session_key, holder):
    return check_statement(
        db,
        store,
        holder=holder,
        period=PERIOD,
        policy=policy,
        statements_dir=settings.statements_dir,
        verify=make_verify(session_key.public_key),
        verify_valuation=make_verify_valuation(session_key.public_key),
    )


@pytest.mark.parametrize(
    "holder", ["alice", "contributor:bob", "carol", "provider:p1", "provider:p2", "trainer:acme"]
)
def test_every_holder_re_derives_to_statement_and_ledger(
    settled, store, settings, policy, session_key, holder
):
    db, settlement = settled
    result = check(db, store, settings, policy, session_key, holder)
    assert result.ok, result.failures
    expected = settlement.totals.get(result.holder, 1_333_333 if holder == "trainer:acme" else None)
    assert result.derived_total == result.statement_total == result.ledger_total == expected
    assert result.jobs == 2


def test_an_edited_statement_is_caught(settled, store, settings, policy, session_key):
    db, _ = settled
    path = settings.statements_dir / PERIOD / "contributor-alice.json"
    data = json.loads(path.read_text())
    data["lines"][0]["amount"] += 1
    data["total"] += 1
    path.write_text(json.dumps(data))
    result = check(db, store, settings, policy, session_key, "alice")
    assert not result.ok
    assert any("job j-1: statement says 525001, re-derived 525000" in f for f in result.failures)
    assert any("statement total 525001 != re-derived 525000" in f for f in result.failures)


def test_a_re_signed_valuation_that_would_move_money_is_caught(settled, store, settings, policy, session_key):
    from settlement_testkit import make_valuation, sign_valuation

    db, _ = settled
    (key, digest) = db.query("SELECT receipt_key, receipt_digest FROM valuations WHERE job_id = 'j-1'")[0]
    usage = json.loads(store.get_bytes("receipts/2026-11/j-1.json"))
    receipt = make_receipt("j-1", {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)}, provider_id="p1")
    # Same session key, different values: the signature holds, but the allocation root cannot.
    forged = sign_valuation(session_key, make_valuation(receipt, usage, {"alice": 0.1, "bob": 0.3}))
    with db.transaction() as con:  # an operator with database access "re-admits" the forged valuation
        con.execute("UPDATE valuations SET receipt_digest = ? WHERE job_id = 'j-1'", [_digest(forged)])
    store.put_bytes(key, json.dumps(forged).encode())
    result = check(db, store, settings, policy, session_key, "alice")
    assert any(f.startswith("allocation root re-derived") for f in result.failures)
    assert any("ledger total 525000 != re-derived 175000" in f for f in result.failures)
    assert digest != _digest(forged)


def _digest(envelope):
    from databright.crypto import digest_json

    return digest_json(envelope)


def test_another_policy_or_an_unsettled_period_is_a_clear_error(settled, store, settings, session_key):
    db, _ = settled
    other = AllocationPolicy(
        name="other", version=2, data_share_bps=6000, compute_share_bps=3000, fee_bps=1000
    )
    with pytest.raises(SettlementError, match="settled under policy digest"):
        check(db, store, settings, other, session_key, "alice")
    with db.transaction() as con:
        con.execute("UPDATE settlements SET state = 'proposed'")
    with pytest.raises(SettlementError, match="is proposed, so there is no posted payout"):
        check(db, store, settings, other, session_key, "alice")


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("alice", "alice"),
        (-5, -5),
        (None, None),
    ],
)
def test_csv_safe_escapes_formula_text_only(cell, written):
    assert csv_safe(cell) == written


def test_formula_injection_in_names_stays_text_in_the_exports(
    memory_db, store, settings, policy, session_key, tmp_path
):
    deposit(memory_db, "acme", 1_000_000, reference="wire-1")
    add_job(
        memory_db,
        store,
        session_key,
        make_receipt("j-9", {"-evil": (1, 1, 0.5), "@sum": (1, 1, 0.5)}, dataset="=cmd|' /C calc'!A0"),
        payment=100_000,
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
    paths = export_period(memory_db, settlement, settings.statements_dir, tmp_path / "out")
    with paths["statement_lines_csv"].open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    datasets = {r["dataset"] for r in rows if r["dataset"]}
    assert datasets == {"'=cmd|' /C calc'!A0"}
    assert all(not cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values() if cell)
    table = pq.read_table(paths["statement_lines_parquet"]).to_pylist()
    assert {r["dataset"] for r in table if r["dataset"]} == {"=cmd|' /C calc'!A0"}  # Parquet keeps it typed
    paid = sum(r["amount"] for r in table if r["amount"] is not None)
    assert paid == 100_000 - settlement.totals["exchange_fee"]
