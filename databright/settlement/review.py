"""Review of a proposed period: ``approve_period`` and ``reject_period``, the only ways out of ``proposed``.

    proposed --approve--> approved --post_period--> posted
        \\------reject---> rejected   (nothing posted; the approver and the reason are recorded)

An approval names the allocation root it approves. The root is the Merkle root over every
allocation row, so approving a root approves exactly the payouts the reviewer saw; if a later
proposal replaced them (new receipts, another policy), the approval is refused and the new proposal
must be reviewed. A rejected period keeps its inputs digest and allocation root, so proposing the
same inputs again is refused (``propose_period``) until something changes.

Each decision is one short transaction; deciding again the same way is a no-op, so a retried CLI
call or a resumed flow run cannot record two decisions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from databright.db import ExchangeDB, write_conflicts_as
from databright.errors import SettlementError
from databright.settlement import store as rows
from databright.settlement.result import check_period

#: Who approves when no person reviews: ``settle_period``'s default, and the demo's ``demo-auto``.
AUTO_APPROVER = "auto"


def check_reviewer(approver: str) -> str:
    if not isinstance(approver, str) or not approver.strip():
        raise SettlementError(
            f"approver {approver!r} is empty; name who reviews the settlement (e.g. finance@example.com)"
        )
    if len(approver) > 200:
        raise SettlementError(
            f"approver name is {len(approver)} characters; use at most 200 (a name or email)"
        )
    return approver.strip()


def rejected_in_review(row: rows.SettlementRow) -> bool:
    """A reviewer's rejection records who rejected; a rejection by failing receipts records no one."""
    return row.state == rows.REJECTED and row.approver is not None


def _fix_for(period: str, row: rows.SettlementRow | None) -> str:
    """What to do about a period that is not awaiting review."""
    if row is None:
        return (
            f"period {period} has not been proposed; run the settle flow (or propose_period) for it first, "
            "then review its proposal"
        )
    if row.state in ("claimed", "valued"):
        return (
            f"period {period} is still being proposed (state {row.state!r}); wait for the settle run to "
            "publish its proposal, or run it again if it stopped, then review it"
        )
    if row.state == rows.REJECTED:
        who = f"by {row.approver}" if row.approver else "because its receipts failed"
        return (
            f"period {period} was rejected {who} ({row.reason}); nothing was posted. Change what was wrong "
            "(receipts, valuations, jobs or policy), propose it again, then review the new proposal"
        )
    return f"period {period} is {row.state!r}"


def _check_root(period: str, row: rows.SettlementRow, allocation_root: str | None) -> None:
    if allocation_root is not None and allocation_root != row.allocation_root:
        raise SettlementError(
            f"period {period}: you reviewed allocation root {allocation_root}, but the period now proposes "
            f"{row.allocation_root} (state {row.state!r}); its inputs changed after you looked — review the "
            "current proposal and decide again",
            period=period,
            reviewed_root=allocation_root,
            proposed_root=row.allocation_root,
        )


def _one_reviewer_at_a_time(period: str) -> AbstractContextManager[None]:
    return write_conflicts_as(
        SettlementError,
        f"another decision on period {period} (or a new proposal of it) was written at the same moment "
        "and came first; this one was rolled back. Look at the period's state "
        "(`databright settle status PERIOD` or the Prefect UI), then decide again if it still needs you",
        period=period,
    )


def approve_period(
    db: ExchangeDB,
    *,
    period: str,
    approver: str,
    reason: str = "",
    allocation_root: str | None = None,
) -> rows.SettlementRow:
    """Approve the period's proposal (state ``approved``, ``approver`` recorded); nothing is posted yet.

    With ``allocation_root`` the approval holds only if the period still proposes exactly that root.
    Approving an approved or posted period returns it unchanged (the first approval stands).
    """
    check_period(period)
    approver = check_reviewer(approver)
    with _one_reviewer_at_a_time(period), db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is None or row.state not in ("proposed", "approved", "posted"):
            raise SettlementError(_fix_for(period, row), period=period)
        _check_root(period, row, allocation_root)
        if row.state != "proposed":
            return row
        rows.advance(con, period, "approved", approver=approver, reason=reason.strip() or None)
        approved = rows.read_settlement(con, period)
    if approved is None:
        raise SettlementError(f"period {period} lost its settlements row while approving; check the database")
    return approved


def reject_period(
    db: ExchangeDB,
    *,
    period: str,
    approver: str,
    reason: str,
    allocation_root: str | None = None,
) -> rows.SettlementRow:
    """Reject the period's proposal or approval (state ``rejected``); nothing is posted.

    The reason is required and recorded with the reviewer. A posted period cannot be rejected: it is
    final, and corrections are reversing transfers in a later period.
    """
    check_period(period)
    approver = check_reviewer(approver)
    if not isinstance(reason, str) or not reason.strip():
        raise SettlementError(
            f"rejecting period {period} needs a reason (what is wrong with the proposal), so whoever fixes "
            "the inputs knows what to fix; pass --reason"
        )
    with _one_reviewer_at_a_time(period), db.transaction() as con:
        row = rows.read_settlement(con, period)
        if row is not None and row.state == "posted":
            raise SettlementError(
                f"period {period} is already posted (approved by {row.approver}); a posted period is final — "
                "correct it with reversing transfers in a later period",
                period=period,
            )
        if row is not None and rejected_in_review(row):
            return row
        if row is None or row.state not in ("proposed", "approved"):
            raise SettlementError(_fix_for(period, row), period=period)
        _check_root(period, row, allocation_root)
        rows.advance(con, period, rows.REJECTED, approver=approver, reason=reason.strip())
        rejected = rows.read_settlement(con, period)
    if rejected is None:
        raise SettlementError(f"period {period} lost its settlements row while rejecting; check the database")
    return rejected
