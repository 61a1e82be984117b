"""Dataset versions: append-only deltas on disk, bound together by a Merkle manifest.

A version never changes and never forgets: ``v(n) = v(n-1) + the records accepted in submission
n``. Each version has a folder ``<workspace>/datasets/<name>/v<n>/`` holding

* ``records.parquet`` — the delta: the schema columns, ``record_id`` and ``owner``, in registry
  sequence order;
* ``quarantine.parquet`` — the rows the contract refused in that submission (possibly none);
* ``contract_report.json`` — the ``ContractReport`` as canonical JSON (its sha256 is the report
  digest);
* ``manifest.json`` — canonical JSON naming the dataset, version, parent, contract and schema
  digests, the record count, owner counts, the digest of every file in the folder and of every
  delta v1..vn, and the Merkle root over **all** record ids of v1..vn in sequence order
  (``merkle_root_hex([bytes.fromhex(id) ...])``). Its sha256 is the version's manifest digest.

The folder is DVC-tracked and pushed to the remote; ``DatasetVersion`` is the typed handle the
registry returns and the trainer, worker and settlement pass along.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from databright.crypto import canonical_json, digest_file, merkle_root_hex, sha256_hex
from databright.datasets.contracts import Contract, Schema
from databright.datasets.validation import ContractReport
from databright.errors import IntegrityError, StorageError

MANIFEST_FORMAT = "databright.dataset-manifest/v1"
RECORDS_FILE = "records.parquet"
QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "contract_report.json"
MANIFEST_FILE = "manifest.json"
_ARROW = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype()}


def version_folder(dataset: str, version: int) -> str:
    """The version folder relative to the workspace, with ``/`` separators."""
    return f"datasets/{dataset}/v{version}"


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
            "manifest_digest": self.manifest_digest,
            "dvc_md5": self.dvc_md5,
        }

    def __repr__(self) -> str:
        return (
            f"DatasetVersion({self.dataset} v{self.version}, {self.record_count} records, "
            f"{len(self.owner_counts)} owners, root={self.merkle_root[:12]}…)"
        )


# --- writing a version folder -----------------------------------------------------------------


@dataclass(frozen=True)
class WrittenVersion:
    """What ``write_version_folder`` put on disk; becomes a registry row once DVC has it."""

    path: Path
    manifest: dict[str, Any]
    manifest_digest: str
    data_path: str
    data_digest: str


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


def write_version_folder(
    workspace: Path,
    *,
    dataset: str,
    version: int,
    parent: DatasetVersion | None,
    contract: Contract,
    records: pd.DataFrame,
    report: ContractReport,
    merkle_root: str,
    owner_counts: dict[str, int],
) -> WrittenVersion:
    """Write the four files of ``v<version>`` atomically (staging folder, then one rename)."""
    final = workspace / version_folder(dataset, version)
    if final.exists():
        raise StorageError(
            f"{final} already exists; a version folder is written once — remove the leftover folder "
            "if no registry row names it, then submit again"
        )
    staging = final.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        pq.write_table(records_table(records, contract.schema), staging / RECORDS_FILE)
        pq.write_table(quarantine_table(report), staging / QUARANTINE_FILE)
        (staging / REPORT_FILE).write_bytes(canonical_json(report.to_dict()))
        data_path = f"{version_folder(dataset, version)}/{RECORDS_FILE}"
        data_digest = digest_file(staging / RECORDS_FILE)
        deltas = (
            [
                {"version": i + 1, "path": p, "digest": d}
                for i, (p, d) in enumerate(zip(parent.data_paths, parent.data_digests, strict=True))
            ]
            if parent
            else []
        )
        deltas.append({"version": version, "path": data_path, "digest": data_digest})
        manifest = {
            "format": MANIFEST_FORMAT,
            "dataset": dataset,
            "version": version,
            "parent": parent.version if parent else None,
            "contract_kind": contract.kind,
            "contract_digest": contract.digest,
            "schema_digest": contract.schema.digest,
            "merkle_root": merkle_root,
            "record_count": (parent.record_count if parent else 0) + len(records),
            "owner_counts": dict(sorted(owner_counts.items())),
            "report_digest": report.digest,
            "files": {
                name: digest_file(staging / name) for name in (RECORDS_FILE, QUARANTINE_FILE, REPORT_FILE)
            },
            "deltas": deltas,
        }
        manifest_bytes = canonical_json(manifest)
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenVersion(final, manifest, sha256_hex(manifest_bytes), data_path, data_digest)


# --- reading a version back -------------------------------------------------------------------


def read_manifest(workspace_dir: Path, version: DatasetVersion) -> dict[str, Any]:
    """The version's manifest, checked against the digest the registry holds."""
    path = workspace_dir / version.manifest_path
    if not path.is_file():
        raise StorageError(
            f"{path} is missing; restore the version folder with "
            f"databright.storage.dvc_versions.pull(workspace, {version.folder!r})"
        )
    data = path.read_bytes()
    if sha256_hex(data) != version.manifest_digest:
        raise IntegrityError(
            f"{path} has digest {sha256_hex(data)[:16]}…, the registry says {version.manifest_digest[:16]}…; "
            "the folder was modified — pull it again from the DVC remote"
        )
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def release_files(workspace_dir: Path, version: DatasetVersion, *, verify: bool = True) -> tuple[Path, ...]:
    """Absolute paths of the delta Parquet files of v1..vn, for a worker; digests checked."""
    paths = []
    for rel, digest in zip(version.data_paths, version.data_digests, strict=True):
        path = (workspace_dir / rel).resolve()
        if not path.is_file():
            raise StorageError(
                f"{path} is missing; restore it with databright.storage.dvc_versions.pull(workspace, "
                f"{rel.rsplit('/', 1)[0]!r})"
            )
        if verify and digest_file(path) != digest:
            raise IntegrityError(
                f"{path} does not match its registered digest {digest[:16]}…; "
                "pull it again from the DVC remote"
            )
        paths.append(path)
    return tuple(paths)


def load_version_frame(workspace_dir: Path, version: DatasetVersion, *, verify: bool = True) -> pd.DataFrame:
    """All records of ``version`` (deltas v1..vn concatenated, sequence order), nullable dtypes.

    With ``verify`` the file digests, the record count and the Merkle root over ``record_id`` are
    checked against the registry, so a caller never trains on data that differs from the version.
    """
    tables = [pq.read_table(path) for path in release_files(workspace_dir, version, verify=verify)]
    table = pa.concat_tables(tables) if tables else pa.table({})
    frame = table.to_pandas(types_mapper=_NULLABLE.get)
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
                f"{version.merkle_root[:16]}…; pull the version again from the DVC remote"
            )
    return frame
