"""Tables of the trust domain: single-use nonces and signed attestation results.

A nonce is issued with a time to live and consumed at most once, inside the same transaction that
stores the attestation result it admitted: either both happen or neither does. A result row keeps
the verifier's signed envelope next to the columns the market queries; the envelope is the truth
and ``load_result`` re-checks the columns against it, so an edited row is detected.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import TYPE_CHECKING, Any

from databright.db import ExchangeDB
from databright.errors import AttestationError
from databright.trust.evidence import utc

if TYPE_CHECKING:
    import duckdb

    from databright.trust.verifier import AttestationResult

DDL = """
CREATE TABLE IF NOT EXISTS nonces (
    nonce       VARCHAR PRIMARY KEY,          -- hex
    issued_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    consumed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS attestation_results (
    result_id          VARCHAR PRIMARY KEY,
    tee_type           VARCHAR NOT NULL,
    assurance          VARCHAR NOT NULL,      -- simulated | hardware
    measurement        VARCHAR NOT NULL,
    session_public_key VARCHAR NOT NULL,      -- hex
    provider_id        VARCHAR NOT NULL,
    status             VARCHAR NOT NULL,
    issued_at          TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL,
    evidence_key       VARCHAR NOT NULL,      -- object store key of the raw evidence
    envelope           VARCHAR NOT NULL       -- DSSE envelope signed by the verifier key (JSON)
);
"""

NONCE_BYTES = 32
_RESULT_COLUMNS = (
    "result_id",
    "tee_type",
    "assurance",
    "measurement",
    "session_public_key",
    "provider_id",
    "status",
    "issued_at",
    "expires_at",
    "evidence_key",
    "envelope",
)


# --- nonces -----------------------------------------------------------------------------------


def issue_nonce(db: ExchangeDB, ttl_seconds: int, *, now: dt.datetime | None = None) -> bytes:
    """A fresh random nonce, valid for ``ttl_seconds`` from ``now``."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise AttestationError("NONCE_TTL_INVALID", f"nonce TTL {ttl_seconds!r} must be a positive integer")
    issued = utc(now)
    nonce = secrets.token_bytes(NONCE_BYTES)
    with db.transaction() as con:
        con.execute(
            "INSERT INTO nonces VALUES (?, ?, ?, NULL)",
            [nonce.hex(), issued, issued + dt.timedelta(seconds=ttl_seconds)],
        )
    return nonce


def consume_nonce(con: duckdb.DuckDBPyConnection, nonce: bytes, *, now: dt.datetime) -> None:
    """Mark ``nonce`` used. Call inside ``db.transaction()`` together with what the nonce admits."""
    key = nonce.hex()
    row = con.execute("SELECT expires_at, consumed_at FROM nonces WHERE nonce = ?", [key]).fetchone()
    if row is None:
        raise AttestationError(
            "NONCE_UNKNOWN",
            f"nonce {key[:16]}… was never issued by this exchange; ask the verifier for a nonce first",
            nonce=key,
        )
    expires_at, consumed_at = row
    if consumed_at is not None:
        raise AttestationError(
            "NONCE_REUSED",
            f"nonce {key[:16]}… was already used at {consumed_at.isoformat()}; "
            "a nonce admits one appraisal only — request a new nonce and attest again",
            nonce=key,
        )
    if expires_at <= now:
        raise AttestationError(
            "NONCE_EXPIRED",
            f"nonce {key[:16]}… expired at {expires_at.isoformat()} (now {now.isoformat()}); "
            "request a new nonce and attest again promptly",
            nonce=key,
        )
    # The guard on consumed_at makes a concurrent second use update nothing instead of winning too.
    updated = con.execute(
        "UPDATE nonces SET consumed_at = ? WHERE nonce = ? AND consumed_at IS NULL", [now, key]
    ).fetchone()
    if not updated or updated[0] != 1:
        raise AttestationError(
            "NONCE_REUSED", f"nonce {key[:16]}… was used concurrently; request a new nonce", nonce=key
        )


def purge_nonces(db: ExchangeDB, *, now: dt.datetime | None = None) -> int:
    """Delete nonces that can no longer be used (expired or consumed); return how many went."""
    moment = utc(now)
    with db.transaction() as con:
        row = con.execute(
            "SELECT count(*) FROM nonces WHERE expires_at <= ? OR consumed_at IS NOT NULL", [moment]
        ).fetchone()
        con.execute("DELETE FROM nonces WHERE expires_at <= ? OR consumed_at IS NOT NULL", [moment])
    return int(row[0]) if row else 0


# --- attestation results ----------------------------------------------------------------------


def insert_result_row(
    con: duckdb.DuckDBPyConnection,
    *,
    result_id: str,
    tee_type: str,
    assurance: str,
    measurement: str,
    session_public_key: str,
    provider_id: str,
    status: str,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    evidence_key: str,
    envelope: dict[str, Any],
) -> None:
    """Store one result row. Call inside the transaction that consumed its nonce."""
    con.execute(
        f"INSERT INTO attestation_results ({', '.join(_RESULT_COLUMNS)}) VALUES "
        f"({', '.join('?' for _ in _RESULT_COLUMNS)})",
        [
            result_id,
            tee_type,
            assurance,
            measurement,
            session_public_key,
            provider_id,
            status,
            issued_at,
            expires_at,
            evidence_key,
            json.dumps(envelope, sort_keys=True),
        ],
    )


def admit_result(
    db: ExchangeDB,
    nonce: bytes,
    result: AttestationResult,
    *,
    provider_id: str,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    evidence_key: str,
    envelope: dict[str, Any],
) -> None:
    """Consume the nonce and store the signed result in one transaction: both happen, or neither."""
    with db.transaction() as con:
        consume_nonce(con, nonce, now=issued_at)
        insert_result_row(
            con,
            result_id=result.result_id,
            tee_type=result.tee_type,
            assurance=result.assurance,
            measurement=result.measurement,
            session_public_key=result.session_public_key,
            provider_id=provider_id,
            status=result.status,
            issued_at=issued_at,
            expires_at=expires_at,
            evidence_key=evidence_key,
            envelope=envelope,
        )


def fetch_result_row(db: ExchangeDB, result_id: str) -> dict[str, Any]:
    """The stored row of ``result_id`` as a dict (envelope parsed); unchecked — see ``load_result``."""
    rows = db.query(
        f"SELECT {', '.join(_RESULT_COLUMNS)} FROM attestation_results WHERE result_id = ?", [result_id]
    )
    if not rows:
        raise AttestationError(
            "RESULT_UNKNOWN",
            f"no attestation result {result_id!r} in the exchange database; the worker must attest first",
            result_id=result_id,
        )
    row = dict(zip(_RESULT_COLUMNS, rows[0], strict=True))
    try:
        row["envelope"] = json.loads(row["envelope"])
    except ValueError as exc:
        raise AttestationError(
            "RESULT_TAMPERED", f"attestation result {result_id!r} has an unreadable envelope ({exc})"
        ) from exc
    return row


def list_result_ids(db: ExchangeDB, *, provider_id: str | None = None) -> list[str]:
    sql = "SELECT result_id FROM attestation_results"
    params: list[Any] = []
    if provider_id is not None:
        sql += " WHERE provider_id = ?"
        params.append(provider_id)
    return [r[0] for r in db.query(sql + " ORDER BY issued_at, result_id", params)]
