"""What an audit entry says about the rows it logs, computed in bulk from the table itself.

An entry's ``body`` is recomputed from the rows when the chain is verified, so these functions are
used both when a write is logged and when it is checked; neither side walks rows as Python objects.

* ``transfers`` — one entry per ``Ledger.post`` batch. A batch's transfers share one ``created_at``
  (``Ledger.post`` makes it unique per batch), the entry's subject. Its body is the count, the total
  amount and ``rows_digest``, a SHA-256 over the batch's rows in the order they were inserted
  (``rowid``)::

      rows_digest = SHA-256(u64be(n) ‖ for each column c in TRANSFER_DIGEST_COLUMNS:
                                lp(name(c)) ‖ SHA-256(L_c) ‖ SHA-256(D_c))
      L_c = u64be(len_1) ‖ … ‖ u64be(len_n)   UTF-8 byte length of row i's text, 2^64 − 1 for NULL
      D_c = text_1 ‖ … ‖ text_n                  NULL adds no bytes

  where a row's text is the column's VARCHAR, or for ``amount``, ``ledger`` and ``code`` its decimal
  digits, and for ``created_at`` its microseconds since the epoch in decimal. The lengths make the
  byte stream of each column unambiguous, so an edited, deleted or added row changes the digest.
* ``allocations`` — count, total and ``allocation_root`` of a period's rows, each row's canonical JSON
  written out from the table's columns (``allocation.allocation_leaf``, the same bytes).
* ``settlement-state`` — the period's row, every column.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# (name, SQL text of the column): the transfers table's columns, in table order, as text.
TRANSFER_DIGEST_COLUMNS = (
    ("transfer_id", "transfer_id"),
    ("debit_account", "debit_account"),
    ("credit_account", "credit_account"),
    ("amount", "amount::VARCHAR"),
    ("ledger", "ledger::VARCHAR"),
    ("code", "code::VARCHAR"),
    ("period", "period"),
    ("settlement_id", "settlement_id"),
    ("job_id", "job_id"),
    ("memo", "memo"),
    ("created_at", "epoch_us(created_at)::VARCHAR"),
)
_SELECT_TEXT = ", ".join(f"{sql} AS {name}" for name, sql in TRANSFER_DIGEST_COLUMNS)
_NULL_LENGTH = 2**64 - 1


def value(v: Any) -> Any:
    """A column value as a body holds it: instants as UTC ISO 8601 with microseconds, whatever the
    session's time zone (one row, one body); anything else as it is."""
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return v


def batch_subject(created_at: dt.datetime) -> str:
    """The subject of a ``transfers`` entry: its batch's ``created_at``, as bodies write instants."""
    return str(value(created_at))


def _lp(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(8, "big") + data


def text_columns_digest(table: pa.Table) -> str:
    """``rows_digest`` (module docstring) of an Arrow table of string columns, in its row order."""
    import numpy as np
    import pyarrow as pa

    out = hashlib.sha256(table.num_rows.to_bytes(8, "big"))
    for name in table.column_names:
        lengths, data = hashlib.sha256(), hashlib.sha256()
        for chunk in table.column(name).chunks:
            if not len(chunk):
                continue
            if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
                chunk = chunk.cast(pa.string())
            width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
            offsets = np.frombuffer(chunk.buffers()[1], dtype=width)[
                chunk.offset : chunk.offset + len(chunk) + 1
            ]
            sizes = np.diff(offsets).astype(">u8")
            if chunk.null_count:
                sizes[~chunk.is_valid().to_numpy(zero_copy_only=False)] = _NULL_LENGTH
            lengths.update(sizes.tobytes())
            buffer = chunk.buffers()[2]
            if buffer is not None:
                data.update(memoryview(buffer)[offsets[0] : offsets[-1]])
        out.update(_lp(name) + lengths.digest() + data.digest())
    return out.hexdigest()


def _batch_body(created_at: dt.datetime, rows: int, amount: int, digest: str) -> dict[str, Any]:
    return {"created_at": value(created_at), "rows": rows, "amount": str(amount), "rows_digest": digest}


def transfer_batch_body(con: duckdb.DuckDBPyConnection, created_at: dt.datetime) -> dict[str, Any]:
    """The body of the ``transfers`` entry of the batch posted at ``created_at``, from the table."""
    table = con.sql(
        f"SELECT {_SELECT_TEXT} FROM transfers WHERE created_at = $1 ORDER BY rowid", params=[created_at]
    ).to_arrow_table()
    total = con.execute(
        "SELECT COALESCE(SUM(amount), 0::HUGEINT) FROM transfers WHERE created_at = ?", [created_at]
    ).fetchall()[0][0]
    return _batch_body(created_at, table.num_rows, int(total), text_columns_digest(table))


def transfer_batch_bodies(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[dict[str, Any], str]]:
    """Every batch in the table: its subject -> (body, its first transfer id), for verification."""
    import numpy as np

    groups = con.execute(
        "SELECT created_at, count(*), SUM(amount), min(transfer_id) FROM transfers "
        "GROUP BY created_at ORDER BY created_at"
    ).fetchall()
    table = con.sql(f"SELECT {_SELECT_TEXT} FROM transfers ORDER BY created_at, rowid").to_arrow_table()
    starts = np.cumsum([0, *(int(g[1]) for g in groups)])
    return {
        batch_subject(at): (
            _batch_body(at, int(n), int(total), text_columns_digest(table.slice(start, int(n)))),
            str(first),
        )
        for (at, n, total, first), start in zip(groups, starts, strict=False)
    }


def allocations_body(con: duckdb.DuckDBPyConnection, period: str) -> dict[str, Any]:
    """Count, total and ``allocation_root`` of the period's allocation rows as the table holds them."""
    from databright.crypto import merkle_root_hex

    # Imported here: settlement imports the ledger, which imports this module.
    from databright.settlement.allocation import leaf_json

    # Settlement order (``sort_allocations``): job, role (data, compute, fee), holder, basis; VARCHAR
    # order is code point order, as Python's. Money as decimal text: exactly its JSON form.
    table = con.sql(
        """SELECT amount::VARCHAR, basis, holder, job_id, period, role, weight::VARCHAR
           FROM allocations WHERE period = ?
           ORDER BY job_id, CASE role WHEN 'data' THEN 0 WHEN 'compute' THEN 1 WHEN 'fee' THEN 2 END,
                    holder, basis""",
        params=[period],
    ).to_arrow_table()
    total = con.execute(
        "SELECT COALESCE(SUM(amount), 0::HUGEINT) FROM allocations WHERE period = ?", [period]
    ).fetchall()[0][0]
    amount, basis, holder, job_id, periods, role, weight = (c.to_pylist() for c in table.columns)
    leaves = list(map(leaf_json, amount, basis, holder, job_id, periods, role, weight))
    return {
        "period": period,
        "rows": table.num_rows,
        "amount": str(int(total)),
        "allocation_root": merkle_root_hex(leaves),
    }


def settlement_body(con: duckdb.DuckDBPyConnection, period: str) -> dict[str, Any] | None:
    """The period's settlements row, every column by name (a column added later is logged too)."""
    rows = con.execute("SELECT * FROM settlements WHERE period = ?", [period]).fetchall()
    names = [d[0] for d in con.description or []]
    return {n: value(v) for n, v in zip(names, rows[0], strict=True)} if rows else None
