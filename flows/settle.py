"""The ``settle`` flow: at period end, turn verified receipts into posted transfers and statements."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.money import format_amount
from databright.provenance import ProvenanceLog
from databright.settlement import Settlement, settle_period


class SettleConfig(BaseModel):
    period: str = Field(description="Period to settle, YYYY-MM", pattern=r"^\d{4}-\d{2}$")
    approver: str = Field(
        "auto", description="Who approves the posting (automatic in this release; a review form comes later)"
    )


@task(cache_policy=NO_CACHE)
def settle(settings: Settings, config: SettleConfig) -> Settlement:
    db = settings.exchange_db()
    return settle_period(
        db,
        settings.object_store(),
        period=config.period,
        policy=settings.allocation_policy(),
        verify=settings.receipt_verifier(db),
        verify_valuation=settings.valuation_verifier(db),
        approver=config.approver,
        statements_dir=settings.statements_dir,
        provenance=ProvenanceLog.from_settings(settings, db),
        intake=settings.receipt_intake(db),
    )


@flow(name="settle", log_prints=True)
def settle_flow(config: SettleConfig) -> Settlement:
    settings = Settings.from_env().with_period(config.period).ensure_dirs()
    settlement = settle(settings, config)
    create_markdown_artifact(
        f"### Settlement {settlement.period}: **{settlement.state}**\n\n"
        f"assurance: **{settlement.assurance}** · policy {settlement.policy_version} · "
        f"allocation root `{settlement.allocation_root}` · inputs digest `{settlement.inputs_digest}`",
        key=f"settlement-{settlement.period}",
        description="Settlement summary",
    )
    create_table_artifact(
        [
            {"holder": holder, "amount": format_amount(amount)}
            for holder, amount in sorted(settlement.totals.items())
        ],
        key=f"payouts-{settlement.period}",
        description="What each holder is paid this period",
    )
    return settlement


if __name__ == "__main__":
    import sys

    print(settle_flow(SettleConfig(period=sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().period)))
