"""Registering a contributor's file: the library behind the ``ingest`` flow, in two phases.

**Stage** (``stage_submission``: pure work on the contributor's file, no registry writes)::

    open (caps, archives, dialect) → schema drift refused whole → chunk by chunk: contract
    (bad rows quarantined) → canonical record ids → duplicates within the file dropped (first
    occurrence wins) → accepted rows appended to ``<home>/staging/<submission>/accepted.parquet``

**Publish** (``publish_submission``: under the version lock, safe to retry)::

    duplicates of the dataset's registered records refused (credit stays with the first
    registrant, by registry sequence) → near-duplicate groups over the whole version → version
    folder v<n> (delta, quarantine, report, Merkle manifest) → a fresh data key for v<n> and the
    delta sealed beside itself (``records.parquet.sealed``, the shard workers read) → DVC add +
    push (the sealed shard, not the plaintext delta: ``.dvcignore``) → ONE registry transaction
    (dataset if new, version, records, submission, quarantine)

Memory stays bounded by one chunk while staging; the accepted rows wait on disk, and publishing
streams them into the version's delta. Nothing is half-registered: a failure before the registry
commit leaves no version folder, no ``.dvc`` file and no registry row, and a crash at any step
leaves either no new version or a complete one (a data key made for a version that never
committed is replaced when that version number is next published: ``trust.keys.DataKeys.fresh``).
A registration killed outright (no chance to clean up) leaves its staging folder behind; the next
``stage_submission`` removes it (``staging.sweep_stale``). If no row survives, no version is
made, the submission and its quarantine are still recorded, and ``NothingAccepted`` is raised
with the counts. For every submission ``rows_received = accepted + quarantined_rows +
duplicates_refused``.

Plaintext at rest: the delta stays in the local workspace beside its sealed copy, for the
exchange's own readers (dedup, near-duplicates, ``load_version_frame``, lineage, the provenance
audit); the DVC cache and remote hold it only sealed, and workers only ever get the sealed shard.
The version's ``quarantine.parquet`` (the refused cells) is not sealed and is pushed as it is.

A dataset keeps its contract kind; its schema may not change between versions (the suite may be
tightened — each version records the contract digest it was checked against).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from databright.config import Settings
from databright.crypto import merkle_root_digests
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Contract, check_columns, load_contract
from databright.datasets.formats import CsvDialect, ReadLimits, open_table
from databright.datasets.near_duplicates import NearDuplicateFinder
from databright.datasets.registry import NewVersion, Registry, Submission
from databright.datasets.staging import new_staging_dir, sweep_stale
from databright.datasets.validation import ContractReport, Validator
from databright.datasets.versions import (
    MANIFEST_FILE,
    DatasetVersion,
    load_version_frame,
    quarantine_table,
    version_folder,
    version_lock,
    write_version_folder,
)
from databright.db import ExchangeDB
from databright.errors import DatasetError, NothingAccepted
from databright.provenance.record import record_version
from databright.storage import dvc_versions

ACCEPTED_FILE = "accepted.parquet"


def checkpoint(step: str) -> None:
    """Called between the steps of a publish; tests replace it to crash the process right there."""


DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
OWNER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise DatasetError(
            f"dataset name {name!r} is not allowed: use lowercase letters, digits and '-', starting with a "
            "letter or digit, at most 63 characters (e.g. 'credit-risk')",
            dataset=name,
        )
    return name


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not OWNER_ID.match(owner):
        raise DatasetError(
            f"owner id {owner!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-' (e.g. 'alice')",
            owner=owner,
        )
    return owner


@dataclass(frozen=True)
class IngestResult:
    submission_id: str
    dataset: str
    owner: str
    version: DatasetVersion | None
    report: ContractReport
    rows_received: int
    accepted: int
    quarantined_rows: int  # distinct rows
    duplicates_refused: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "submission_id": self.submission_id,
            "dataset": self.dataset,
            "owner": self.owner,
            "version": None if self.version is None else self.version.to_dict(),
            "report_digest": self.report.digest,
            "rows_received": self.rows_received,
            "accepted": self.accepted,
            "quarantined_rows": self.quarantined_rows,
            "duplicates_refused": self.duplicates_refused,
        }

    def __repr__(self) -> str:
        where = f"v{self.version.version}" if self.version else "no version"
        return (
            f"IngestResult({self.dataset} {where} by {self.owner}: "
            f"{self.accepted}/{self.rows_received} accepted, "
            f"{self.quarantined_rows} quarantined, {self.duplicates_refused} duplicates)"
        )


def _check_contract(registry: Registry, dataset: str, contract: Contract) -> DatasetVersion | None:
    registered = registry.dataset_contract(dataset)
    if registered is None:
        return None
    kind, _ = registered
    if kind != contract.kind:
        raise DatasetError(
            f"dataset {dataset!r} was registered with contract {kind}, not {contract.kind}; submit with "
            f"contract {kind} or choose a new dataset name",
            dataset=dataset,
            registered=kind,
            requested=contract.kind,
        )
    latest = registry.latest_version(dataset)
    if latest is not None and latest.schema_digest != contract.schema.digest:
        raise DatasetError(
            f"contract {kind}'s schema changed since {dataset!r} v{latest.version} (schema digest "
            f"{latest.schema_digest[:12]}… now {contract.schema.digest[:12]}…); restore the schema or "
            "register the data as a new dataset",
            dataset=dataset,
        )
    return latest


@dataclass(frozen=True)
class StagedSubmission:
    """A file read, checked and hashed, waiting in the staging folder to be published."""

    submission_id: str
    dataset: str
    owner: str
    contract_kind: str
    display_name: str
    input_digest: str
    report: ContractReport
    staging_dir: Path
    record_ids: tuple[str, ...]  # of the rows in accepted.parquet, in file order
    duplicates_in_file: int

    @property
    def accepted_path(self) -> Path:
        return self.staging_dir / ACCEPTED_FILE


def _staging_root(settings: Settings) -> Path:
    return settings.home / "staging"


def stage_submission(
    settings: Settings,
    *,
    dataset: str,
    contract_kind: str,
    owner: str,
    path: Path,
    dialect: CsvDialect | None = None,
    limits: ReadLimits | None = None,
    display_name: str | None = None,
) -> StagedSubmission:
    """Read, validate and hash ``path`` chunk by chunk into a private staging folder."""
    check_dataset_name(dataset)
    check_owner(owner)
    contract = load_contract(settings.contracts_dir, contract_kind)
    submission_id = f"sub-{uuid.uuid4().hex[:20]}"
    sweep_stale(_staging_root(settings))  # what registrations killed mid-way left behind
    staging = new_staging_dir(_staging_root(settings), submission_id)
    try:
        with open_table(
            Path(path),
            limits=limits or ReadLimits(),
            dialect=dialect or CsvDialect(),
            display_name=display_name,
        ) as source:
            check_columns(list(source.columns), contract.schema, contract.kind)
            validator = Validator(contract)
            reports: list[ContractReport] = []
            seen: set[str] = set()
            kept_ids: list[str] = []
            duplicates = 0
            writer: pq.ParquetWriter | None = None
            try:
                for chunk in source.chunks():
                    checked = validator.validate(chunk.frame, chunk.first_row_number)
                    reports.append(checked.report)
                    ids = record_ids(checked.good, contract.schema)
                    keep = []
                    for rid in ids:
                        keep.append(rid not in seen)
                        seen.add(rid)
                    duplicates += keep.count(False)
                    accepted = checked.good[keep].copy()
                    accepted["record_id"] = [rid for rid, k in zip(ids, keep, strict=True) if k]
                    kept_ids += accepted["record_id"].tolist()
                    table = pa.Table.from_pandas(accepted, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(staging / ACCEPTED_FILE, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
            if not reports:
                raise DatasetError(
                    f"{source.display_name} has no data rows; send a file with a header and at least one row",
                    dataset=dataset,
                )
            return StagedSubmission(
                submission_id=submission_id, dataset=dataset, owner=owner, contract_kind=contract.kind,
                display_name=source.display_name, input_digest=source.input_digest,
                report=ContractReport.merge(reports), staging_dir=staging, record_ids=tuple(kept_ids),
                duplicates_in_file=duplicates,
            )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _accepted_frames(staged: StagedSubmission, keep: list[bool], owner: str) -> Iterator[pd.DataFrame]:
    """The staged rows that survived dedup, a row group at a time, with their owner."""
    if not staged.accepted_path.exists():
        return
    offset = 0
    for batch in pq.ParquetFile(staged.accepted_path).iter_batches():
        frame = batch.to_pandas()
        mask = keep[offset : offset + len(frame)]
        offset += len(frame)
        frame = frame[mask]
        if len(frame):
            frame["owner"] = owner
            yield frame


def publish_submission(settings: Settings, db: ExchangeDB, staged: StagedSubmission) -> IngestResult:
    """Dedup against the dataset, write and push the version, commit it; then drop the staging folder."""
    registry = Registry(db)
    contract = load_contract(settings.contracts_dir, staged.contract_kind)
    report = staged.report
    with version_lock(settings.home):
        parent = _check_contract(registry, staged.dataset, contract)
        ids = list(staged.record_ids)
        registered = registry.existing_ids(staged.dataset, ids)
        keep = [rid not in registered for rid in ids]
        new_ids = [rid for rid, k in zip(ids, keep, strict=True) if k]
        duplicates = staged.duplicates_in_file + len(ids) - len(new_ids)
        version_number = (parent.version + 1) if parent else 1
        submission = Submission(
            submission_id=staged.submission_id, dataset=staged.dataset, owner=staged.owner,
            file_name=staged.display_name, file_digest=staged.input_digest,
            rows_received=report.rows_received, accepted=len(new_ids), quarantined=report.quarantined_rows,
            duplicates=duplicates, version=version_number if new_ids else None, report_digest=report.digest,
            created_at=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        if not new_ids:
            registry.commit_submission(
                submission, contract_kind=contract.kind, contract_digest=contract.digest,
                quarantine=quarantine_table(report),
            )  # fmt: skip
            shutil.rmtree(staged.staging_dir, ignore_errors=True)
            raise NothingAccepted(
                f"{staged.display_name}: no row of {report.rows_received} was accepted "
                f"into {staged.dataset!r} "
                f"({report.quarantined_rows} quarantined, {duplicates} duplicates of registered records or "
                f"of earlier rows in the file); see submission {staged.submission_id}'s quarantine, fix the "
                "rows and submit again",
                submission_id=staged.submission_id, report=report, rows_received=report.rows_received,
                quarantined_rows=report.quarantined_rows, duplicates=duplicates,
            )  # fmt: skip
        checkpoint("deduplicated")
        prior_ids = registry.version_record_ids(staged.dataset, parent.version) if parent else []
        # Record ids come from canonical.record_ids and the registry: always 64 hex digits.
        merkle = merkle_root_digests(bytes.fromhex("".join([*prior_ids, *new_ids]))).hex()
        owner_counts = dict(parent.owner_counts) if parent else {}
        owner_counts[staged.owner] = owner_counts.get(staged.owner, 0) + len(new_ids)
        groups = _near_duplicate_groups(settings, contract, parent, prior_ids, new_ids, staged, keep)
        first_seq = registry.next_seq(staged.dataset)

        workspace = settings.workspace_dir
        dvc_versions.init_workspace(workspace, settings.dvc_remote)
        folder = version_folder(staged.dataset, version_number)
        # A folder for a version the registry does not know is the leftover of a crashed ingest.
        dvc_versions.untrack(workspace, folder)
        try:
            written = write_version_folder(
                workspace, dataset=staged.dataset, version=version_number, parent=parent, contract=contract,
                records=_accepted_frames(staged, keep, staged.owner), report=report, merkle_root=merkle,
                owner_counts=owner_counts, near_duplicate_groups=groups,
            )  # fmt: skip
            checkpoint("version-written")
            from databright.trust.keys import seal_new_version  # the trust package loads on first publish

            seal_new_version(
                settings, db, staged.dataset, version_number, {written.data_path: written.data_digest}
            )
            checkpoint("sealed")
            md5 = dvc_versions.track_and_push(workspace, folder)
            checkpoint("pushed")
            registry.commit_submission(
                submission, contract_kind=contract.kind, contract_digest=contract.digest,
                quarantine=quarantine_table(report),
                new_version=NewVersion(
                    version=version_number, parent=parent.version if parent else None,
                    contract_digest=contract.digest, schema_digest=contract.schema.digest, merkle_root=merkle,
                    record_count=(parent.record_count if parent else 0) + len(new_ids),
                    manifest_key=f"{folder}/{MANIFEST_FILE}", manifest_digest=written.manifest_digest,
                    data_path=written.data_path, data_digest=written.data_digest, dvc_md5=md5,
                ),
                records=pa.table({
                    "record_id": pa.array(new_ids, pa.string()),
                    "owner": pa.array([staged.owner] * len(new_ids), pa.string()),
                    "seq": pa.array(range(first_seq, first_seq + len(new_ids)), pa.int64()),
                }),
            )  # fmt: skip
        except BaseException:
            dvc_versions.untrack(workspace, folder)
            raise
        record_version(settings, db, staged.dataset, version_number)  # outside the try: the version stands
        checkpoint("committed")
    shutil.rmtree(staged.staging_dir, ignore_errors=True)
    return IngestResult(
        submission_id=staged.submission_id, dataset=staged.dataset, owner=staged.owner,
        version=registry.get_version(staged.dataset, version_number), report=report,
        rows_received=report.rows_received, accepted=len(new_ids), quarantined_rows=report.quarantined_rows,
        duplicates_refused=duplicates,
    )  # fmt: skip


def _near_duplicate_groups(
    settings: Settings,
    contract: Contract,
    parent: DatasetVersion | None,
    prior_ids: list[str],
    new_ids: list[str],
    staged: StagedSubmission,
    keep: list[bool],
) -> tuple[tuple[str, ...], ...]:
    """Near-duplicate groups over the whole new version (parent records, then the new ones)."""
    columns = list(contract.schema.names)
    frames = [load_version_frame(settings.workspace_dir, parent)[columns]] if parent else []
    frames += [f[columns] for f in _accepted_frames(staged, keep, staged.owner)]
    frame = pd.concat(frames, ignore_index=True)
    return NearDuplicateFinder(contract.schema).groups([*prior_ids, *new_ids], frame)


def register_file(
    settings: Settings,
    db: ExchangeDB,
    *,
    dataset: str,
    contract_kind: str,
    owner: str,
    path: Path,
    dialect: CsvDialect | None = None,
    limits: ReadLimits | None = None,
    display_name: str | None = None,
) -> IngestResult:
    """Stage and publish one file (see the module docstring); the staging folder never outlives it."""
    staged = stage_submission(
        settings, dataset=dataset, contract_kind=contract_kind, owner=owner, path=path, dialect=dialect,
        limits=limits, display_name=display_name,
    )  # fmt: skip
    try:
        return publish_submission(settings, db, staged)
    finally:
        shutil.rmtree(staged.staging_dir, ignore_errors=True)
