"""Rich renderings of DataBright's result objects, for the CLI and the demo.

Amounts are formatted from integer minor units; anything that rests on simulated attestation says
``assurance: simulated`` next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from databright.money import format_amount

if TYPE_CHECKING:
    from databright.datasets import IngestResult
    from databright.settlement import Settlement
    from databright.training.jobs import TrainingJob


def render_ingest(result: IngestResult, console: Console) -> None:
    table = Table(title=f"{result.owner} → {result.dataset}", show_header=False)
    table.add_row("rows received", str(result.rows_received))
    table.add_row("accepted", str(result.accepted))
    table.add_row("quarantined", str(result.quarantined_rows))
    table.add_row("duplicates refused", str(result.duplicates_refused))
    if result.version is not None:
        table.add_row("new version", f"v{result.version.version} ({result.version.record_count} records)")
        table.add_row("Merkle root", result.version.merkle_root)
    console.print(table)
    if result.report.quarantined:
        quarantine = Table("row", "column", "expectation", "value", title="quarantined")
        for q in result.report.quarantined:
            quarantine.add_row(str(q.row_number), q.column, q.expectation, str(q.value))
        console.print(quarantine)


def render_job(job: TrainingJob, console: Console) -> None:
    table = Table(title=f"job {job.job_id}", show_header=False)
    for label, value in (
        ("status", job.status),
        ("trainer", job.trainer_id),
        ("payment", format_amount(job.payment)),
        ("budget escrowed", f"{format_amount(job.budget)} (unused part refunded at settlement)"),
        ("dataset", f"{job.dataset}@v{job.dataset_version}"),
        ("task", job.task),
        ("provider", job.provider_id or "-"),
        ("work units", f"{job.work_units or 0:,}"),
        ("model sha256", job.model_digest or "-"),
        ("receipt", job.receipt_key or "-"),
    ):
        table.add_row(label, str(value))
    console.print(table)


def render_settlement(settlement: Settlement, console: Console) -> None:
    table = Table(
        "holder",
        "amount",
        title=(f"settlement {settlement.period}: {settlement.state} — assurance: {settlement.assurance}"),
    )
    for holder, amount in sorted(settlement.totals.items()):
        table.add_row(holder, format_amount(amount))
    console.print(table)
    console.print(f"allocation root {settlement.allocation_root}\ninputs digest   {settlement.inputs_digest}")


def render_earnings(
    ingests: Sequence[IngestResult], settlement: Settlement, statements_dir: Path, console: Console
) -> None:
    """The demo's closing table: who earned what this period, and why."""
    job = settlement.jobs[0]
    usage = {line.owner: line for line in job.owners}
    total_weight = sum(line.weight for line in job.owners) or 1
    table = Table(
        "holder",
        "sent",
        "accepted",
        "quarantined",
        "duplicates\nrefused",
        "rows used",
        "value\n(KNN-Shapley)",
        "share of\ndata pool",
        "earned",
        title=f"Who earned what — period {settlement.period} (assurance: {settlement.assurance})",
    )
    for ingest in ingests:
        line = usage.get(ingest.owner)
        table.add_row(
            f"contributor:{ingest.owner}",
            str(ingest.rows_received),
            str(ingest.accepted),
            str(ingest.quarantined_rows),
            str(ingest.duplicates_refused),
            str(line.rows_used) if line else "0",
            f"{line.value:+.4f}" if line else "-",
            f"{100 * line.weight / total_weight:.1f} %" if line else "-",
            format_amount(settlement.totals.get(f"contributor:{ingest.owner}", 0)),
        )
    for holder, amount in sorted(settlement.totals.items()):
        if not holder.startswith("contributor:"):
            why = "attested work units" if holder.startswith("provider:") else "exchange fee"
            table.add_row(holder, "", "", "", "", "", "", why, format_amount(amount))
    console.print(table)
    console.print(
        f"trainer {job.trainer_id} paid {format_amount(job.payment)} for {job.job_id} on "
        f"{job.dataset}@v{job.dataset_version}; provider {job.provider_id} ran it "
        f"(attestation {job.attestation_result_id}, assurance: {job.assurance})."
    )
    console.print(
        " ".join(
            (
                "Value is the exact KNN-Shapley value of each contributor's rows against the trainer's",
                "validation set, computed and signed by the attested value task (near-duplicates share",
                "one value); negative values count as zero. Duplicates of rows already in the dataset",
                "earn nothing: the first registrant keeps the credit.",
            )
        )
    )
    console.print(
        f"Statements: {statements_dir / settlement.period}   "
        "Next: `databright ledger verify`, `databright statement show alice`, "
        "`databright statement verify alice`."
    )
