"""Settlement tables: one row per period (its state machine) and the allocation rows behind it.

``settlements.period`` is the primary key, so two runs that try to claim one period cannot both
create it: the second finds the first's row and follows its state. States move forward only::

    claimed -> valued -> proposed -> approved -> posted
           \\-> rejected   (a receipt failed; nothing was posted; a later run may claim again)

Allocations of a proposal may be replaced while the period is not posted (a re-run recomputes
them); once the period is posted its rows are final, like the ledger's.

Every change to a period's row and every replacement of its allocations is appended to the audit
chain (``databright.ledger.audit_log``) in the caller's transaction, so it commits with the write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from databright.errors import SettlementError
from databright.ledger.audit_log import record_allocations, record_settlement
from databright.ledger.bulk import arrow_view
from databright.settlement.allocation import Allocation

if TYPE_CHECKING:
    import duckdb

DDL = """
CREATE TABLE IF NOT EXISTS settlements (
    period          VARCHAR PRIMARY KEY,
    state           VARCHAR NOT NULL,     -- claimed | valued | proposed | approved | posted | rejected
    inputs_digest   VARCHAR,
    policy_version  INTEGER,
    policy_digest   VARCHAR,
    allocation_root VARCHAR,
    assurance       VARCHAR,              -- simulated | hardware
    approver        VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL,
    posted_at       TIMESTAMPTZ,
    reason          VARCHAR               -- why a period was rejected
);
CREATE TABLE IF NOT EXISTS allocations (
    period  VARCHAR NOT NULL,
    job_id  VARCHAR NOT NULL,
    holder  VARCHAR NOT NULL,             -- ledger account id
    role    VARCHAR NOT NULL,             -- data | compute | fee
    basis   VARCHAR NOT NULL,             -- usage_floor | value | rows_used | work_units | policy
    weight  HUGEINT NOT NULL,
    amount  HUGEINT NOT NULL CHECK (amount >= 0),
    -- basis too: under a usage floor a holder has a usage_floor and a value row per job
    PRIMARY KEY (period, job_id, role, holder, basis)
);
"""

STATES = ("claimed", "valued", "proposed", "approved", "posted")
REJECTED = "rejected"

_COLUMNS = (
    "period, state, inputs_digest, policy_version, policy_digest, allocation_root, assurance, approver, "
    "created_at, posted_at, reason"
)


@dataclass(frozen=True)
class SettlementRow:
    period: str
    state: str
    inputs_digest: str | None
    policy_version: int | None
    policy_digest: str | None
    allocation_root: str | None
    assurance: str | None
    approver: str | None
    created_at: dt.datetime
    posted_at: dt.datetime | None
    reason: str | None


def read_settlement(con: duckdb.DuckDBPyConnection, period: str) -> SettlementRow | None:
    rows = con.execute(f"SELECT {_COLUMNS} FROM settlements WHERE period = ?", [period]).fetchall()
    if not rows:
        return None
    r = rows[0]
    return SettlementRow(r[0], r[1], r[2], None if r[3] is None else int(r[3]), *r[4:])


def claim(con: duckdb.DuckDBPyConnection, period: str) -> SettlementRow:
    """Create the period's row in state ``claimed``, or return the row that already exists.

    A ``rejected`` period is claimed afresh (nothing was posted for it). Any other existing row is
    returned as it is: the caller resumes an unposted one or checks a posted one for idempotency.
    """
    now = dt.datetime.now(dt.UTC)
    con.execute(
        "INSERT INTO settlements (period, state, created_at) VALUES (?, 'claimed', ?) "
        "ON CONFLICT (period) DO NOTHING",
        [period, now],
    )
    con.execute(
        "UPDATE settlements SET state = 'claimed', reason = NULL, inputs_digest = NULL, "
        "allocation_root = NULL, approver = NULL WHERE period = ? AND state = ?",
        [period, REJECTED],
    )
    row = read_settlement(con, period)
    if row is None:  # the INSERT above cannot leave the period without a row
        raise SettlementError(f"period {period}: claiming it left no settlements row; check the database")
    record_settlement(con, period)
    return row


def advance(con: duckdb.DuckDBPyConnection, period: str, state: str, **columns: object) -> None:
    """Move an unposted period to ``state`` and set the given columns in the same statement."""
    if state not in STATES and state != REJECTED:
        raise SettlementError(f"settlement state {state!r} is unknown; states are {[*STATES, REJECTED]}")
    allowed = {
        "inputs_digest",
        "policy_version",
        "policy_digest",
        "allocation_root",
        "assurance",
        "approver",
        "posted_at",
        "reason",
    }
    bad = sorted(set(columns) - allowed)
    if bad:
        raise SettlementError(f"settlements has no columns {bad}")
    sets = ", ".join(["state = ?", *(f"{name} = ?" for name in columns)])
    changed = con.execute(
        f"UPDATE settlements SET {sets} WHERE period = ? AND state <> 'posted' RETURNING period",
        [state, *columns.values(), period],
    ).fetchall()
    if not changed:
        raise SettlementError(
            f"period {period} cannot move to {state!r}: it is posted or was never claimed; "
            "a posted period is final — correct it with reversing transfers in a later period"
        )
    record_settlement(con, period)


def replace_allocations(con: duckdb.DuckDBPyConnection, period: str, rows: Sequence[Allocation]) -> None:
    """Store the proposal's allocation rows (replacing an earlier, unposted proposal's)."""
    state = read_settlement(con, period)
    if state is None or state.state == "posted":
        raise SettlementError(
            f"period {period}: allocations are final once posted (or the period is unclaimed)"
        )
    con.execute("DELETE FROM allocations WHERE period = ?", [period])
    if rows:
        # One statement over an Arrow table, not a round trip per row (a period has one row per usage
        # row). Weights and amounts go as decimal strings cast to HUGEINT: exact, never a float.
        columns = {
            "period": ("string", [a.period for a in rows]),
            "job_id": ("string", [a.job_id for a in rows]),
            "holder": ("string", [a.holder for a in rows]),
            "role": ("string", [a.role for a in rows]),
            "basis": ("string", [a.basis for a in rows]),
            "weight": ("string", [str(a.weight) for a in rows]),
            "amount": ("string", [str(a.amount) for a in rows]),
        }
        with arrow_view(con, columns) as batch:
            con.execute(
                "INSERT INTO allocations SELECT period, job_id, holder, role, basis, "
                f"CAST(weight AS HUGEINT), CAST(amount AS HUGEINT) FROM {batch}"
            )
    record_allocations(con, period)


def read_allocations(con: duckdb.DuckDBPyConnection, period: str) -> list[Allocation]:
    rows = con.execute(
        "SELECT period, job_id, holder, role, basis, weight, amount FROM allocations WHERE period = ?",
        [period],
    ).fetchall()
    return [Allocation(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6])) for r in rows]
