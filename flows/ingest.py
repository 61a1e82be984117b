"""The ``ingest`` flow: a contributor registers a CSV or Parquet file into a dataset."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from databright.config import Settings
from databright.datasets import IngestResult, register_file


class IngestConfig(BaseModel):
    dataset: str = Field(
        description="Dataset to add to (created on first use)", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$"
    )
    owner: str = Field(
        description="Contributor id that will own the accepted records", min_length=1, max_length=64
    )
    path: str = Field(description="CSV or Parquet file to register (readable by the flow's process)")
    contract: str = Field("tabular-v1", description="Data contract from data_contracts/ the file must meet")


@task(cache_policy=NO_CACHE)
def register(settings: Settings, config: IngestConfig) -> IngestResult:
    # No retries: a refused file is the contributor's to fix, and a failed registration leaves nothing.
    return register_file(
        settings,
        settings.exchange_db(),
        dataset=config.dataset,
        contract_kind=config.contract,
        owner=config.owner,
        path=Path(config.path),
    )


@flow(name="ingest", log_prints=True)
def ingest_flow(config: IngestConfig) -> IngestResult:
    settings = Settings.from_env().ensure_dirs()
    result = register(settings, config)
    summary = (
        f"### {config.owner} → `{config.dataset}`\n\n"
        f"received {result.rows_received}, accepted {result.accepted}, quarantined "
        f"{result.quarantined_rows}, duplicates refused {result.duplicates_refused}\n\n"
        + (
            f"new version **v{result.version.version}**, Merkle root `{result.version.merkle_root}`"
            if result.version
            else "no new version"
        )
    )
    create_markdown_artifact(summary, key=f"ingest-{config.dataset}", description="Ingest summary")
    if result.report.quarantined:
        create_table_artifact(
            [
                {"row": q.row_number, "column": q.column, "expectation": q.expectation, "value": q.value}
                for q in result.report.quarantined
            ],
            key=f"quarantine-{config.dataset}",
            description="Rows quarantined by the data contract",
        )
    return result


if __name__ == "__main__":
    import sys

    print(ingest_flow(IngestConfig(dataset=sys.argv[1], owner=sys.argv[2], path=sys.argv[3])))
