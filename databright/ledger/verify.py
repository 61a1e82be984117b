"""``verify_ledger``: re-derive the ledger's invariants from the transfers table alone.

The ledger code keeps these invariants when it posts; this module checks them after the fact, from
the rows, so a bug, a manual ``INSERT`` or a damaged file shows up as a named failing check:

* transfers balanced per ledger — every transfer's two accounts exist on the transfer's ledger, so
  the net balances of each ledger's accounts sum to zero;
* flagged accounts non-negative — no ``debits_must_not_exceed_credits`` account is overdrawn;
* per-job conservation — the data, compute and fee legs out of escrow for a settled job add up to
  the job's payment exactly, and each job's pool credits are paid out in full;
* pools empty — the data pool and the compute pool net to zero after payouts;
* escrow — escrow holds exactly the payments of the jobs that are escrowed and not yet settled;
* audit chain (given the object store and the audit public key) — the hash chain recomputes, every
  transfer, settlement and allocation row matches its entry, and the log agrees with every signed
  checkpoint (``databright.ledger.audit_log.verify_audit_chain``). A ledger with a posted settlement
  but no checkpoint fails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from databright.crypto import PublicKey
from databright.db import ExchangeDB
from databright.errors import LedgerError, LedgerInvariantBroken
from databright.ledger.accounts import COMPUTE_POOL, DATA_POOL, ESCROW
from databright.ledger.audit_log import verify_audit_chain
from databright.ledger.store import BALANCE_SQL
from databright.ledger.transfers import SETTLE_CODES, TransferCode
from databright.money import format_minor

if TYPE_CHECKING:
    import duckdb

    from databright.storage.objectstore import ObjectStore


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class LedgerReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def check(self, name: str) -> tuple[Check, ...]:
        """The checks with one name (per-job checks share theirs)."""
        return tuple(c for c in self.checks if c.name == name)

    def raise_if_broken(self) -> LedgerReport:
        if not self.ok:
            lines = "; ".join(c.detail for c in self.failures)
            raise LedgerInvariantBroken(
                f"{len(self.failures)} ledger invariant(s) broken: {lines}. Find the transfers named "
                "above and correct them with reversing transfers; never edit or delete rows",
                report=self,
            )
        return self

    def __str__(self) -> str:
        return "\n".join(f"[{'ok' if c.ok else 'FAIL'}] {c.detail}" for c in self.checks)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _balance(con: duckdb.DuckDBPyConnection, account_id: str) -> int:
    return int(con.execute(BALANCE_SQL, [account_id]).fetchall()[0][0])


def _ledger_balance(con: duckdb.DuckDBPyConnection) -> list[Check]:
    transfers = int(con.execute("SELECT count(*) FROM transfers").fetchall()[0][0])
    # A leg counts towards a ledger only when its account exists on that same ledger, so a leg on a
    # missing or foreign account leaves its ledger out of balance instead of vanishing.
    rows = con.execute(
        """
        WITH legs AS (
            SELECT ledger, credit_account AS account_id, amount FROM transfers
            UNION ALL
            SELECT ledger, debit_account, -amount FROM transfers
        )
        SELECT l.ledger, COALESCE(SUM(l.amount) FILTER (WHERE a.account_id IS NOT NULL), 0::HUGEINT),
               list(DISTINCT l.account_id) FILTER (WHERE a.account_id IS NULL)
        FROM legs l LEFT JOIN accounts a ON a.account_id = l.account_id AND a.ledger = l.ledger
        GROUP BY l.ledger ORDER BY l.ledger
        """
    ).fetchall()
    unbalanced = [(int(r[0]), int(r[1]), sorted(r[2] or [])) for r in rows if int(r[1]) != 0 or r[2]]
    if not unbalanced:
        return [
            Check(
                "ledger_balance",
                True,
                f"transfers balanced per ledger: {_plural(len(rows), 'ledger')}, "
                f"{_plural(transfers, 'transfer')}",
            )
        ]
    return [
        Check(
            "ledger_balance",
            False,
            f"ledger {ledger} out of balance by {format_minor(net)}"
            + (f"; legs on accounts not open on it: {', '.join(missing)}" if missing else ""),
        )
        for ledger, net, missing in unbalanced
    ]


def _flagged_non_negative(con: duckdb.DuckDBPyConnection) -> list[Check]:
    rows = con.execute(
        """
        WITH legs AS (
            SELECT credit_account AS account_id, amount FROM transfers
            UNION ALL
            SELECT debit_account, -amount FROM transfers
        )
        SELECT a.account_id, COALESCE(SUM(l.amount), 0::HUGEINT) AS balance
        FROM accounts a LEFT JOIN legs l USING (account_id)
        WHERE a.debits_must_not_exceed_credits
        GROUP BY a.account_id ORDER BY a.account_id
        """
    ).fetchall()
    negative = [(r[0], int(r[1])) for r in rows if int(r[1]) < 0]
    if not negative:
        return [
            Check(
                "flagged_non_negative",
                True,
                f"no flagged account below zero: {_plural(len(rows), 'account')} checked",
            )
        ]
    return [
        Check(
            "flagged_non_negative",
            False,
            f"account {account} is overdrawn: balance {format_minor(amount)}, but its debits may not "
            "exceed its credits",
        )
        for account, amount in negative
    ]


def _job_conservation(con: duckdb.DuckDBPyConnection) -> list[Check]:
    settle = [int(c) for c in SETTLE_CODES]
    rows = con.execute(
        """
        SELECT t.job_id,
               SUM(t.amount) FILTER (WHERE t.code = ANY($1) AND t.debit_account = $2),
               count(*) FILTER (WHERE t.code = ANY($1) AND t.debit_account <> $2),
               COALESCE(SUM(t.amount) FILTER (WHERE t.credit_account = $3), 0::HUGEINT)
                 - COALESCE(SUM(t.amount) FILTER (WHERE t.debit_account = $3), 0::HUGEINT),
               COALESCE(SUM(t.amount) FILTER (WHERE t.credit_account = $4), 0::HUGEINT)
                 - COALESCE(SUM(t.amount) FILTER (WHERE t.debit_account = $4), 0::HUGEINT),
               any_value(j.payment)
        FROM transfers t LEFT JOIN jobs j USING (job_id)
        WHERE t.job_id IS NOT NULL
        GROUP BY t.job_id
        HAVING count(*) FILTER (WHERE t.code = ANY($1)) > 0
            OR count(*) FILTER (WHERE t.credit_account IN ($3, $4) OR t.debit_account IN ($3, $4)) > 0
        ORDER BY t.job_id
        """,
        [settle, ESCROW, DATA_POOL, COMPUTE_POOL],
    ).fetchall()
    checks = []
    for job_id, legs, stray, data_left, compute_left, payment in rows:
        legs = int(legs or 0)
        problems = []
        if payment is None:
            problems.append("no such job in the jobs table")
        elif legs != int(payment):
            problems.append(f"payouts {format_minor(legs)} != payment {format_minor(int(payment))}")
        if stray:
            problems.append(f"{stray} settlement leg(s) not debiting escrow")
        if int(data_left) != 0:
            problems.append(f"data pool keeps {format_minor(int(data_left))} of it")
        if int(compute_left) != 0:
            problems.append(f"compute pool keeps {format_minor(int(compute_left))} of it")
        if problems:
            checks.append(Check("job_conservation", False, f"job {job_id}: " + "; ".join(problems)))
        else:
            checks.append(
                Check(
                    "job_conservation",
                    True,
                    f"job {job_id}: payouts {format_minor(legs)} = payment {format_minor(legs)}",
                )
            )
    return checks


def _pools_empty(con: duckdb.DuckDBPyConnection) -> list[Check]:
    nets = {pool: _balance(con, pool) for pool in (DATA_POOL, COMPUTE_POOL)}
    if all(v == 0 for v in nets.values()):
        return [Check("pools_empty", True, "data pool and compute pool net to zero after payouts")]
    return [
        Check(
            "pools_empty",
            False,
            f"{pool} holds {format_minor(v)} after payouts; pools pass money through and must end at zero",
        )
        for pool, v in nets.items()
        if v != 0
    ]


def _escrow_matches(con: duckdb.DuckDBPyConnection) -> list[Check]:
    held = _balance(con, ESCROW)
    rows = con.execute(
        """
        WITH escrowed AS (
            SELECT job_id, SUM(amount) AS amount FROM transfers
            WHERE code = $1 AND credit_account = $2 AND job_id IS NOT NULL GROUP BY job_id
        ), released AS (
            SELECT DISTINCT job_id FROM transfers
            WHERE debit_account = $2 AND job_id IS NOT NULL AND (code = ANY($3) OR code = $4)
        )
        SELECT e.job_id, e.amount, j.payment
        FROM escrowed e LEFT JOIN jobs j USING (job_id)
        WHERE e.job_id NOT IN (SELECT job_id FROM released)
        ORDER BY e.job_id
        """,
        [int(TransferCode.ESCROW), ESCROW, [int(c) for c in SETTLE_CODES], int(TransferCode.REFUND)],
    ).fetchall()
    expected = sum(int(r[2]) if r[2] is not None else int(r[1]) for r in rows)
    mismatched = [r[0] for r in rows if r[2] is not None and int(r[1]) != int(r[2])]
    jobs = _plural(len(rows), "unsettled job")
    if held == expected and not mismatched:
        return [Check("escrow", True, f"escrow holds {format_minor(held)} = payments of {jobs}")]
    detail = f"escrow holds {format_minor(held)} but the payments of {jobs} sum to {format_minor(expected)}"
    if mismatched:
        detail += f"; escrowed amount differs from the job's payment for {', '.join(mismatched)}"
    return [Check("escrow", False, detail)]


def _audit_chain(db: ExchangeDB, store: ObjectStore, audit_key: PublicKey) -> list[Check]:
    report = verify_audit_chain(db, store, audit_key)
    if report.ok:
        return [Check("audit_chain", True, report.summary)]
    return [Check("audit_chain", False, problem) for problem in report.problems]


def verify_ledger(
    db: ExchangeDB, *, store: ObjectStore | None = None, audit_key: PublicKey | None = None
) -> LedgerReport:
    """Run every ledger check and return the report (``report.ok``, ``report.failures``).

    With ``store`` and ``audit_key`` (``audit_public_key(settings.keys_dir)``) the audit chain is
    checked too, against the checkpoints exported to that store.
    """
    if (store is None) != (audit_key is None):
        raise LedgerError(
            "verify_ledger checks the audit chain with both the object store and the audit public key; "
            "pass store= and audit_key= together, or neither"
        )
    with db.connect() as con:
        checks = [
            *_ledger_balance(con),
            *_flagged_non_negative(con),
            *_job_conservation(con),
            *_pools_empty(con),
            *_escrow_matches(con),
        ]
    if store is not None and audit_key is not None:
        checks += _audit_chain(db, store, audit_key)
    return LedgerReport(tuple(checks))
