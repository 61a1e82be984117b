"""The audit chain: every ledger and settlement write is logged in its transaction, checkpoints are
signed and exported, and every kind of tampering is caught with a message that names the row."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from audit_reference import batch_of, reference_entry_hash, reference_rows_digest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from databright.config import Settings
from databright.crypto import SigningKey, canonical_json, open_envelope
from databright.db import ExchangeDB
from databright.errors import ConfigError, IntegrityError, LedgerError, SettlementError
from databright.ledger import (
    COMPUTE_POOL,
    DATA_POOL,
    ESCROW,
    EXCHANGE_FEE,
    REVENUE,
    Ledger,
    Transfer,
    TransferCode,
    audit_public_key,
    checkpoint,
    deposit,
    escrow_job_payment,
    load_audit_key,
    verify_audit_chain,
    verify_ledger,
)
from databright.ledger.audit_log import CHECKPOINT_PAYLOAD_TYPE, GENESIS
from databright.settlement.allocation import Allocation
from databright.settlement.store import advance, claim, replace_allocations
from databright.storage.objectstore import LocalObjectStore

PERIOD = "2026-11"
KEY = SigningKey.from_seed(b"audit-chain-test")


# --- independent references: the entry hash (audit_reference) and RFC 6962 root from its definition --


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, recursively: split at the largest power of two smaller than n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def log_rows(db: ExchangeDB) -> list[tuple]:
    return db.query("SELECT seq, kind, subject, body, prev_hash, entry_hash FROM audit_log ORDER BY seq")


# --- a posted period, written through the real stores ---------------------------------------------


def leg(n: int, debit: str, credit: str, amount: int, code: TransferCode) -> Transfer:
    return Transfer.create(
        {"test": "audit", "leg": n},
        debit_account=debit,
        credit_account=credit,
        amount=amount,
        code=code,
        period=PERIOD,
        settlement_id=f"settlement:{PERIOD}",
        job_id="j-1",
    )


ALLOCATIONS = [
    Allocation(PERIOD, "j-1", "contributor:alice", "data", "value", 3, 525_000),
    Allocation(PERIOD, "j-1", "contributor:bob", "data", "value", 1, 175_000),
    Allocation(PERIOD, "j-1", "provider:p1", "compute", "work_units", 1200, 200_000),
    Allocation(PERIOD, "j-1", EXCHANGE_FEE, "fee", "policy", 1000, 100_000),
]
LEGS = [
    leg(9, ESCROW, REVENUE, 1_000_000, TransferCode.RECOGNISE),
    leg(0, REVENUE, DATA_POOL, 700_000, TransferCode.SETTLE_DATA),
    leg(1, REVENUE, COMPUTE_POOL, 200_000, TransferCode.SETTLE_COMPUTE),
    leg(2, REVENUE, EXCHANGE_FEE, 100_000, TransferCode.SETTLE_FEE),
    leg(3, DATA_POOL, "contributor:alice", 525_000, TransferCode.PAYOUT),
    leg(4, DATA_POOL, "contributor:bob", 175_000, TransferCode.PAYOUT),
    leg(5, COMPUTE_POOL, "provider:p1", 200_000, TransferCode.PAYOUT),
]


def post_period(db: ExchangeDB) -> None:
    deposit(db, "acme", 3_000_000, reference="wire-1")
    with db.transaction() as con:
        con.execute(
            "INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment, budget, "
            "status, created_at) VALUES ('j-1', ?, 'acme', 'census', 1, 'tabular_logreg', 1000000, 1000000, "
            "'completed', ?)",
            [PERIOD, dt.datetime.now(dt.UTC)],
        )
    escrow_job_payment(db, trainer_id="acme", job_id="j-1", period=PERIOD, amount=1_000_000)
    with db.transaction() as con:
        claim(con, PERIOD)
        advance(con, PERIOD, "valued", inputs_digest="a" * 64, policy_version=2, assurance="simulated")
        advance(con, PERIOD, "proposed", allocation_root="b" * 64)
        replace_allocations(con, PERIOD, ALLOCATIONS)
        advance(con, PERIOD, "approved", approver="finance@databright")
    with db.transaction() as con:
        Ledger(db).post(con, LEGS)
        advance(con, PERIOD, "posted", posted_at=dt.datetime.now(dt.UTC))


# deposit, escrow, claimed, valued, proposed, allocations, approved, the 6 legs (one batch), posted
ENTRIES = 9
LEGS_SEQ = 8
LEGS_TOTAL = sum(t.amount for t in LEGS)  # 2,900,000


@pytest.fixture
def store(settings: Settings) -> LocalObjectStore:
    return LocalObjectStore(settings.store_dir)


@pytest.fixture
def posted(memory_db: ExchangeDB, store: LocalObjectStore) -> ExchangeDB:
    post_period(memory_db)
    checkpoint(memory_db, store, KEY)
    return memory_db


def problems(db: ExchangeDB, store: LocalObjectStore) -> list[str]:
    return list(verify_audit_chain(db, store, KEY.public_key).problems)


def seq_of(db: ExchangeDB, subject: str, kind: str) -> int:
    return db.query("SELECT max(seq) FROM audit_log WHERE kind = ? AND subject = ?", [kind, subject])[0][0]


# --- the clean chain ------------------------------------------------------------------------------


def test_every_write_is_logged_and_the_chain_matches_its_definition(posted, store):
    rows = log_rows(posted)
    assert [r[0] for r in rows] == list(range(1, ENTRIES + 1))
    assert [r[1] for r in rows].count("transfers") == 3  # deposit, escrow, the legs
    states = [json.loads(r[3])["state"] for r in rows if r[1] == "settlement-state"]
    assert states == ["claimed", "valued", "proposed", "approved", "posted"]
    [alloc] = [json.loads(r[3]) for r in rows if r[1] == "allocations"]
    assert (alloc["rows"], alloc["amount"]) == (4, "1000000")
    prev = GENESIS
    for seq, kind, subject, body, prev_hash, stored in rows:
        assert prev_hash == prev
        assert stored == reference_entry_hash(seq, kind, subject, body, prev_hash)
        assert canonical_json(json.loads(body)).decode() == body
        prev = stored
    created_at, subject, seq = batch_of(posted, LEGS[4].transfer_id)
    assert seq == LEGS_SEQ and rows[seq - 1][2] == subject
    assert json.loads(rows[seq - 1][3]) == {
        "amount": str(LEGS_TOTAL),
        "created_at": subject,
        "rows": len(LEGS),
        "rows_digest": reference_rows_digest(posted, created_at),
    }
    # The batch's rows in the order posted: the digest covers exactly these.
    posted_ids = posted.query(
        "SELECT transfer_id FROM transfers WHERE created_at = ? ORDER BY rowid", [created_at]
    )
    assert [r[0] for r in posted_ids] == [t.transfer_id for t in LEGS]

    report = verify_audit_chain(posted, store, KEY.public_key)
    assert report.ok, report.problems
    assert report.entries == ENTRIES
    assert report.checkpoint is not None and report.checkpoint.tree_size == ENTRIES
    assert f"audit chain: {ENTRIES} entries hash-chained" in report.summary


def test_verify_ledger_reports_the_audit_chain_as_an_invariant(posted, store):
    report = verify_ledger(posted, store=store, audit_key=KEY.public_key)
    assert report.ok, str(report)
    [check] = report.check("audit_chain")
    assert check.detail.startswith(f"audit chain: {ENTRIES} entries")
    assert "audit_chain" not in {c.name for c in verify_ledger(posted).checks}
    with pytest.raises(LedgerError, match="store= and audit_key= together"):
        verify_ledger(posted, store=store)

    posted.query("UPDATE transfers SET memo = 'edited' WHERE transfer_id = ?", [LEGS[0].transfer_id])
    failures = verify_ledger(posted, store=store, audit_key=KEY.public_key).failures
    assert [c.name for c in failures] == ["audit_chain"]
    assert failures[0].detail.startswith(f"transfers posted at {batch_of(posted, LEGS[0].transfer_id)[1]}: ")
    assert "rows_digest" in failures[0].detail and "amount" not in failures[0].detail


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_is_signed_exported_and_idempotent(memory_db, store):
    post_period(memory_db)
    made = checkpoint(memory_db, store, KEY)
    hashes = [bytes.fromhex(r[5]) for r in log_rows(memory_db)]
    assert made.tree_size == ENTRIES
    assert made.root_hash == reference_root(hashes).hex()
    assert made.last_entry_hash == hashes[-1].hex()
    assert store.list("audit/checkpoints/") == [
        f"audit/checkpoints/{ENTRIES}.json",
        "audit/checkpoints/latest.json",
    ]
    envelope = json.loads(store.get_bytes("audit/checkpoints/latest.json"))
    assert store.get_bytes(f"audit/checkpoints/{ENTRIES}.json") == store.get_bytes(
        "audit/checkpoints/latest.json"
    )
    assert envelope["payloadType"] == CHECKPOINT_PAYLOAD_TYPE
    statement = json.loads(open_envelope(envelope, CHECKPOINT_PAYLOAD_TYPE, KEY.public_key))
    assert statement == {
        "log": "databright-audit-log",
        "tree_size": ENTRIES,
        "root_hash": made.root_hash,
        "last_entry_hash": made.last_entry_hash,
        "timestamp": made.timestamp,
    }
    with pytest.raises(IntegrityError):
        open_envelope(envelope, "application/vnd.databright.stage-provenance.v1+json", KEY.public_key)

    assert checkpoint(memory_db, store, KEY) == made  # nothing appended: the same checkpoint
    deposit(memory_db, "acme", 1, reference="wire-2")
    later = checkpoint(memory_db, store, KEY)
    assert later.tree_size == ENTRIES + 1
    assert later.root_hash == reference_root([*hashes, bytes.fromhex(log_rows(memory_db)[-1][5])]).hex()
    assert f"audit/checkpoints/{ENTRIES}.json" in store.list("audit/checkpoints/")
    assert verify_audit_chain(memory_db, store, KEY.public_key).ok


def test_audit_key_lives_in_its_own_file(settings: Settings):
    with pytest.raises(ConfigError, match="no audit checkpoint key"):
        audit_public_key(settings.keys_dir)
    key = load_audit_key(settings.keys_dir)
    assert (settings.keys_dir / "audit.pem").is_file()
    assert not (settings.keys_dir / "provenance.pem").exists()
    assert audit_public_key(settings.keys_dir) == key.public_key
    assert load_audit_key(settings.keys_dir).public_key == key.public_key


def test_a_checkpoint_by_another_key_fails(posted, store):
    other = SigningKey.from_seed(b"someone-else").public_key
    [problem] = verify_audit_chain(posted, store, other).problems
    assert "checkpoint audit/checkpoints/latest.json" in problem and "no signature by key" in problem


def test_no_checkpoint_fails_only_once_a_settlement_is_posted(memory_db, store):
    deposit(memory_db, "acme", 10, reference="wire-0")
    report = verify_audit_chain(memory_db, store, KEY.public_key)
    assert report.ok and "no checkpoint yet" in report.summary
    post_period(memory_db)
    [problem] = problems(memory_db, store)
    assert problem.startswith(f"no checkpoint yet: period {PERIOD} is posted")


# --- tampering: each kind named -------------------------------------------------------------------


def test_an_edited_transfer_is_named_by_its_batch(posted, store):
    target = LEGS[4].transfer_id
    created_at, subject, seq = batch_of(posted, target)
    posted.query("UPDATE transfers SET amount = 600000 WHERE transfer_id = ?", [target])
    [problem] = problems(posted, store)
    assert problem.startswith(f"transfers posted at {subject}: not as logged at seq {seq}: ")
    assert f"amount '{LEGS_TOTAL}' logged, '{LEGS_TOTAL + 75_000}' now" in problem
    assert f"'{reference_rows_digest(posted, created_at)}' now" in problem


def test_an_edit_that_keeps_the_total_is_caught_by_the_digest(posted, store):
    _, subject, seq = batch_of(posted, LEGS[4].transfer_id)
    # Money moved between two payouts of one batch: count and total unchanged, the rows not.
    posted.query("UPDATE transfers SET amount = amount - 1 WHERE transfer_id = ?", [LEGS[4].transfer_id])
    posted.query("UPDATE transfers SET amount = amount + 1 WHERE transfer_id = ?", [LEGS[5].transfer_id])
    [problem] = problems(posted, store)
    assert problem.startswith(f"transfers posted at {subject}: not as logged at seq {seq}: rows_digest '")


def test_a_deleted_transfer_is_named_by_its_batch(posted, store):
    _, subject, seq = batch_of(posted, LEGS[5].transfer_id)
    posted.query("DELETE FROM transfers WHERE transfer_id = ?", [LEGS[5].transfer_id])
    [problem] = problems(posted, store)
    assert problem.startswith(f"transfers posted at {subject}: not as logged at seq {seq}: ")
    assert f"rows {len(LEGS)} logged, {len(LEGS) - 1} now" in problem
    posted.query("DELETE FROM transfers WHERE job_id = 'j-1' AND code <> ?", [int(TransferCode.ESCROW)])
    assert problems(posted, store) == [
        f"transfers posted at {subject}: logged at seq {seq} but deleted from transfers"
    ]


def test_a_transfer_inserted_by_hand_is_named(posted, store):
    rogue = leg(99, DATA_POOL, "contributor:mallory", 5, TransferCode.PAYOUT)
    at = dt.datetime.now(dt.UTC)
    posted.query("INSERT INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [*rogue.row(), at])
    assert problems(posted, store) == [
        f"transfers posted at {at.isoformat(timespec='microseconds')} (1, first {rogue.transfer_id}): not in "
        "the audit log (written outside the ledger and settlement code)"
    ]


def test_a_transfer_slipped_into_a_logged_batch_is_caught(posted, store):
    created_at, subject, seq = batch_of(posted, LEGS[0].transfer_id)
    rogue = leg(99, DATA_POOL, "contributor:mallory", 5, TransferCode.PAYOUT)
    posted.query("INSERT INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [*rogue.row(), created_at])
    [problem] = problems(posted, store)
    assert problem.startswith(f"transfers posted at {subject}: not as logged at seq {seq}: ")
    assert f"rows {len(LEGS)} logged, {len(LEGS) + 1} now" in problem


def test_batches_never_share_an_instant(memory_db):
    for n in range(20):  # faster than the clock's microseconds: each batch still gets its own
        deposit(memory_db, "acme", 1 + n, reference=f"wire-{n}")
    instants = [r[0] for r in memory_db.query("SELECT created_at FROM transfers ORDER BY created_at")]
    assert len(set(instants)) == 20
    subjects = [r[0] for r in memory_db.query("SELECT subject FROM audit_log ORDER BY seq")]
    assert subjects == [t.astimezone(dt.UTC).isoformat(timespec="microseconds") for t in instants]


def test_an_edited_or_deleted_settlement_row_is_named(posted, store):
    seq = seq_of(posted, PERIOD, "settlement-state")
    posted.query("UPDATE settlements SET approver = 'mallory' WHERE period = ?", [PERIOD])
    [problem] = problems(posted, store)
    assert problem == (
        f"settlement row of period {PERIOD}: not as logged at seq {seq}: "
        "approver 'finance@databright' logged, 'mallory' now"
    )
    posted.query("DELETE FROM settlements WHERE period = ?", [PERIOD])
    assert problems(posted, store) == [
        f"settlement row of period {PERIOD}: logged at seq {seq} but deleted from settlements"
    ]


def test_edited_and_deleted_allocations_are_named(posted, store):
    seq = seq_of(posted, PERIOD, "allocations")
    posted.query("UPDATE allocations SET amount = 1 WHERE holder = 'contributor:bob'")
    [problem] = problems(posted, store)
    assert problem.startswith(f"allocation rows of period {PERIOD}: not as logged at seq {seq}: ")
    assert "allocation_root" in problem and "amount '1000000' logged, '825001' now" in problem
    posted.query("DELETE FROM allocations")
    assert problems(posted, store) == [
        f"allocation rows of period {PERIOD}: logged at seq {seq} but deleted from allocations"
    ]


def test_an_edited_log_row_is_named(posted, store):
    body = posted.query("SELECT body FROM audit_log WHERE seq = ?", [LEGS_SEQ])[0][0]
    edited = body.replace(f'"{LEGS_TOTAL}"', f'"{LEGS_TOTAL + 1}"')
    posted.query("UPDATE audit_log SET body = ? WHERE seq = ?", [edited, LEGS_SEQ])
    found = problems(posted, store)
    assert any(
        p.startswith(f"audit_log seq {LEGS_SEQ} (transfers") and "entry_hash does not recompute" in p
        for p in found
    )
    assert any(
        f"not as logged at seq {LEGS_SEQ}: amount '{LEGS_TOTAL + 1}' logged, '{LEGS_TOTAL}' now" in p
        for p in found
    )


def test_a_deleted_log_row_is_named(posted, store):
    target = posted.query("SELECT subject FROM audit_log WHERE seq = ?", [LEGS_SEQ])[0][0]
    posted.query("DELETE FROM audit_log WHERE seq = ?", [LEGS_SEQ])
    found = problems(posted, store)
    after = LEGS_SEQ + 1
    assert (
        f"audit_log seq {after}: seqs {LEGS_SEQ}..{LEGS_SEQ} are missing (a row was deleted, inserted or "
        "renumbered)" in found
    )
    assert any(p.startswith(f"audit_log seq {after}: prev_hash") for p in found)
    first = min(t.transfer_id for t in LEGS)
    assert (
        f"transfers posted at {target} ({len(LEGS)}, first {first}): not in the audit log (written outside "
        "the ledger and settlement code)" in found
    )
    assert any(p.startswith(f"checkpoint audit/checkpoints/{ENTRIES}.json") for p in found)


def test_a_truncated_log_is_caught_by_the_checkpoint(posted, store):
    posted.query("DELETE FROM audit_log WHERE seq = ?", [ENTRIES])
    found = problems(posted, store)
    assert (
        f"checkpoint audit/checkpoints/{ENTRIES}.json signs {ENTRIES} entries but the log has {ENTRIES - 1}: "
        in found[-1]
    )
    assert f"settlement row of period {PERIOD}: not as logged at seq 7: " in found[0]
    assert "state 'approved' logged, 'posted' now" in found[0]


def test_reordered_log_rows_are_named(posted, store):
    rows = {r[0]: r for r in log_rows(posted)}
    for seq, other in ((5, 6), (6, 5)):
        posted.query(
            "UPDATE audit_log SET kind = ?, subject = ?, body = ?, prev_hash = ?, entry_hash = ? "
            "WHERE seq = ?",
            [*rows[other][1:], seq],
        )
    found = problems(posted, store)
    assert any(p.startswith("audit_log seq 5:") and "prev_hash" in p for p in found)
    assert any(p.startswith("audit_log seq 5 (") and "does not recompute" in p for p in found)
    assert any(p.startswith("audit_log seq 6:") for p in found)


def rechain(db: ExchangeDB) -> None:
    """What an insider with database access does: recompute every hash so the chain is whole again."""
    prev = GENESIS
    for seq, kind, subject, body, _, _ in log_rows(db):
        new = reference_entry_hash(seq, kind, subject, body, prev)
        db.query("UPDATE audit_log SET prev_hash = ?, entry_hash = ? WHERE seq = ?", [prev, new, seq])
        prev = new


def test_a_rewritten_and_rechained_log_is_caught_by_the_checkpoint(posted, store):
    target = LEGS[4].transfer_id
    created_at, _, seq = batch_of(posted, target)
    body = json.loads(posted.query("SELECT body FROM audit_log WHERE seq = ?", [seq])[0][0])
    posted.query("UPDATE transfers SET amount = 600000 WHERE transfer_id = ?", [target])
    body["amount"] = str(LEGS_TOTAL + 75_000)
    body["rows_digest"] = reference_rows_digest(posted, created_at)  # the insider recomputes it too
    posted.query("UPDATE audit_log SET body = ? WHERE seq = ?", [canonical_json(body).decode(), seq])
    rechain(posted)
    [problem] = problems(posted, store)
    assert problem.startswith(
        f"checkpoint audit/checkpoints/{ENTRIES}.json: the Merkle root of the log's first"
    )
    assert problem.endswith(f"entries up to seq {ENTRIES} were rewritten")
    with pytest.raises(
        IntegrityError, match=rf"no longer matches checkpoint audit/checkpoints/{ENTRIES}\.json"
    ):
        checkpoint(posted, store, KEY)  # a rewrite is never laundered by a fresh signature


def test_a_rolled_back_latest_checkpoint_is_caught(posted, store):
    older = store.get_bytes("audit/checkpoints/latest.json")
    deposit(posted, "acme", 1, reference="wire-2")
    checkpoint(posted, store, KEY)
    store.put_bytes("audit/checkpoints/latest.json", older)
    assert problems(posted, store) == [
        f"audit/checkpoints/latest.json signs size {ENTRIES} but audit/checkpoints/{ENTRIES + 1}.json is "
        "newer: latest.json was rolled back"
    ]


# --- atomicity: an entry commits with its write or not at all -------------------------------------


def test_a_failed_transaction_leaves_no_log_row(file_db, store):
    deposit(file_db, "acme", 100, reference="wire-1")
    before = log_rows(file_db)
    with pytest.raises(RuntimeError, match="crash"), file_db.transaction() as con:
        Ledger(file_db).post(con, [leg(7, "trainer:acme", ESCROW, 50, TransferCode.ESCROW)])
        claim(con, PERIOD)
        assert con.execute("SELECT count(*) FROM audit_log").fetchall()[0][0] == len(before) + 2
        raise RuntimeError("crash after the writes, before COMMIT")
    assert log_rows(file_db) == before
    assert file_db.query("SELECT count(*) FROM transfers")[0][0] == 1
    with pytest.raises(LedgerError, match="Nothing was posted"), file_db.transaction() as con:
        Ledger(file_db).post(con, [leg(8, "trainer:acme", ESCROW, 101, TransferCode.ESCROW)])
    assert log_rows(file_db) == before
    assert verify_audit_chain(file_db, store, KEY.public_key).ok


def test_a_refused_state_change_logs_nothing(posted, store):
    with pytest.raises(SettlementError, match="is posted"), posted.transaction() as con:
        advance(con, PERIOD, "approved", approver="late")
    assert len(log_rows(posted)) == ENTRIES
    with posted.transaction() as con:
        claim(con, PERIOD)  # resuming a posted period changes nothing, so logs nothing
    assert len(log_rows(posted)) == ENTRIES
    assert verify_audit_chain(posted, store, KEY.public_key).ok


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(min_value=1, max_value=2**100), min_size=0, max_size=6))
def test_any_history_checkpoints_to_the_reference_root(amounts, tmp_path_factory):
    db = ExchangeDB(None)
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    for n, amount in enumerate(amounts):
        deposit(db, "acme", amount, reference=f"wire-{n}")
    made = checkpoint(db, store, KEY)
    rows = log_rows(db)
    assert [json.loads(r[3])["amount"] for r in rows] == [str(a) for a in amounts]
    assert made.tree_size == len(amounts)
    assert made.root_hash == reference_root([bytes.fromhex(r[5]) for r in rows]).hex()
    assert verify_audit_chain(db, store, KEY.public_key).ok
