"""The ``settle`` flow: propose the period, show finance what it pays, and post only after approval.

    propose (verify receipts and valuations, allocate; nothing posted)
    -> artifacts: summary, top holders, every dataset, a PNG chart
    -> pause for an ``ApprovalInput`` (approve / reject, approver, reason): the Prefect UI's form, or
       ``databright settle approve|reject PERIOD`` from a terminal (``review_period``)
    -> approve and post in one transaction, or record the rejection (nothing posted)

``review=False`` approves the proposal as ``approver`` without pausing (the demo's ``demo-auto``).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.errors import SettlementError
from databright.ledger import load_audit_key
from databright.provenance import ProvenanceLog
from databright.settlement import (
    Proposal,
    Settlement,
    approve_period,
    check_period,
    post_period,
    propose_period,
    reject_period,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

FLOW_NAME = "settle"
TOP_HOLDERS = 20


class SettleConfig(BaseModel):
    period: str = Field(description="Period to settle, YYYY-MM", pattern=r"^\d{4}-\d{2}$")
    review: bool = Field(
        True,
        description="Pause for finance to approve or reject the proposal before any money moves; "
        "off approves it automatically as `approver`",
    )
    approver: str = Field(
        "auto", min_length=1, max_length=200, description="Who is recorded as approver when review is off"
    )
    review_timeout_s: int = Field(
        7 * 24 * 3600,
        ge=10,
        le=30 * 24 * 3600,
        description="How long the run waits for a decision; the period stays proposed after that",
    )
    poll_interval_s: int = Field(
        5, ge=1, le=300, description="How often the paused run checks for a decision"
    )


class ApprovalInput(RunInput):
    """The review form: what finance decides about the proposal in the artifacts above it."""

    decision: Literal["approve", "reject"] = Field(
        description="approve: post the proposed transfers now; reject: post nothing"
    )
    approver: str = Field(min_length=1, max_length=200, description="Your name or email, recorded with it")
    reason: str = Field("", max_length=2000, description="Why (required to reject)")


def _settings(period: str) -> Settings:
    return Settings.from_env().with_period(check_period(period)).ensure_dirs()


@task(cache_policy=NO_CACHE)
def propose(settings: Settings, period: str) -> Proposal:
    return propose_for(settings, period)


def propose_for(settings: Settings, period: str) -> Proposal:
    """``propose_period`` with everything the exchange in ``settings`` verifies receipts with."""
    db = settings.exchange_db()
    return propose_period(
        db,
        settings.object_store(),
        period=period,
        policy=settings.allocation_policy(),
        verify=settings.receipt_verifier(db),
        verify_valuation=settings.valuation_verifier(db),
        intake=settings.receipt_intake(db),
    )


def post_approved(settings: Settings, period: str) -> Settlement:
    """``post_period`` with everything the exchange in ``settings`` verifies, records and signs."""
    db = settings.exchange_db()
    return post_period(
        db,
        settings.object_store(),
        period=period,
        policy=settings.allocation_policy(),
        verify=settings.receipt_verifier(db),
        verify_valuation=settings.valuation_verifier(db),
        statements_dir=settings.statements_dir,
        provenance=ProvenanceLog.from_settings(settings, db),
        intake=settings.receipt_intake(db),
        audit_key=load_audit_key(settings.keys_dir),
    )


@task(cache_policy=NO_CACHE)
def post(settings: Settings, period: str) -> Settlement:
    return post_approved(settings, period)


@task(cache_policy=NO_CACHE)
def publish_review(settings: Settings, proposal: Proposal) -> str:
    """The review artifacts; returns the object-store key of the chart."""
    period = proposal.period
    create_markdown_artifact(
        proposal.summary_markdown(), key=f"settlement-{period}", description="Settlement proposal"
    )
    create_table_artifact(
        proposal.holder_rows(top=TOP_HOLDERS),
        key=f"top-holders-{period}",
        description=f"The {TOP_HOLDERS} largest payouts of the proposal",
    )
    create_table_artifact(
        proposal.dataset_rows(), key=f"datasets-{period}", description="What every dataset version earned"
    )
    png = proposal.chart_png()
    chart_key = f"reviews/{period}/{proposal.allocation_root}.png"
    settings.object_store().put_bytes(chart_key, png)
    # The UI cannot read the object store, so the markdown carries the image itself as a data URI.
    create_markdown_artifact(
        f"### Settlement {period}: values and payouts\n\n"
        f"![value distribution and payout by dataset](data:image/png;base64,{base64.b64encode(png).decode()})"
        f"\n\nPNG stored at `{chart_key}` (sha256 `{hashlib.sha256(png).hexdigest()}`)",
        key=f"settlement-chart-{period}",
        description="Chart: signed value per owner and payout by dataset",
    )
    return chart_key


@task(cache_policy=NO_CACHE)
def decide(settings: Settings, proposal: Proposal, answer: ApprovalInput) -> None:
    db = settings.exchange_db()
    if answer.decision == "approve":
        approve_period(
            db,
            period=proposal.period,
            approver=answer.approver,
            reason=answer.reason,
            allocation_root=proposal.allocation_root,
        )
    else:
        reject_period(
            db,
            period=proposal.period,
            approver=answer.approver,
            reason=answer.reason,
            allocation_root=proposal.allocation_root,
        )


def wait_for_decision(config: SettleConfig, proposal: Proposal) -> ApprovalInput:
    """Pause until a reviewer decides; a rejection without a reason asks again."""
    logger = get_run_logger()
    for attempt in range(1, 11):
        logger.info(
            "settlement %s proposed (allocation root %s): waiting for approve/reject in the Prefect UI or "
            "`databright settle approve|reject %s`",
            proposal.period,
            proposal.allocation_root,
            proposal.period,
        )
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalInput,
                timeout=config.review_timeout_s,
                poll_interval=config.poll_interval_s,
                key=f"review-{proposal.allocation_root[:16]}-{attempt}",
            )
        except FlowPauseTimeout as exc:
            raise SettlementError(
                f"settlement {proposal.period} got no decision ({type(exc).__name__}: {exc}); nothing was "
                "posted and it stays proposed — decide with "
                f"`databright settle approve|reject {proposal.period}`",
                period=proposal.period,
            ) from exc
        if answer.decision == "approve" or answer.reason.strip():
            return answer
        logger.warning("a rejection needs a reason, so that the inputs can be fixed; asking again")
    raise SettlementError(
        f"settlement {proposal.period}: ten rejections came without a reason; nothing was posted and it "
        "stays proposed — reject it with a reason",
        period=proposal.period,
    )


@flow(name=FLOW_NAME, log_prints=True)
def settle_flow(config: SettleConfig) -> Settlement:
    settings = _settings(config.period)
    proposal = propose(settings, config.period)
    if proposal.state == "proposed":
        publish_review(settings, proposal)
        if config.review:
            answer = wait_for_decision(config, proposal)
        else:
            answer = ApprovalInput(decision="approve", approver=config.approver)
        decide(settings, proposal, answer)
        if answer.decision == "reject":
            print(
                f"settlement {config.period} rejected by {answer.approver}: {answer.reason}; nothing posted"
            )
            return proposal.as_settlement(state="rejected", approver=answer.approver)
    settlement = post(settings, config.period)
    create_table_artifact(
        settlement.holder_rows(),
        key=f"payouts-{settlement.period}",
        description=f"What each holder is paid this period (approved by {settlement.approver})",
    )
    return settlement


# --- the terminal side of the review -------------------------------------------------------------


def paused_review_runs(period: str) -> list[FlowRun]:
    """The ``settle`` runs paused for a decision on ``period`` (by flow name, state and parameter)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    return [run for run in runs if (run.parameters.get("config") or {}).get("period") == period]


def _answer(decision: str, approver: str, reason: str) -> ApprovalInput:
    if decision not in ("approve", "reject"):
        raise SettlementError(f"decision {decision!r} is neither 'approve' nor 'reject'")
    if decision == "reject" and not reason.strip():
        raise SettlementError("a rejection needs a reason (what is wrong with the proposal); pass --reason")
    return ApprovalInput(decision=decision, approver=approver, reason=reason)


def resume_review(period: str, decision: str, approver: str, reason: str = "") -> UUID | None:
    """Resume the settle run paused for ``period`` with this decision; None when no run waits for it."""
    from prefect.flow_runs import resume_flow_run

    answer = _answer(decision, approver, reason)
    runs = paused_review_runs(check_period(period))
    if not runs:
        return None
    if len(runs) > 1:
        raise SettlementError(
            f"{len(runs)} settle runs wait for a decision on period {period} "
            f"({', '.join(str(r.id) for r in runs)}); decide in the Prefect UI on one and cancel the others"
        )
    resume_flow_run(
        runs[0].id, run_input=answer.model_dump(mode="json", include={"decision", "approver", "reason"})
    )
    return runs[0].id


@dataclass(frozen=True)
class ReviewOutcome:
    """What ``review_period`` did: resumed a paused run, or decided on the database directly."""

    period: str
    decision: str
    flow_run_id: UUID | None  # the resumed run, which approves and posts (or rejects) itself
    state: str  # the period's state when acting directly; "resumed" when a run took the decision
    settlement: Settlement | None  # the posted settlement when approved directly


def review_period(period: str, decision: str, approver: str, reason: str = "") -> ReviewOutcome:
    """``databright settle approve|reject PERIOD``: resume the paused settle run for the period if one
    waits, else approve-and-post or reject it on the database directly."""
    run_id = resume_review(period, decision, approver, reason)
    if run_id is not None:
        return ReviewOutcome(period, decision, run_id, "resumed", None)
    settings = _settings(period)
    db = settings.exchange_db()
    if decision == "reject":
        row = reject_period(db, period=period, approver=approver, reason=reason)
        return ReviewOutcome(period, decision, None, row.state, None)
    approve_period(db, period=period, approver=approver, reason=reason)
    settlement = post_approved(settings, period)
    return ReviewOutcome(period, decision, None, settlement.state, settlement)


if __name__ == "__main__":
    import sys

    print(settle_flow(SettleConfig(period=sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().period)))
