"""Independent references for the audit chain, written out from the definitions in the
``audit_log`` and ``audit_rows`` docstrings, row by row, without the library's bulk code."""

from __future__ import annotations

import datetime as dt
import hashlib

from databright.db import ExchangeDB

DOMAIN = b"databright/audit-log/v2\x00"
TRANSFER_COLUMNS = (
    *("transfer_id", "debit_account", "credit_account", "amount", "ledger", "code", "period"),
    *("settlement_id", "job_id", "memo", "created_at"),
)


def reference_entry_hash(seq: int, kind: str, subject: str, body: str, prev_hash: str) -> str:
    h = hashlib.sha256(DOMAIN)
    h.update(bytes.fromhex(prev_hash))
    for part in (kind, subject, body):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    h.update(seq.to_bytes(8, "big"))
    return h.hexdigest()


def reference_rows_digest(db: ExchangeDB, created_at: dt.datetime) -> str:
    """``rows_digest`` of the batch posted at ``created_at``: each column's lengths, then its bytes."""
    rows = db.query(
        "SELECT transfer_id, debit_account, credit_account, amount, ledger, code, period, settlement_id, "
        "job_id, memo, epoch_us(created_at) FROM transfers WHERE created_at = ? ORDER BY rowid",
        [created_at],
    )
    texts = [[v if v is None or isinstance(v, str) else str(int(v)) for v in row] for row in rows]
    out = hashlib.sha256(len(rows).to_bytes(8, "big"))
    for i, name in enumerate(TRANSFER_COLUMNS):
        lengths = b"".join(
            (2**64 - 1 if row[i] is None else len(row[i].encode())).to_bytes(8, "big") for row in texts
        )
        data = b"".join(row[i].encode() for row in texts if row[i] is not None)
        out.update(len(name).to_bytes(8, "big") + name.encode())
        out.update(hashlib.sha256(lengths).digest() + hashlib.sha256(data).digest())
    return out.hexdigest()


def batch_of(db: ExchangeDB, transfer_id: str) -> tuple[dt.datetime, str, int]:
    """The batch a transfer was posted in: its ``created_at``, the entry's subject and seq."""
    [(created_at,)] = db.query("SELECT created_at FROM transfers WHERE transfer_id = ?", [transfer_id])
    subject = created_at.astimezone(dt.UTC).isoformat(timespec="microseconds")
    [(seq,)] = db.query("SELECT max(seq) FROM audit_log WHERE kind = 'transfers' AND subject = ?", [subject])
    return created_at, subject, seq
