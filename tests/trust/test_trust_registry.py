"""Nonces (issued with a TTL, used once) and stored results (a tampered row is detected)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from trust_testkit import NOW, flip_payload_byte

from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import AttestationError
from databright.trust import issue_nonce, load_result, purge_nonces
from databright.trust.registry import consume_nonce, list_result_ids

TTL = 60


def consume(db: ExchangeDB, nonce: bytes, now: dt.datetime) -> None:
    with db.transaction() as con:
        consume_nonce(con, nonce, now=now)


def code_of(fn, *args) -> str:
    with pytest.raises(AttestationError) as info:
        fn(*args)
    return info.value.code


def test_nonce_is_random_stored_and_used_exactly_once(memory_db):
    a = issue_nonce(memory_db, TTL, now=NOW)
    b = issue_nonce(memory_db, TTL, now=NOW)
    assert len(a) == 32 and a != b
    ((issued, expires),) = memory_db.query(
        "SELECT issued_at, expires_at FROM nonces WHERE nonce = ?", [a.hex()]
    )
    assert expires - issued == dt.timedelta(seconds=TTL)
    consume(memory_db, a, NOW + dt.timedelta(seconds=TTL - 1))
    assert code_of(consume, memory_db, a, NOW + dt.timedelta(seconds=2)) == "NONCE_REUSED"


def test_nonce_expires_at_its_ttl(memory_db):
    nonce = issue_nonce(memory_db, TTL, now=NOW)
    assert code_of(consume, memory_db, nonce, NOW + dt.timedelta(seconds=TTL)) == "NONCE_EXPIRED"


def test_unknown_nonce(memory_db):
    assert code_of(consume, memory_db, b"\x00" * 32, NOW) == "NONCE_UNKNOWN"


def test_consumption_rolls_back_with_its_transaction(memory_db):
    nonce = issue_nonce(memory_db, TTL, now=NOW)
    with pytest.raises(RuntimeError), memory_db.transaction() as con:
        consume_nonce(con, nonce, now=NOW)
        raise RuntimeError("what the nonce admitted failed to store")
    consume(memory_db, nonce, NOW)  # still usable, once
    assert code_of(consume, memory_db, nonce, NOW) == "NONCE_REUSED"


def test_used_nonce_stays_used_across_connections_of_the_file_database(file_db, settings):
    nonce = issue_nonce(file_db, TTL, now=NOW)
    consume(file_db, nonce, NOW)
    reopened = ExchangeDB(settings.db_path)
    assert code_of(consume, reopened, nonce, NOW) == "NONCE_REUSED"


def test_purge_removes_only_dead_nonces(memory_db):
    used = issue_nonce(memory_db, TTL, now=NOW)
    consume(memory_db, used, NOW)
    issue_nonce(memory_db, TTL, now=NOW - dt.timedelta(hours=1))  # expired
    live = issue_nonce(memory_db, TTL, now=NOW)
    assert purge_nonces(memory_db, now=NOW) == 2
    assert memory_db.query("SELECT nonce FROM nonces") == [(live.hex(),)]


@pytest.mark.parametrize("ttl", [0, -5, True, 1.5])
def test_bad_ttl_is_refused(memory_db, ttl):
    assert code_of(issue_nonce, memory_db, ttl) == "NONCE_TTL_INVALID"


# --- stored results ---------------------------------------------------------------------------


@pytest.fixture
def stored(verifier, make_evidence, session_key):
    nonce = verifier.issue_nonce(now=NOW)
    result, _ = verifier.appraise(
        make_evidence(nonce),
        session_public_key=session_key.public_key,
        nonce=nonce,
        task="toy_task",
        provider_id="prov-a",
        now=NOW,
    )
    return result


def test_stored_result_loads_and_is_listed(verifier, verifier_key, stored):
    assert load_result(verifier.db, verifier_key.public_key, stored.result_id) == stored
    assert list_result_ids(verifier.db) == [stored.result_id]
    assert list_result_ids(verifier.db, provider_id="prov-b") == []


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("measurement", "cd" * 32),
        ("assurance", "hardware"),
        ("provider_id", "prov-b"),
        ("session_public_key", SigningKey.from_seed(b"host").public_key.hex),
        ("status", "revoked"),
        ("tee_type", "tdx"),
        ("evidence_key", "attestation/evidence/other.json"),
        ("expires_at", NOW + dt.timedelta(days=365)),
        ("issued_at", NOW - dt.timedelta(days=1)),
    ],
)
def test_an_edited_column_is_detected(verifier, verifier_key, stored, column, value):
    verifier.db.query(
        f"UPDATE attestation_results SET {column} = ? WHERE result_id = ?", [value, stored.result_id]
    )
    with pytest.raises(AttestationError) as info:
        load_result(verifier.db, verifier_key.public_key, stored.result_id)
    assert info.value.code == "RESULT_TAMPERED" and column in str(info.value)


def test_an_edited_envelope_is_detected(verifier, verifier_key, stored):
    (text,) = verifier.db.query("SELECT envelope FROM attestation_results")[0]
    envelope = json.loads(text)
    for index in (0, 40, 200):
        forged = flip_payload_byte(envelope, index)
        verifier.db.query("UPDATE attestation_results SET envelope = ?", [json.dumps(forged)])
        with pytest.raises(AttestationError) as info:
            load_result(verifier.db, verifier_key.public_key, stored.result_id)
        assert info.value.code == "RESULT_TAMPERED"
    verifier.db.query("UPDATE attestation_results SET envelope = ?", ["{not json"])
    with pytest.raises(AttestationError, match="RESULT_TAMPERED"):
        load_result(verifier.db, verifier_key.public_key, stored.result_id)


def test_an_envelope_moved_from_another_row_is_detected(
    verifier, verifier_key, make_evidence, session_key, stored
):
    nonce = verifier.issue_nonce(now=NOW)
    _, envelope = verifier.appraise(
        make_evidence(nonce),
        session_public_key=session_key.public_key,
        nonce=nonce,
        task="toy_task",
        provider_id="prov-b",
        now=NOW,
    )
    verifier.db.query(
        "UPDATE attestation_results SET envelope = ? WHERE result_id = ?",
        [json.dumps(envelope), stored.result_id],
    )
    with pytest.raises(AttestationError, match="RESULT_TAMPERED"):
        load_result(verifier.db, verifier_key.public_key, stored.result_id)


def test_result_under_another_verifier_key_or_unknown_id(verifier, stored):
    with pytest.raises(AttestationError, match="RESULT_TAMPERED"):
        load_result(verifier.db, SigningKey.from_seed(b"not the verifier").public_key, stored.result_id)
    with pytest.raises(AttestationError, match="RESULT_UNKNOWN"):
        load_result(verifier.db, verifier.verifier_key.public_key, "ar-nope")


@pytest.mark.parametrize("data", [{}, [], {"result_id": 1}])
def test_a_result_with_the_wrong_shape_is_refused(stored, data):
    from databright.trust import AttestationResult

    with pytest.raises(AttestationError, match="RESULT_MALFORMED"):
        AttestationResult.from_dict(data)
    bad_svn = {**stored.to_dict(), "svn": "2"}
    with pytest.raises(AttestationError, match="RESULT_MALFORMED: attestation result field svn"):
        AttestationResult.from_dict(bad_svn)
    assert AttestationResult.from_dict(stored.to_dict()) == stored
