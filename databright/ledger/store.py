"""The double-entry ledger in the exchange database: accounts, transfers, balances.

Rows are only ever inserted — never updated or deleted — so the transfers table *is* the history;
a correction is a reversing transfer. ``Ledger.post`` runs inside the caller's transaction so a
settlement's transfers and its state change commit together, and so does the batch's one entry in
the audit chain (``audit_log``: its rows share a ``created_at`` unique to the batch). Balances are
computed in SQL as HUGEINT and come back as Python ints; money never passes through a DataFrame or a
float.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

from databright.db import ExchangeDB
from databright.errors import LedgerConflict, LedgerError
from databright.ledger.accounts import (
    Account,
    AccountKind,
    account_for,
)
from databright.ledger.audit_log import record_transfers
from databright.ledger.bulk import arrow_view
from databright.ledger.transfers import Transfer
from databright.money import format_minor

if TYPE_CHECKING:
    import duckdb

DDL = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id                     VARCHAR PRIMARY KEY,
    kind                           VARCHAR NOT NULL,
    ledger                         INTEGER NOT NULL,
    debits_must_not_exceed_credits BOOLEAN NOT NULL,
    created_at                     TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id    VARCHAR PRIMARY KEY,      -- hex sha256 of the idempotency key
    debit_account  VARCHAR NOT NULL,
    credit_account VARCHAR NOT NULL,
    amount         HUGEINT NOT NULL CHECK (amount > 0),   -- minor units
    ledger         INTEGER NOT NULL,
    code           SMALLINT NOT NULL,
    period         VARCHAR,
    settlement_id  VARCHAR,
    job_id         VARCHAR,
    memo           VARCHAR NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    CHECK (debit_account <> credit_account)
);
"""

_TRANSFER_COLUMNS = (
    "transfer_id, debit_account, credit_account, amount, ledger, code, period, settlement_id, job_id, memo"
)

# Credits minus debits of one account, summed as HUGEINT inside DuckDB.
BALANCE_SQL = """
SELECT COALESCE(SUM(CASE WHEN credit_account = $1 THEN amount ELSE -amount END), 0::HUGEINT)
FROM transfers WHERE credit_account = $1 OR debit_account = $1
"""

_ALL_BALANCES_SQL = """
WITH legs AS (
    SELECT credit_account AS account_id, amount FROM transfers
    UNION ALL
    SELECT debit_account, -amount FROM transfers
)
SELECT a.account_id, COALESCE(SUM(l.amount), 0::HUGEINT) AS balance
FROM accounts a LEFT JOIN legs l USING (account_id)
GROUP BY a.account_id ORDER BY a.account_id
"""


class Ledger:
    """Accounts and transfers over one ``ExchangeDB``."""

    def __init__(self, db: ExchangeDB) -> None:
        self.db = db

    # --- accounts ------------------------------------------------------------------------------
    def open_accounts(self, con: duckdb.DuckDBPyConnection, account_ids: Sequence[str]) -> list[Account]:
        """Create the named accounts that do not exist yet; return all of them."""
        accounts = [account_for(a) for a in dict.fromkeys(account_ids)]
        if accounts:
            # One statement for the whole batch: a settlement opens an account per holder at once.
            with arrow_view(
                con,
                {
                    "account_id": ("string", [a.account_id for a in accounts]),
                    "kind": ("string", [a.kind.value for a in accounts]),
                    "ledger": ("int32", [a.ledger for a in accounts]),
                    "flagged": ("bool", [a.debits_must_not_exceed_credits for a in accounts]),
                },
            ) as batch:
                con.execute(
                    f"INSERT INTO accounts SELECT account_id, kind, ledger, flagged, $1::TIMESTAMPTZ "
                    f"FROM {batch} ON CONFLICT (account_id) DO NOTHING",
                    [dt.datetime.now(dt.UTC)],
                )
        return accounts

    def accounts(self) -> list[Account]:
        rows = self.db.query(
            "SELECT account_id, kind, ledger, debits_must_not_exceed_credits "
            "FROM accounts ORDER BY account_id"
        )
        return [Account(r[0], AccountKind(r[1]), int(r[2]), bool(r[3])) for r in rows]

    # --- posting -------------------------------------------------------------------------------
    def post(self, con: duckdb.DuckDBPyConnection, transfers: Sequence[Transfer]) -> list[Transfer]:
        """Post transfers in order inside the caller's transaction; return the ones newly written.

        A transfer whose id is already in the ledger with identical content is skipped (a retry);
        with different content it raises ``LedgerConflict``. A transfer that would take a flagged
        account below zero raises ``LedgerError``. Every check runs before the first insert, so a
        refused batch writes nothing even if the caller swallows the error.
        """
        batch: dict[str, Transfer] = {}
        for transfer in transfers:
            if not isinstance(transfer, Transfer):
                raise LedgerError(f"Ledger.post takes Transfer objects, got {type(transfer).__name__}")
            seen = batch.get(transfer.transfer_id)
            if seen is not None and seen != transfer:
                raise LedgerConflict(
                    f"transfer {transfer.transfer_id[:12]} appears twice in one batch with different "
                    f"content ({'; '.join(seen.differences(transfer))}); give each movement its own "
                    "idempotency key",
                    transfer=transfer,
                )
            batch[transfer.transfer_id] = transfer
        if not batch:
            return []

        existing = self._existing(con, list(batch))
        new: list[Transfer] = []
        for transfer in batch.values():
            stored = existing.get(transfer.transfer_id)
            if stored is None:
                new.append(transfer)
            elif stored != transfer:
                raise LedgerConflict(
                    f"transfer {transfer.transfer_id[:12]} is already posted with different content "
                    f"({'; '.join(stored.differences(transfer))}); history is never edited — post a "
                    "reversing transfer under a new idempotency key instead",
                    transfer=transfer,
                    stored=stored,
                )
        if not new:
            return []

        accounts = {
            a.account_id: a
            for a in self.open_accounts(con, [x for t in new for x in (t.debit_account, t.credit_account)])
        }
        for transfer in new:
            for account_id in (transfer.debit_account, transfer.credit_account):
                if accounts[account_id].ledger != transfer.ledger:
                    raise LedgerError(
                        f"transfer {transfer.transfer_id[:12]} is on ledger {transfer.ledger} but account "
                        f"{account_id!r} is on ledger {accounts[account_id].ledger}; money moves only "
                        "within one ledger"
                    )
        self._check_funds(con, new, accounts)

        now = self._batch_instant(con)
        # One statement over an Arrow table of the batch, in batch order. Amounts travel as decimal
        # strings and are cast to HUGEINT by DuckDB, so no amount passes through a float.
        rows = [t.row() for t in new]
        names = [c.strip() for c in _TRANSFER_COLUMNS.split(",")]
        kinds = dict.fromkeys(names, "string") | {"ledger": "int32", "code": "int16"}
        columns = {name: (kinds[name], [r[i] for r in rows]) for i, name in enumerate(names)}
        columns["amount"] = ("string", [str(r[3]) for r in rows])
        with arrow_view(con, columns) as view:
            con.execute(
                f"INSERT INTO transfers ({_TRANSFER_COLUMNS}, created_at) SELECT transfer_id, debit_account, "
                "credit_account, CAST(amount AS HUGEINT), ledger, code, period, settlement_id, job_id, memo, "
                f"$1::TIMESTAMPTZ FROM {view}",
                [now],
            )
        # In the same transaction: the transfers and their audit entry commit together or not at all.
        record_transfers(con, now)
        return new

    def _batch_instant(self, con: duckdb.DuckDBPyConnection) -> dt.datetime:
        """``created_at`` of a new batch: now, or 1 µs after the latest transfer if that is not earlier.

        The audit chain logs a batch as one entry whose subject is this instant, so no two batches may
        share one. Two transactions that read the same latest instant both append the same audit seq,
        and only one of them commits.
        """
        now = dt.datetime.now(dt.UTC)
        latest = con.execute("SELECT max(created_at) FROM transfers").fetchall()[0][0]
        if latest is not None and latest >= now:
            return latest + dt.timedelta(microseconds=1)
        return now

    def _existing(self, con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, Transfer]:
        # A semi-join (hash) rather than list_contains per row, which scans the id list for each row.
        rows = con.execute(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id IN (SELECT unnest($1::VARCHAR[]))",
            [ids],
        ).fetchall()
        return {r[0]: Transfer.from_row(r) for r in rows}

    def _check_funds(
        self, con: duckdb.DuckDBPyConnection, new: list[Transfer], accounts: dict[str, Account]
    ) -> None:
        """Apply the batch in order to the flagged accounts' balances; refuse the first overdraft."""
        flagged = [a.account_id for a in accounts.values() if a.debits_must_not_exceed_credits]
        running = self._balances_of(con, flagged)
        for transfer in new:
            debit = accounts[transfer.debit_account]
            if debit.debits_must_not_exceed_credits:
                if running[debit.account_id] < transfer.amount:
                    raise LedgerError(
                        f"account {debit.account_id!r} holds {format_minor(running[debit.account_id])} "
                        f"minor units but transfer {transfer.transfer_id[:12]} ({transfer.code.label}, job "
                        f"{transfer.job_id}) debits {format_minor(transfer.amount)}; its debits may not "
                        "exceed its credits — fund the account first. Nothing was posted.",
                        account=debit.account_id,
                        balance=running[debit.account_id],
                        amount=transfer.amount,
                    )
                running[debit.account_id] -= transfer.amount
            credit = transfer.credit_account
            if accounts[credit].debits_must_not_exceed_credits:
                running[credit] += transfer.amount

    def _balances_of(self, con: duckdb.DuckDBPyConnection, account_ids: list[str]) -> dict[str, int]:
        """The balances of the named accounts (0 for one never used), in ONE grouped query: one
        ``BALANCE_SQL`` per account would scan the transfers once per holder of a settlement."""
        balances = dict.fromkeys(account_ids, 0)
        if not account_ids:
            return balances
        rows = con.execute(
            """WITH touched AS (SELECT unnest($1::VARCHAR[]) AS account_id),
               legs AS (
                   SELECT credit_account AS account_id, amount FROM transfers
                   WHERE credit_account IN (SELECT account_id FROM touched)
                   UNION ALL
                   SELECT debit_account, -amount FROM transfers
                   WHERE debit_account IN (SELECT account_id FROM touched)
               )
               SELECT account_id, SUM(amount) FROM legs GROUP BY account_id""",
            [account_ids],
        ).fetchall()
        for account_id, amount in rows:
            balances[account_id] = int(amount)
        return balances

    # --- reading -------------------------------------------------------------------------------
    def balance(self, account_id: str, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Credits minus debits of one account, in minor units (0 for an account never used)."""
        if con is None:
            rows = self.db.query(BALANCE_SQL, [account_id])
        else:
            rows = con.execute(BALANCE_SQL, [account_id]).fetchall()
        return int(rows[0][0])

    def balances(self) -> dict[str, int]:
        """Every account's balance, by account id."""
        return {r[0]: int(r[1]) for r in self.db.query(_ALL_BALANCES_SQL)}

    def transfers_by_id(
        self, transfer_ids: Sequence[str], con: duckdb.DuckDBPyConnection | None = None
    ) -> list[Transfer]:
        """The posted transfers among ``transfer_ids`` (ids not posted are left out), by id."""
        sql = f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = ANY(?) ORDER BY transfer_id"
        rows = (
            self.db.query(sql, [list(transfer_ids)])
            if con is None
            else con.execute(sql, [list(transfer_ids)]).fetchall()
        )
        return [Transfer.from_row(r) for r in rows]

    def transfers(self, *, period: str | None = None, job_id: str | None = None) -> list[Transfer]:
        sql = f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE 1 = 1"
        params: list[object] = []
        if period is not None:
            sql += " AND period = ?"
            params.append(period)
        if job_id is not None:
            sql += " AND job_id = ?"
            params.append(job_id)
        rows = self.db.query(sql + " ORDER BY created_at, transfer_id", params)
        return [Transfer.from_row(r) for r in rows]


# --- shortcuts for callers outside a transaction -------------------------------------------------


def balance(db: ExchangeDB, account_id: str) -> int:
    return Ledger(db).balance(account_id)


def account_balances(db: ExchangeDB) -> dict[str, int]:
    return Ledger(db).balances()
