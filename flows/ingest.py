"""The ``ingest`` flow: a contributor registers a CSV, Parquet or JSON Lines file into a dataset.

Two tasks: *stage* reads, validates and hashes the file into a private staging folder (pure work on
the contributor's file: no retries, a refusal is the contributor's to fix); *publish* deduplicates,
writes the version, pushes it with DVC and commits it to the registry in one transaction (I/O:
retried, and safe to retry because a failed publish leaves no version behind).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.datasets import (
    ContractReport,
    CsvDialect,
    IngestResult,
    StagedSubmission,
    publish_submission,
    stage_submission,
)
from databright.errors import NothingAccepted, RegistryError, StorageError

FIRST_ROWS = 20  # failing rows shown in the summary; the table artifact holds up to QUARANTINE_ROWS
QUARANTINE_ROWS = 1_000


class IngestConfig(BaseModel):
    dataset: str = Field(
        description="Dataset to add to (created on first use)", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"
    )
    owner: str = Field(
        description="Contributor id that will own the accepted records", min_length=1, max_length=64
    )
    path: str = Field(description="CSV, Parquet or JSON Lines file (optionally .gz or .zip) to register")
    contract: str = Field("tabular-v1", description="Data contract from data_contracts/ the file must meet")
    delimiter: str = Field(",", description="CSV field delimiter", min_length=1, max_length=1)


def _transient(task, task_run, state) -> bool:
    """Retry a publish only for storage or registry trouble, never for a refused file."""
    try:
        state.result()
    except (StorageError, RegistryError):
        return True
    except Exception:
        return False
    return False


@task(cache_policy=NO_CACHE)
def stage(settings: Settings, config: IngestConfig) -> StagedSubmission:
    return stage_submission(
        settings, dataset=config.dataset, contract_kind=config.contract, owner=config.owner,
        path=Path(config.path), dialect=CsvDialect(delimiter=config.delimiter),
    )  # fmt: skip


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=_transient)
def publish(settings: Settings, staged: StagedSubmission) -> IngestResult:
    return publish_submission(settings, settings.exchange_db(), staged)


def _summary(config: IngestConfig, report: ContractReport, counts: dict[str, int], outcome: str) -> str:
    header = " | ".join(counts)
    lines = [
        f"### {config.owner} → `{config.dataset}` ({Path(config.path).name})",
        "",
        f"| {header} |",
        "|" + "---:|" * len(counts),
        "| " + " | ".join(str(v) for v in counts.values()) + " |",
        "",
        outcome,
    ]
    if report.quarantined:
        lines += ["", f"First failing rows (of {len(report.quarantined)} failures):", ""]
        lines += ["| row | column | expectation | value |", "|---:|---|---|---|"]
        lines += [
            f"| {q.row_number} | {q.column} | {q.expectation} | `{q.value}` |"
            for q in report.quarantined[:FIRST_ROWS]
        ]
    return "\n".join(lines)


def publish_artifacts(
    config: IngestConfig, report: ContractReport, counts: dict[str, int], outcome: str
) -> None:
    """What finance and data teams review in the Prefect UI: the counts, and the quarantined rows."""
    create_markdown_artifact(
        _summary(config, report, counts, outcome),
        key=f"ingest-{config.dataset}",
        description="Ingest summary",
    )
    create_table_artifact(
        [
            {"row": q.row_number, "column": q.column, "expectation": q.expectation, "value": q.value}
            for q in report.quarantined[:QUARANTINE_ROWS]
        ],
        key=f"quarantine-{config.dataset}",
        description=f"Quarantined rows (first {QUARANTINE_ROWS}; every one is in the registry)",
    )


@flow(name="ingest", log_prints=True)
def ingest_flow(config: IngestConfig) -> IngestResult:
    settings = Settings.from_env().ensure_dirs()
    staged = stage(settings, config)
    try:
        result = publish(settings, staged)
    except NothingAccepted as refused:
        counts = {k: refused.context[k] for k in ("rows_received", "quarantined_rows", "duplicates")}
        publish_artifacts(config, staged.report, counts, f"**nothing accepted**: {refused}")
        raise
    finally:
        shutil.rmtree(staged.staging_dir, ignore_errors=True)
    counts = {
        "rows read": result.rows_received,
        "accepted": result.accepted,
        "quarantined": result.quarantined_rows,
        "duplicates refused": result.duplicates_refused,
    }
    assert result.version is not None  # publish raises NothingAccepted otherwise
    outcome = f"new version **v{result.version.version}**, Merkle root `{result.version.merkle_root}`"
    publish_artifacts(config, result.report, counts, outcome)
    return result


if __name__ == "__main__":
    import sys

    print(ingest_flow(IngestConfig(dataset=sys.argv[1], owner=sys.argv[2], path=sys.argv[3])))
