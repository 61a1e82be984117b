"""Dataset versions: append-only deltas on disk, bound together by a content-addressed manifest.

A version never changes and never forgets: ``v(n) = v(n-1) + records accepted − records withdrawn``.
Each version has a folder ``<workspace>/datasets/<name>/v<n>/`` holding

* ``records.parquet`` — the delta: the records this version adds (possibly none), with the schema
  columns, ``record_id`` and ``owner``, in registry sequence order;
* ``withdrawn.parquet`` — only when the version withdraws records: their ids (``record_id``), in
  sequence order. Withdrawn records disappear from this version on; earlier versions keep them;
* ``quarantine.parquet`` and ``contract_report.json`` — for a version made by a submission: the
  rows the contract refused and the ``ContractReport`` as canonical JSON (its sha256 is the report
  digest). A withdrawal checks no rows and has neither;
* ``manifest.json`` — canonical JSON (``MANIFEST_FORMAT``) naming the dataset, version, parent and
  the parent's manifest digest, contract kind and digest, the schema and its digest, the record
  count, records added and withdrawn here, owner counts, the digest of every file in the folder,
  every delta and withdrawal file of v1..vn, ``near_duplicate_groups`` (groups of record ids that
  valuation lets share one value), and the Merkle root over the version's record ids in sequence
  order after withdrawals (``merkle_root_hex([bytes.fromhex(id) ...])``).

The manifest is content-addressed: its sha256 is the version's identity, the registry stores it and
every reader checks it, and each manifest names its parent's, so a version pins its whole chain.

The folder is DVC-tracked and pushed to the remote; ``DatasetVersion`` is the typed handle the
registry returns and the trainer, worker and settlement pass along. ``release`` lists the delta
files and the withdrawal files (a reader drops withdrawn ids before checking the root).

Sealing. Publishing also writes ``records.parquet.sealed`` (and ``withdrawn.parquet.sealed``) into
the folder, encrypted under the version's data key (``trust.sealing``); DVC tracks and pushes
those, and ``.dvcignore`` keeps the plaintext out of DVC's cache and remote. Workers get only the
sealed shards; the plaintext files here are the exchange's own local copy, which the readers in
this module (and lineage, near-duplicates, the audit) use, and ``lineage.pull_version`` restores
by unsealing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from databright.crypto import canonical_json, digest_file, merkle_root_hex, sha256_hex
from databright.datasets.contracts import Contract, Schema
from databright.datasets.validation import ContractReport
from databright.errors import DatasetError, IntegrityError, StorageError

MANIFEST_FORMAT = "databright.dataset-manifest/v2"
RECORDS_FILE = "records.parquet"
WITHDRAWN_FILE = "withdrawn.parquet"
QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "contract_report.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "ingest.lock"
_RECORD_ID = re.compile(r"^[0-9a-f]{64}$")
_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype()}


def version_folder(dataset: str, version: int) -> str:
    """The version folder relative to the workspace, with ``/`` separators."""
    return f"datasets/{dataset}/v{version}"


@contextmanager
def version_lock(home: Path) -> Iterator[None]:
    """One writer of versions per home: ingest and withdrawal both take it.

    Version numbers, the dedup view and the DVC workspace are shared, so two writers must never
    prepare a version at the same time. A ``flock`` on ``<home>/ingest.lock`` is released by the
    kernel if the process dies, so a crash never leaves the home locked.
    """
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of a dataset, as the registry records it."""

    dataset: str
    version: int
    parent: int | None
    contract_kind: str
    contract_digest: str
    schema_digest: str
    merkle_root: str
    record_count: int
    owner_counts: dict[str, int] = field(hash=False)
    data_paths: tuple[str, ...]  # delta Parquet files of v1..vn, relative to the workspace
    data_digests: tuple[str, ...]
    manifest_digest: str
    dvc_md5: str
    withdrawn_paths: tuple[str, ...] = ()  # withdrawal files of v1..vn (only versions that have one)
    withdrawn_digests: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return version_folder(self.dataset, self.version)

    @property
    def manifest_path(self) -> str:
        return f"{self.folder}/{MANIFEST_FILE}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "parent": self.parent,
            "contract_kind": self.contract_kind,
            "contract_digest": self.contract_digest,
            "schema_digest": self.schema_digest,
            "merkle_root": self.merkle_root,
            "record_count": self.record_count,
            "owner_counts": dict(sorted(self.owner_counts.items())),
            "data_paths": list(self.data_paths),
            "data_digests": list(self.data_digests),
            "withdrawn_paths": list(self.withdrawn_paths),
            "withdrawn_digests": list(self.withdrawn_digests),
            "manifest_digest": self.manifest_digest,
            "dvc_md5": self.dvc_md5,
        }

    def __repr__(self) -> str:
        return (
            f"DatasetVersion({self.dataset} v{self.version}, {self.record_count} records, "
            f"{len(self.owner_counts)} owners, root={self.merkle_root[:12]}…)"
        )


@dataclass(frozen=True)
class Release:
    """The files that rebuild a version: the deltas v1..vn and the withdrawal files, in order.

    Records = the rows of ``data_files`` concatenated, minus every id listed in ``withdrawn_files``.
    """

    version: DatasetVersion
    data_files: tuple[Path, ...]
    withdrawn_files: tuple[Path, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.version.dataset,
            "version": self.version.version,
            "merkle_root": self.version.merkle_root,
            "record_count": self.version.record_count,
            "data_files": [str(p) for p in self.data_files],
            "withdrawn_files": [str(p) for p in self.withdrawn_files],
        }


# --- writing a version folder -----------------------------------------------------------------


@dataclass(frozen=True)
class WrittenVersion:
    """What ``write_version_folder`` put on disk; becomes a registry row once DVC has it."""

    path: Path
    manifest: dict[str, Any]
    manifest_digest: str
    data_path: str
    data_digest: str
    withdrawn_path: str | None = None
    withdrawn_digest: str | None = None


def records_table(records: pd.DataFrame, schema: Schema) -> pa.Table:
    """The delta as Arrow: schema columns typed by the contract, then ``record_id`` and ``owner``."""
    fields = [pa.field(c.name, _ARROW[c.dtype], nullable=c.nullable) for c in schema.columns]
    fields += [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("owner", pa.string(), nullable=False),
    ]
    arrow_schema = pa.schema(fields)
    frame = records[[*schema.names, "record_id", "owner"]].reset_index(drop=True)
    try:
        table = pa.Table.from_pandas(frame, schema=arrow_schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise IntegrityError(f"accepted records do not fit the contract's column types: {exc}") from exc
    return table.replace_schema_metadata(None)


def _write_records(path: Path, records: pd.DataFrame | Iterable[pd.DataFrame], schema: Schema) -> int:
    """Write the delta (one frame or a stream of frames) as one Parquet file; return its row count."""
    frames = [records] if isinstance(records, pd.DataFrame) else records
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for frame in frames:
            table = records_table(frame, schema)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:  # no frames at all: still a valid, empty delta
            pq.write_table(records_table(empty_records(schema), schema), path)
    finally:
        if writer is not None:
            writer.close()
    return rows


def empty_records(schema: Schema) -> pd.DataFrame:
    """A delta with no rows (a version that only withdraws), with the columns ``records_table`` wants."""
    return pd.DataFrame(
        {name: pd.Series([], dtype="object") for name in [*schema.names, "record_id", "owner"]}
    )


def withdrawn_table(ids: Sequence[str]) -> pa.Table:
    return pa.table({"record_id": pa.array(list(ids), pa.string())})


def quarantine_table(report: ContractReport) -> pa.Table:
    frame = report.to_dataframe()
    schema = pa.schema(
        [
            ("row_number", pa.int64()),
            ("column", pa.string()),
            ("expectation", pa.string()),
            ("value", pa.string()),
        ]
    )
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False).replace_schema_metadata(None)


def check_record_ids(ids: Sequence[str], what: str) -> list[str]:
    """Refuse anything that is not a 64-hex record id, naming the first offender and its position."""
    out = list(ids)
    for index, rid in enumerate(out):
        if not isinstance(rid, str) or not _RECORD_ID.match(rid):
            raise DatasetError(
                f"{what}[{index}] is {rid!r}, not a record id; record ids are 64 lowercase hex digits "
                "(sha256 of the canonical row) as listed by the registry",
                index=index,
                value=rid,
            )
    return out


def check_near_duplicate_groups(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Groups as the manifest stores them: each of two or more record ids, no id in two groups."""
    seen: dict[str, int] = {}
    out: list[list[str]] = []
    for number, group in enumerate(groups):
        if isinstance(group, str) or len(group) < 2:
            raise DatasetError(
                f"near_duplicate_groups[{number}] is {group!r}; a group lists two or more record ids",
                group=number,
            )
        members = check_record_ids(group, f"near_duplicate_groups[{number}]")
        for rid in members:
            if rid in seen:
                raise DatasetError(
                    f"record {rid[:16]}… is in near_duplicate_groups[{seen[rid]}] and [{number}]; groups are "
                    "connected components, so merge them into one",
                    record_id=rid,
                )
            seen[rid] = number
        out.append(members)
    return out


def write_version_folder(
    workspace: Path,
    *,
    dataset: str,
    version: int,
    parent: DatasetVersion | None,
    contract: Contract,
    records: pd.DataFrame | Iterable[pd.DataFrame],
    report: ContractReport | None,
    merkle_root: str,
    owner_counts: dict[str, int],
    near_duplicate_groups: Sequence[Sequence[str]] = (),
    withdrawn: Sequence[str] = (),
    contract_digest: str | None = None,
) -> WrittenVersion:
    """Write ``v<version>`` atomically (staging folder, then one rename); see the module docstring.

    The caller holds ``version_lock``: staging folders left in the dataset's folder by a killed
    writer are removed first.

    ``records`` are the records added (possibly none) — one frame, or frames in sequence order
    that are written one row group at a time so a large delta never sits in memory whole —
    ``withdrawn`` the ids removed, in sequence order; ``merkle_root`` and ``owner_counts``
    describe the resulting version. ``report`` is None
    for a version that checks no rows (a withdrawal), which also keeps its parent's
    ``contract_digest``.
    """
    final = workspace / version_folder(dataset, version)
    if final.exists():
        raise StorageError(
            f"{final} already exists; a version folder is written once — remove the leftover folder "
            "if no registry row names it, then submit again"
        )
    withdrawn_ids = check_record_ids(withdrawn, "withdrawn")
    groups = check_near_duplicate_groups(near_duplicate_groups)
    # Callers hold version_lock, so another writer's staging folder here is a killed writer's.
    for leftover in final.parent.glob(".staging-*") if final.parent.is_dir() else ():
        shutil.rmtree(leftover, ignore_errors=True)
    staging = final.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        folder = version_folder(dataset, version)
        added = _write_records(staging / RECORDS_FILE, records, contract.schema)
        names = [RECORDS_FILE]
        if report is not None:
            pq.write_table(quarantine_table(report), staging / QUARANTINE_FILE)
            (staging / REPORT_FILE).write_bytes(canonical_json(report.to_dict()))
            names += [QUARANTINE_FILE, REPORT_FILE]
        withdrawn_path = withdrawn_digest = None
        if withdrawn_ids:
            pq.write_table(withdrawn_table(withdrawn_ids), staging / WITHDRAWN_FILE)
            names.append(WITHDRAWN_FILE)
            withdrawn_path = f"{folder}/{WITHDRAWN_FILE}"
            withdrawn_digest = digest_file(staging / WITHDRAWN_FILE)
        data_path = f"{folder}/{RECORDS_FILE}"
        data_digest = digest_file(staging / RECORDS_FILE)
        files = {name: digest_file(staging / name) for name in sorted(names)}
        deltas = (
            [
                {"version": i + 1, "path": p, "digest": d}
                for i, (p, d) in enumerate(zip(parent.data_paths, parent.data_digests, strict=True))
            ]
            if parent
            else []
        )
        deltas.append({"version": version, "path": data_path, "digest": data_digest})
        withdrawals = (
            [
                {"path": p, "digest": d}
                for p, d in zip(parent.withdrawn_paths, parent.withdrawn_digests, strict=True)
            ]
            if parent
            else []
        )
        if withdrawn_path is not None and withdrawn_digest is not None:
            withdrawals.append({"path": withdrawn_path, "digest": withdrawn_digest})
        manifest = {
            "format": MANIFEST_FORMAT,
            "dataset": dataset,
            "version": version,
            "parent": parent.version if parent else None,
            "parent_manifest_digest": parent.manifest_digest if parent else None,
            "contract_kind": contract.kind,
            "contract_digest": contract_digest or contract.digest,
            "schema": contract.schema.to_dict(),
            "schema_digest": contract.schema.digest,
            "merkle_root": merkle_root,
            "record_count": (parent.record_count if parent else 0) + added - len(withdrawn_ids),
            "added_count": added,
            "withdrawn_count": len(withdrawn_ids),
            "owner_counts": dict(sorted(owner_counts.items())),
            "report_digest": report.digest if report is not None else None,
            "files": files,
            "deltas": deltas,
            "withdrawals": withdrawals,
            "near_duplicate_groups": groups,
        }
        manifest_bytes = canonical_json(manifest)
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenVersion(
        final,
        manifest,
        sha256_hex(manifest_bytes),
        data_path,
        data_digest,
        withdrawn_path,
        withdrawn_digest,
    )


# --- reading a version back -------------------------------------------------------------------


def read_manifest(workspace_dir: Path, version: DatasetVersion) -> dict[str, Any]:
    """The version's manifest, checked against the digest the registry holds."""
    path = workspace_dir / version.manifest_path
    if not path.is_file():
        raise StorageError(
            f"{path} is missing; restore the version folder with "
            f"databright.datasets.lineage.pull_version(settings, db, {version.dataset!r}, {version.version})"
        )
    data = path.read_bytes()
    if sha256_hex(data) != version.manifest_digest:
        raise IntegrityError(
            f"{path} has digest {sha256_hex(data)[:16]}…, the registry says {version.manifest_digest[:16]}…; "
            "the folder was modified — pull it again from the DVC remote",
            file=str(path),
        )
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def _checked(workspace_dir: Path, version: DatasetVersion, rel: str, digest: str, verify: bool) -> Path:
    path = (workspace_dir / rel).resolve()
    # DVC holds these files only sealed, so the way back is pull_version: it pulls and unseals them.
    again = f"databright.datasets.lineage.pull_version(settings, db, {version.dataset!r}, {version.version})"
    if not path.is_file():
        raise StorageError(f"{path} is missing; restore it with {again}")
    if verify and digest_file(path) != digest:
        raise IntegrityError(
            f"{path} does not match its registered digest {digest[:16]}…; restore it with {again}",
            file=str(path),
        )
    return path


def release_files(workspace_dir: Path, version: DatasetVersion, *, verify: bool = True) -> tuple[Path, ...]:
    """Absolute paths of the delta Parquet files of v1..vn, digests checked.

    These are the records ever added; a version with withdrawals holds fewer. A reader needs
    ``release`` (deltas and withdrawal files) to rebuild the version.
    """
    return tuple(
        _checked(workspace_dir, version, rel, digest, verify)
        for rel, digest in zip(version.data_paths, version.data_digests, strict=True)
    )


def release(workspace_dir: Path, version: DatasetVersion, *, verify: bool = True) -> Release:
    """The exchange's local plaintext of ``version``: deltas and withdrawal files, digests checked.

    Workers never get these: they get the sealed shards (``trust.sealing.version_shards``).
    """
    withdrawn = tuple(
        _checked(workspace_dir, version, rel, digest, verify)
        for rel, digest in zip(version.withdrawn_paths, version.withdrawn_digests, strict=True)
    )
    return Release(version, release_files(workspace_dir, version, verify=verify), withdrawn)


def read_withdrawn(path: Path) -> list[str]:
    """The record ids of one ``withdrawn.parquet``, in file order."""
    try:
        table = pq.read_table(path, columns=["record_id"])
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise IntegrityError(
            f"{path} is not a withdrawal file with a record_id column ({exc}); pull the version again",
            file=str(path),
        ) from exc
    return [str(v) for v in table.column("record_id").to_pylist()]


def load_version_frame(workspace_dir: Path, version: DatasetVersion, *, verify: bool = True) -> pd.DataFrame:
    """All records of ``version`` (deltas v1..vn concatenated, minus withdrawals), nullable dtypes.

    With ``verify`` the file digests, the record count and the Merkle root over ``record_id`` are
    checked against the registry, so a caller never trains on data that differs from the version.
    """
    files = release(workspace_dir, version, verify=verify)
    tables = [pq.read_table(path) for path in files.data_files]
    table = pa.concat_tables(tables) if tables else pa.table({})
    frame = table.to_pandas(types_mapper=_NULLABLE.get)
    withdrawn = {rid for path in files.withdrawn_files for rid in read_withdrawn(path)}
    if withdrawn:
        frame = frame[~frame["record_id"].isin(withdrawn)].reset_index(drop=True)
    if verify:
        if len(frame) != version.record_count:
            raise IntegrityError(
                f"{version!r}: files hold {len(frame)} records, the registry says {version.record_count}"
            )
        ids = frame["record_id"].tolist() if len(frame) else []
        root = merkle_root_hex([bytes.fromhex(i) for i in ids])
        if root != version.merkle_root:
            raise IntegrityError(
                f"{version!r}: Merkle root of the files is {root[:16]}…, the registry says "
                f"{version.merkle_root[:16]}…; pull the version again (lineage.pull_version)"
            )
    return frame
