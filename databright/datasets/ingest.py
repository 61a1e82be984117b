"""Registering a contributor's file: the library behind the ``ingest`` flow.

``register_file`` runs, in order::

    read (size cap) → contract (schema drift refused, bad rows quarantined) → canonical record ids
    → dedup (against everyone's records in the dataset, then within the file: first wins)
    → version folder v<n> (records, quarantine, report, Merkle manifest) → DVC add + push
    → ONE registry transaction (dataset if new, version, records, submission, quarantine)

Nothing is half-registered: if DVC or the registry fails, the version folder and its ``.dvc``
file are removed and no registry row exists. If no row survives (all quarantined or duplicates),
no version is made, the submission and its quarantine are still recorded, and
``NothingAccepted`` is raised with the counts. Ingests into one home are serialised by a file
lock, so two submissions can never claim the same version number.

A dataset keeps its contract kind; its schema may not change between versions (the suite may be
tightened — each version records the contract digest it was checked against).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from databright.config import Settings
from databright.crypto import digest_file, merkle_root_hex
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Contract, load_contract
from databright.datasets.formats import DEFAULT_MAX_BYTES, read_table
from databright.datasets.registry import NewVersion, Registry, Submission
from databright.datasets.validation import ContractReport, validate
from databright.datasets.versions import (
    MANIFEST_FILE,
    DatasetVersion,
    quarantine_table,
    version_folder,
    write_version_folder,
)
from databright.db import ExchangeDB
from databright.errors import DatasetError, NothingAccepted
from databright.storage import dvc_versions

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


@contextmanager
def _ingest_lock(settings: Settings) -> Iterator[None]:
    """One ingest at a time per home: version numbers and the DVC workspace are shared."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / "ingest.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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


def _dedup(ids: list[str], existing: set[str]) -> list[bool]:
    """Keep a row unless its id is already registered or appeared earlier in this file."""
    seen: set[str] = set(existing)
    keep = []
    for rid in ids:
        keep.append(rid not in seen)
        seen.add(rid)
    return keep


def register_file(
    settings: Settings,
    db: ExchangeDB,
    *,
    dataset: str,
    contract_kind: str,
    owner: str,
    path: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IngestResult:
    """Validate, deduplicate, version, push and register one file; see the module docstring."""
    check_dataset_name(dataset)
    check_owner(owner)
    path = Path(path)
    registry = Registry(db)
    contract = load_contract(settings.contracts_dir, contract_kind)
    _check_contract(registry, dataset, contract)

    frame = read_table(path, max_bytes=max_bytes)
    validated = validate(frame, contract)
    report = validated.report
    good = validated.good
    ids = record_ids(good, contract.schema)
    file_digest = digest_file(path)
    submission_id = f"sub-{uuid.uuid4().hex[:20]}"

    with _ingest_lock(settings):
        parent = _check_contract(registry, dataset, contract)
        keep = _dedup(ids, registry.existing_ids(dataset, ids))
        accepted = good[keep].copy()
        accepted["record_id"] = [rid for rid, k in zip(ids, keep, strict=True) if k]
        accepted["owner"] = owner
        n_accepted = len(accepted)
        duplicates = len(ids) - n_accepted
        version_number = (parent.version + 1) if parent else 1
        submission = Submission(
            submission_id=submission_id,
            dataset=dataset,
            owner=owner,
            file_name=path.name,
            file_digest=file_digest,
            rows_received=report.rows_received,
            accepted=n_accepted,
            quarantined=report.quarantined_rows,
            duplicates=duplicates,
            version=version_number if n_accepted else None,
            report_digest=report.digest,
            created_at=dt.datetime.now(dt.UTC),
        )
        if n_accepted == 0:
            registry.commit_submission(
                submission,
                contract_kind=contract.kind,
                contract_digest=contract.digest,
                quarantine=quarantine_table(report),
            )
            raise NothingAccepted(
                f"{path.name}: no row of {report.rows_received} was accepted into {dataset!r} "
                f"({report.quarantined_rows} quarantined, {duplicates} duplicates of registered records); "
                f"see submission {submission_id}'s quarantine, fix the rows and submit again",
                submission_id=submission_id,
                report=report,
                rows_received=report.rows_received,
                quarantined_rows=report.quarantined_rows,
                duplicates=duplicates,
            )
        prior_ids = registry.version_record_ids(dataset, parent.version) if parent else []
        new_ids = accepted["record_id"].tolist()
        merkle = merkle_root_hex([bytes.fromhex(i) for i in [*prior_ids, *new_ids]])
        owner_counts = dict(parent.owner_counts) if parent else {}
        owner_counts[owner] = owner_counts.get(owner, 0) + n_accepted
        first_seq = registry.next_seq(dataset)

        workspace = settings.workspace_dir
        dvc_versions.init_workspace(workspace, settings.dvc_remote_dir)
        folder = version_folder(dataset, version_number)
        # A folder for a version the registry does not know is the leftover of a crashed ingest.
        dvc_versions.untrack(workspace, folder)
        written = write_version_folder(
            workspace,
            dataset=dataset,
            version=version_number,
            parent=parent,
            contract=contract,
            records=accepted,
            report=report,
            merkle_root=merkle,
            owner_counts=owner_counts,
        )
        try:
            md5 = dvc_versions.track_and_push(workspace, folder)
            registry.commit_submission(
                submission,
                contract_kind=contract.kind,
                contract_digest=contract.digest,
                quarantine=quarantine_table(report),
                new_version=NewVersion(
                    version=version_number,
                    parent=parent.version if parent else None,
                    contract_digest=contract.digest,
                    schema_digest=contract.schema.digest,
                    merkle_root=merkle,
                    record_count=(parent.record_count if parent else 0) + n_accepted,
                    manifest_key=f"{folder}/{MANIFEST_FILE}",
                    manifest_digest=written.manifest_digest,
                    data_path=written.data_path,
                    data_digest=written.data_digest,
                    dvc_md5=md5,
                ),
                records=pa.table(
                    {
                        "record_id": pa.array(new_ids, pa.string()),
                        "owner": pa.array([owner] * n_accepted, pa.string()),
                        "seq": pa.array(range(first_seq, first_seq + n_accepted), pa.int64()),
                    }
                ),
            )
        except BaseException:
            dvc_versions.untrack(workspace, folder)
            raise

    version = registry.get_version(dataset, version_number)
    return IngestResult(
        submission_id=submission_id,
        dataset=dataset,
        owner=owner,
        version=version,
        report=report,
        rows_received=report.rows_received,
        accepted=n_accepted,
        quarantined_rows=report.quarantined_rows,
        duplicates_refused=duplicates,
    )
