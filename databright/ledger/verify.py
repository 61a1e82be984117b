"""``verify_ledger``: re-derive the ledger's invariants from the transfers table alone.

The ledger code keeps these invariants when it posts; this module checks them after the fact, from
the rows, so a bug, a manual ``INSERT`` or a damaged file shows up as a named failing check:

* transfers balanced per ledger — every transfer's two accounts exist on the transfer's ledger, so
  the net balances of each ledger's accounts sum to zero;
* flagged accounts non-negative — no ``debits_must_not_exceed_credits`` account is overdrawn;
* reversals — each names a posted transfer, mirrors it and has the id derived from it; the checks
  below read the effective transfers (``corrections.EFFECTIVE_TRANSFERS``: reversed transfers and
  their reversals left out), which is what the books say after a correction;
* uniqueness — each transfer id once, each job's escrow, revenue, refund and settlement leg once,
  and each holder's payout from one pool once per period (a second one under another idempotency
  key would pass the key);
* per-job conservation — a settled job's payment is recognised as revenue exactly, its data, compute
  and fee legs out of revenue add up to it, and its escrow is closed;
* per-period conservation — payouts plus the fee equal the period's revenue, and each pool pays
  out exactly what the period's jobs put in;
* pass-through accounts empty — revenue, the data pool and the compute pool net to zero;
* escrow — escrow holds exactly the budgets of the jobs that are neither settled nor refunded, and
  releases each budget whole;
* account purposes — escrow, revenue, suspense and payout clearing are moved only by their own
  transfer codes; payout clearing holds exactly the withdrawals in flight;
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
from databright.ledger.accounts import COMPUTE_POOL, DATA_POOL, ESCROW, PAYOUT_CLEARING, REVENUE, SUSPENSE
from databright.ledger.audit_log import verify_audit_chain
from databright.ledger.corrections import EFFECTIVE_TRANSFERS, reversal_problems
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
        f"""
        SELECT t.job_id,
               COALESCE(SUM(t.amount) FILTER (WHERE t.code = $1 AND t.debit_account = $2
                                              AND t.credit_account = $3), 0::HUGEINT),
               COALESCE(SUM(t.amount) FILTER (WHERE t.code = ANY($4) AND t.debit_account = $3), 0::HUGEINT),
               count(*) FILTER (WHERE t.code = ANY($4) AND t.debit_account <> $3),
               COALESCE(SUM(t.amount) FILTER (WHERE t.credit_account = $2), 0::HUGEINT)
                 - COALESCE(SUM(t.amount) FILTER (WHERE t.debit_account = $2), 0::HUGEINT),
               any_value(j.payment)
        FROM {EFFECTIVE_TRANSFERS} t LEFT JOIN jobs j USING (job_id)
        WHERE t.job_id IS NOT NULL
        GROUP BY t.job_id
        HAVING count(*) FILTER (WHERE t.code = $1 OR t.code = ANY($4)) > 0
        ORDER BY t.job_id
        """,
        [int(TransferCode.RECOGNISE), ESCROW, REVENUE, settle],
    ).fetchall()
    checks = []
    for job_id, recognised, legs, stray, escrow_left, payment in rows:
        recognised, legs = int(recognised), int(legs)
        problems = []
        if payment is None:
            problems.append("no such job in the jobs table")
        elif recognised != int(payment):
            problems.append(f"revenue {format_minor(recognised)} != payment {format_minor(int(payment))}")
        if legs != recognised:
            problems.append(f"pools and fee got {format_minor(legs)} of revenue {format_minor(recognised)}")
        if stray:
            problems.append(f"{stray} settlement leg(s) not debiting revenue")
        if int(escrow_left) != 0:
            problems.append(f"escrow keeps {format_minor(int(escrow_left))} of its budget after settlement")
        if problems:
            checks.append(Check("job_conservation", False, f"job {job_id}: " + "; ".join(problems)))
        else:
            checks.append(
                Check(
                    "job_conservation",
                    True,
                    f"job {job_id}: pools and fee {format_minor(legs)} = revenue = payment, escrow closed",
                )
            )
    return checks


def _period_conservation(con: duckdb.DuckDBPyConnection) -> list[Check]:
    """Per period: what was recognised as revenue left it again, through the pools to the holders and
    as the fee, and each pool paid out exactly what it received."""
    rows = con.execute(
        f"""
        SELECT period,
               COALESCE(SUM(amount) FILTER (WHERE code = $1), 0::HUGEINT),
               COALESCE(SUM(amount) FILTER (WHERE debit_account = $2), 0::HUGEINT),
               COALESCE(SUM(amount) FILTER (WHERE code = $3 AND debit_account IN ($4, $5)), 0::HUGEINT),
               COALESCE(SUM(amount) FILTER (WHERE code = $6), 0::HUGEINT),
               COALESCE(SUM(amount) FILTER (WHERE credit_account = $4), 0::HUGEINT)
                 - COALESCE(SUM(amount) FILTER (WHERE debit_account = $4), 0::HUGEINT),
               COALESCE(SUM(amount) FILTER (WHERE credit_account = $5), 0::HUGEINT)
                 - COALESCE(SUM(amount) FILTER (WHERE debit_account = $5), 0::HUGEINT)
        FROM {EFFECTIVE_TRANSFERS} WHERE period IS NOT NULL
        GROUP BY period
        HAVING count(*) FILTER (WHERE code = $1 OR debit_account IN ($2, $4, $5)
                                OR credit_account IN ($2, $4, $5)) > 0
        ORDER BY period
        """,
        [
            int(TransferCode.RECOGNISE),
            REVENUE,
            int(TransferCode.PAYOUT),
            DATA_POOL,
            COMPUTE_POOL,
            int(TransferCode.SETTLE_FEE),
        ],
    ).fetchall()
    checks = []
    for period, revenue, split, payouts, fee, data_left, compute_left in rows:
        revenue, split, payouts, fee = int(revenue), int(split), int(payouts), int(fee)
        problems = []
        if not revenue == split == payouts + fee:
            problems.append(
                f"revenue {format_minor(revenue)}, split out of revenue {format_minor(split)}, payouts "
                f"{format_minor(payouts)} + fee {format_minor(fee)}; all three must be equal"
            )
        for pool, left in ((DATA_POOL, int(data_left)), (COMPUTE_POOL, int(compute_left))):
            if left:
                problems.append(f"{pool} keeps {format_minor(left)} of the period's shares")
        if problems:
            checks.append(Check("period_conservation", False, f"period {period}: " + "; ".join(problems)))
        else:
            checks.append(
                Check(
                    "period_conservation",
                    True,
                    f"period {period}: payouts {format_minor(payouts)} + fee {format_minor(fee)} = revenue "
                    f"{format_minor(revenue)}",
                )
            )
    return checks


def _pass_through_empty(con: duckdb.DuckDBPyConnection) -> list[Check]:
    nets = {account: _balance(con, account) for account in (REVENUE, DATA_POOL, COMPUTE_POOL)}
    if all(v == 0 for v in nets.values()):
        return [Check("pools_empty", True, "revenue, data pool and compute pool net to zero after payouts")]
    return [
        Check(
            "pools_empty",
            False,
            f"{account} holds {format_minor(v)} after payouts; it passes money through and must end at zero",
        )
        for account, v in nets.items()
        if v != 0
    ]


#: The transfer codes each exchange account may see (besides reversals, which mirror any of them).
_ACCOUNT_CODES = {
    ESCROW: (TransferCode.ESCROW, TransferCode.RECOGNISE, TransferCode.REFUND),
    REVENUE: (TransferCode.RECOGNISE, *SETTLE_CODES),
    SUSPENSE: (TransferCode.DEPOSIT_UNMATCHED, TransferCode.SUSPENSE_MATCHED),
    PAYOUT_CLEARING: (
        TransferCode.WITHDRAWAL,
        TransferCode.WITHDRAWAL_SENT,
        TransferCode.WITHDRAWAL_RETURNED,
    ),
}


def _account_codes(con: duckdb.DuckDBPyConnection) -> list[Check]:
    """Escrow, revenue, suspense and payout clearing move money only for their own purpose, so their
    balances mean what they say (budgets held, unmatched deposits, withdrawals in flight)."""
    checks = []
    for account, codes in _ACCOUNT_CODES.items():
        allowed = [int(c) for c in (*codes, TransferCode.REVERSAL)]
        stray = con.execute(
            """SELECT transfer_id, code FROM transfers
               WHERE (debit_account = $1 OR credit_account = $1) AND NOT (code = ANY($2))
               ORDER BY transfer_id LIMIT 5""",
            [account, allowed],
        ).fetchall()
        if stray:
            named = ", ".join(f"{tid[:12]} ({TransferCode(int(code)).label})" for tid, code in stray)
            checks.append(
                Check(
                    "account_codes",
                    False,
                    f"{account} is moved by transfers of another purpose: {named}; it may only see "
                    + ", ".join(c.label for c in codes),
                )
            )
        else:
            checks.append(
                Check("account_codes", True, f"{account} moved only by {'/'.join(c.label for c in codes)}")
            )
    return checks


def _withdrawals_in_flight(con: duckdb.DuckDBPyConnection) -> list[Check]:
    held = _balance(con, PAYOUT_CLEARING)
    requested, done = (
        int(v)
        for v in con.execute(
            f"""SELECT COALESCE(SUM(amount) FILTER (WHERE code = $1), 0::HUGEINT),
                      COALESCE(SUM(amount) FILTER (WHERE code = ANY($2)), 0::HUGEINT)
               FROM {EFFECTIVE_TRANSFERS} WHERE debit_account = $3 OR credit_account = $3""",
            [
                int(TransferCode.WITHDRAWAL),
                [int(TransferCode.WITHDRAWAL_SENT), int(TransferCode.WITHDRAWAL_RETURNED)],
                PAYOUT_CLEARING,
            ],
        ).fetchall()[0]
    )
    if held == requested - done:
        return [
            Check(
                "payout_clearing",
                True,
                f"payout clearing holds {format_minor(held)} = withdrawals not yet sent or returned",
            )
        ]
    return [
        Check(
            "payout_clearing",
            False,
            f"payout clearing holds {format_minor(held)} but withdrawals in flight sum to "
            f"{format_minor(requested - done)}",
        )
    ]


def _uniqueness(con: duckdb.DuckDBPyConnection) -> list[Check]:
    """Nothing twice: each transfer id once, each movement a job can cause once — its escrow, its
    recognition, its refund, each settlement leg — and each holder's payout once a period. Ids are
    digests of idempotency keys, so a second movement under another key would pass the primary key;
    this catches it from the rows."""
    codes = [
        int(c) for c in (TransferCode.ESCROW, TransferCode.RECOGNISE, TransferCode.REFUND, *SETTLE_CODES)
    ]
    rows = con.execute(
        f"""
        SELECT 'transfer id ' || transfer_id, count(*) FROM transfers GROUP BY transfer_id HAVING count(*) > 1
        UNION ALL
        SELECT 'job ' || job_id || ': ' || code::VARCHAR, count(*) FROM {EFFECTIVE_TRANSFERS}
        WHERE job_id IS NOT NULL AND code = ANY($1) GROUP BY job_id, code HAVING count(*) > 1
        UNION ALL
        SELECT 'period ' || period || ': payout ' || debit_account || ' -> ' || credit_account, count(*)
        FROM {EFFECTIVE_TRANSFERS} WHERE period IS NOT NULL AND code = $2
        GROUP BY period, debit_account, credit_account HAVING count(*) > 1
        ORDER BY 1
        """,
        [codes, int(TransferCode.PAYOUT)],
    ).fetchall()
    if not rows:
        return [
            Check(
                "uniqueness",
                True,
                "no transfer id, no job's escrow, revenue, refund or leg, no period's payout twice",
            )
        ]

    def label(what: str) -> str:
        # 'job j-1: 11' -> 'job j-1: recognise'
        head, _, code = what.rpartition(": ")
        return f"{head}: {TransferCode(int(code)).label}" if code.isdigit() else what

    return [
        Check("uniqueness", False, f"{label(what)} posted {n} times; reverse the extra transfers")
        for what, n in rows
    ]


def _reversals(con: duckdb.DuckDBPyConnection) -> list[Check]:
    problems = reversal_problems(con)
    if problems:
        return [Check("reversals", False, p) for p in problems]
    count = int(
        con.execute("SELECT count(*) FROM transfers WHERE code = ?", [int(TransferCode.REVERSAL)]).fetchall()[
            0
        ][0]
    )
    return [Check("reversals", True, f"{_plural(count, 'reversal')}, each mirroring the transfer it names")]


def _escrow_matches(con: duckdb.DuckDBPyConnection) -> list[Check]:
    """Escrow holds, job by job, either a whole budget (open job) or nothing (failed or settled)."""
    held = _balance(con, ESCROW)
    rows = con.execute(
        f"""
        SELECT t.job_id,
               COALESCE(SUM(t.amount) FILTER (WHERE t.code = $1 AND t.credit_account = $2), 0::HUGEINT),
               COALESCE(SUM(t.amount) FILTER (WHERE t.debit_account = $2), 0::HUGEINT),
               any_value(j.budget)
        FROM {EFFECTIVE_TRANSFERS} t LEFT JOIN jobs j USING (job_id)
        WHERE t.job_id IS NOT NULL AND (t.credit_account = $2 OR t.debit_account = $2)
        GROUP BY t.job_id ORDER BY t.job_id
        """,
        [int(TransferCode.ESCROW), ESCROW],
    ).fetchall()
    expected, problems, open_jobs = 0, [], 0
    for job_id, escrowed, released, budget in rows:
        escrowed, released = int(escrowed), int(released)
        if budget is not None and escrowed != int(budget):
            problems.append(
                f"{job_id} escrowed {format_minor(escrowed)}, its budget is {format_minor(int(budget))}"
            )
        if released and released != escrowed:
            problems.append(
                f"{job_id} had {format_minor(released)} of its {format_minor(escrowed)} released; escrow is "
                "released whole (settled or refunded)"
            )
        if not released:
            expected += escrowed
            open_jobs += 1
    jobs = _plural(open_jobs, "open job")
    if held == expected and not problems:
        return [Check("escrow", True, f"escrow holds {format_minor(held)} = budgets of {jobs}")]
    detail = f"escrow holds {format_minor(held)}; the budgets of {jobs} sum to {format_minor(expected)}"
    if problems:
        detail += "; " + "; ".join(problems)
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
            *_reversals(con),
            *_uniqueness(con),
            *_job_conservation(con),
            *_period_conservation(con),
            *_pass_through_empty(con),
            *_escrow_matches(con),
            *_account_codes(con),
            *_withdrawals_in_flight(con),
        ]
    if store is not None and audit_key is not None:
        checks += _audit_chain(db, store, audit_key)
    return LedgerReport(tuple(checks))
