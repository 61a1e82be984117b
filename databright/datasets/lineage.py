"""Lineage: what changed between two versions, and fetching a version back with every digest checked.

* ``diff_versions(db, workspace, dataset, a, b)`` — records added and withdrawn from ``a`` to ``b``
  (in sequence order), per-owner changes, both Merkle roots and manifest digests. It reads the
  registry; the manifests in the workspace, where present, are checked against their digests.
* ``pull_version(settings, db, dataset, version)`` — DVC-pulls every folder of the version chain
  v1..v from the remote (a lost ``.dvc`` file is rewritten from the registry's md5, so a wiped
  workspace or a fresh machine works), then verifies, for each version of the chain: the manifest's
  sha256 against the registry, its fields against the registry (parent and parent manifest
  digest, schema, contract, counts, Merkle root), the sha256 of every file it lists, every record id
  **re-derived from the row values** (``canonical.record_ids``, not the stored column), the owners,
  the withdrawals and the near-duplicate groups, and the Merkle root over the ids left after
  withdrawals. Any mismatch raises ``IntegrityError`` naming the file.

  DVC holds a sealed version's delta and withdrawal file only as their sealed shards
  (``trust.sealing``), so after the DVC pull each shard is opened with its version's data key
  (the exchange's ``trust.keys.DataKeys``), its plaintext checked against the registry's digest
  and put back beside it — the shard workers will read is verified along with everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from databright.config import Settings
from databright.crypto import digest_file, merkle_root_hex
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema
from databright.datasets.registry import Registry
from databright.datasets.versions import (
    MANIFEST_FORMAT,
    RECORDS_FILE,
    WITHDRAWN_FILE,
    DatasetVersion,
    read_manifest,
)
from databright.db import ExchangeDB
from databright.errors import ConfigError, IntegrityError, StorageError
from databright.storage import dvc_versions

# --- diff -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerChange:
    owner: str
    records_a: int
    records_b: int
    added: int
    withdrawn: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "records_a": self.records_a,
            "records_b": self.records_b,
            "added": self.added,
            "withdrawn": self.withdrawn,
        }


@dataclass(frozen=True)
class VersionDiff:
    """From version ``a`` to version ``b`` of one dataset (either order)."""

    dataset: str
    a: int
    b: int
    record_count_a: int
    record_count_b: int
    merkle_root_a: str
    merkle_root_b: str
    manifest_digest_a: str
    manifest_digest_b: str
    added_ids: tuple[str, ...]  # in b, not in a; sequence order
    withdrawn_ids: tuple[str, ...]  # in a, not in b; sequence order
    owners: tuple[OwnerChange, ...]
    manifests_checked: bool  # both manifests were in the workspace and matched their digests

    @property
    def added(self) -> int:
        return len(self.added_ids)

    @property
    def withdrawn(self) -> int:
        return len(self.withdrawn_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "a": self.a,
            "b": self.b,
            "record_count_a": self.record_count_a,
            "record_count_b": self.record_count_b,
            "merkle_root_a": self.merkle_root_a,
            "merkle_root_b": self.merkle_root_b,
            "manifest_digest_a": self.manifest_digest_a,
            "manifest_digest_b": self.manifest_digest_b,
            "added": self.added,
            "withdrawn": self.withdrawn,
            "owners": [o.to_dict() for o in self.owners],
            "manifests_checked": self.manifests_checked,
            "added_ids": list(self.added_ids),
            "withdrawn_ids": list(self.withdrawn_ids),
        }

    def to_dataframe(self) -> pd.DataFrame:
        """One row per changed record: ``record_id``, ``change`` (added | withdrawn)."""
        return pd.DataFrame(
            {
                "record_id": [*self.added_ids, *self.withdrawn_ids],
                "change": ["added"] * self.added + ["withdrawn"] * self.withdrawn,
            }
        )

    def __repr__(self) -> str:
        return (
            f"VersionDiff({self.dataset} v{self.a} → v{self.b}: +{self.added} −{self.withdrawn}, "
            f"{self.record_count_a} → {self.record_count_b} records)"
        )


def _manifest_checked(workspace: Path, version: DatasetVersion) -> bool:
    if not (workspace / version.manifest_path).is_file():
        return False
    read_manifest(workspace, version)  # raises IntegrityError when the file differs
    return True


def diff_versions(db: ExchangeDB, workspace: Path, dataset: str, a: int, b: int) -> VersionDiff:
    """What changed from version ``a`` to version ``b`` (see the module docstring)."""
    registry = Registry(db)
    va, vb = registry.get_version(dataset, a), registry.get_version(dataset, b)
    owners_a, owners_b = registry.record_owners(dataset, a), registry.record_owners(dataset, b)
    added = tuple(rid for rid in owners_b if rid not in owners_a)
    withdrawn = tuple(rid for rid in owners_a if rid not in owners_b)
    changes = []
    for owner in sorted(set(va.owner_counts) | set(vb.owner_counts)):
        changes.append(
            OwnerChange(
                owner=owner,
                records_a=va.owner_counts.get(owner, 0),
                records_b=vb.owner_counts.get(owner, 0),
                added=sum(1 for rid in added if owners_b[rid] == owner),
                withdrawn=sum(1 for rid in withdrawn if owners_a[rid] == owner),
            )
        )
    checked = _manifest_checked(workspace, va) & _manifest_checked(workspace, vb)
    return VersionDiff(
        dataset=dataset,
        a=a,
        b=b,
        record_count_a=va.record_count,
        record_count_b=vb.record_count,
        merkle_root_a=va.merkle_root,
        merkle_root_b=vb.merkle_root,
        manifest_digest_a=va.manifest_digest,
        manifest_digest_b=vb.manifest_digest,
        added_ids=added,
        withdrawn_ids=withdrawn,
        owners=tuple(changes),
        manifests_checked=checked,
    )


# --- pull and verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedVersion:
    version: int
    manifest_digest: str
    merkle_root: str
    record_count: int
    added: int
    withdrawn: int
    files: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "manifest_digest": self.manifest_digest,
            "merkle_root": self.merkle_root,
            "record_count": self.record_count,
            "added": self.added,
            "withdrawn": self.withdrawn,
            "files": self.files,
        }


@dataclass(frozen=True)
class PullReport:
    """A version fetched from the remote with its whole chain, every digest re-derived and matched."""

    dataset: str
    version: int
    remote: str
    chain: tuple[VerifiedVersion, ...]
    files_verified: int
    bytes_verified: int
    shards_opened: int = 0  # sealed shards decrypted back to their plaintext, digests checked

    @property
    def merkle_root(self) -> str:
        return self.chain[-1].merkle_root

    @property
    def record_count(self) -> int:
        return self.chain[-1].record_count

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "remote": self.remote,
            "merkle_root": self.merkle_root,
            "record_count": self.record_count,
            "files_verified": self.files_verified,
            "bytes_verified": self.bytes_verified,
            "shards_opened": self.shards_opened,
            "chain": [v.to_dict() for v in self.chain],
        }

    def __repr__(self) -> str:
        return (
            f"PullReport({self.dataset} v{self.version} from {self.remote}: {len(self.chain)} folders, "
            f"{self.files_verified} files, {self.record_count} records verified)"
        )


def _mismatch(path: Path | str, what: str, found: Any, expected: Any) -> IntegrityError:
    return IntegrityError(
        f"{path}: {what} is {found!r}, expected {expected!r}; the version's files or manifest differ from "
        "what was registered — delete the folder and the DVC cache (.dvc/cache) and pull again, or "
        "restore the remote from a backup",
        file=str(path),
    )


def _schema_of(manifest: dict[str, Any], version: DatasetVersion, path: Path) -> Schema:
    try:
        schema = Schema.from_dict(manifest.get("schema"))
    except ConfigError as exc:
        raise IntegrityError(f"{path}: its schema is unusable ({exc})", file=str(path)) from exc
    if schema.digest != version.schema_digest:
        raise _mismatch(path, "the schema digest", schema.digest, version.schema_digest)
    return schema


class _ChainVerifier:
    """Walks v1..vn once, carrying the live ids forward, so each version costs its own files only."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.ids: dict[str, str] = {}  # live record id -> owner, in sequence order
        self.parent: DatasetVersion | None = None
        self.files = 0
        self.bytes = 0

    def _file(self, folder: Path, name: str, digest: str) -> Path:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing after the pull; the remote lacks it", file=str(path))
        found = digest_file(path)
        if found != digest:
            raise _mismatch(path, "the sha256", found, digest)
        self.files += 1
        self.bytes += path.stat().st_size
        return path

    def verify(self, version: DatasetVersion) -> VerifiedVersion:
        folder = self.workspace / version.folder
        manifest_path = self.workspace / version.manifest_path
        manifest = read_manifest(self.workspace, version)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise IntegrityError(
                f"{manifest_path} is a {manifest.get('format')!r} manifest; pull verifies "
                f"{MANIFEST_FORMAT} manifests, which name the schema and the parent's manifest digest — "
                "register the data again into a new dataset to get verifiable versions",
                file=str(manifest_path),
            )
        self.files += 1
        self.bytes += manifest_path.stat().st_size
        parent_digest = self.parent.manifest_digest if self.parent else None
        expected = {
            "dataset": version.dataset,
            "version": version.version,
            "parent": version.parent,
            "parent_manifest_digest": parent_digest,
            "contract_digest": version.contract_digest,
            "schema_digest": version.schema_digest,
        }
        for key, want in expected.items():
            if manifest.get(key) != want:
                raise _mismatch(manifest_path, key, manifest.get(key), want)
        schema = _schema_of(manifest, version, manifest_path)
        files = manifest.get("files")
        if not isinstance(files, dict) or RECORDS_FILE not in files:
            raise _mismatch(manifest_path, "files", files, f"a mapping naming {RECORDS_FILE}")
        paths = {name: self._file(folder, name, digest) for name, digest in sorted(files.items())}
        if files[RECORDS_FILE] != version.data_digests[-1]:
            raise _mismatch(paths[RECORDS_FILE], "the sha256", files[RECORDS_FILE], version.data_digests[-1])
        registered = dict(zip(version.withdrawn_paths, version.withdrawn_digests, strict=True))
        own = registered.get(f"{version.folder}/{WITHDRAWN_FILE}")
        if files.get(WITHDRAWN_FILE) != own:
            raise _mismatch(folder / WITHDRAWN_FILE, "the sha256", files.get(WITHDRAWN_FILE), own)

        added = self._added(paths[RECORDS_FILE], schema)
        withdrawn = self._withdrawn(paths.get(WITHDRAWN_FILE))
        for rid in withdrawn:
            del self.ids[rid]
        self.ids.update(added)
        self._check_totals(manifest, manifest_path, version, len(added), len(withdrawn))
        self.parent = version
        return VerifiedVersion(
            version.version,
            version.manifest_digest,
            version.merkle_root,
            len(self.ids),
            len(added),
            len(withdrawn),
            len(files) + 1,
        )

    def _added(self, path: Path, schema: Schema) -> dict[str, str]:
        frame = pq.read_table(path).to_pandas(types_mapper=pd.ArrowDtype)
        missing = [c for c in (*schema.names, "record_id", "owner") if c not in frame.columns]
        if missing:
            raise _mismatch(path, "the columns", list(frame.columns), [*schema.names, "record_id", "owner"])
        derived = record_ids(frame[list(schema.names)], schema)
        if len(set(derived)) != len(derived):
            raise _mismatch(path, "the number of distinct records", len(set(derived)), len(derived))
        stored = [str(v) for v in frame["record_id"].tolist()]
        for row, (have, want) in enumerate(zip(stored, derived, strict=True)):
            if have != want:
                raise _mismatch(path, f"row {row}'s record_id (its values hash to {want})", have, want)
            if have in self.ids:
                raise _mismatch(path, f"row {row}'s record_id", have, "an id not already in the dataset")
        return dict(zip(derived, (str(o) for o in frame["owner"].tolist()), strict=True))

    def _withdrawn(self, path: Path | None) -> list[str]:
        if path is None:
            return []
        ids = [str(v) for v in pq.read_table(path, columns=["record_id"]).column("record_id").to_pylist()]
        absent = [rid for rid in ids if rid not in self.ids]
        if absent:
            raise _mismatch(path, "a withdrawn id", absent[0], "an id of the parent version")
        return ids

    def _check_totals(
        self, manifest: dict[str, Any], path: Path, version: DatasetVersion, added: int, withdrawn: int
    ) -> None:
        ids = list(self.ids)
        root = merkle_root_hex([bytes.fromhex(i) for i in ids])
        owners: dict[str, int] = {}
        for owner in self.ids.values():
            owners[owner] = owners.get(owner, 0) + 1
        checks = [
            ("the Merkle root recomputed from the rows", root, version.merkle_root),
            ("the manifest's merkle_root", manifest.get("merkle_root"), version.merkle_root),
            ("the record count", len(ids), version.record_count),
            ("the manifest's record_count", manifest.get("record_count"), version.record_count),
            ("added_count", manifest.get("added_count"), added),
            ("withdrawn_count", manifest.get("withdrawn_count"), withdrawn),
            ("the owner counts", dict(sorted(owners.items())), manifest.get("owner_counts")),
            ("the registry's owner counts", dict(sorted(owners.items())), version.owner_counts),
        ]
        for what, found, want in checks:
            if found != want:
                raise _mismatch(path, what, found, want)
        members = [rid for group in manifest.get("near_duplicate_groups", []) for rid in group]
        strangers = [rid for rid in members if rid not in self.ids]
        if strangers:
            raise _mismatch(path, "a near-duplicate group member", strangers[0], "a record of this version")


def _unseal(settings: Settings, db: ExchangeDB, chain: list[DatasetVersion]) -> int:
    """Put back the plaintext of every sealed shard of ``chain`` (DVC never had it); return the count."""
    from databright.trust.keys import DataKeys
    from databright.trust.sealing import SEALED_SUFFIX, open_sealed_to, version_file_aad

    keys = DataKeys.from_settings(settings, db)
    opened = 0
    for version in chain:
        key = keys.find(version.dataset, version.version)
        if key is None:
            continue  # registered before versions were sealed: DVC holds its plaintext itself
        own = [(version.data_paths[-1], version.data_digests[-1])]
        own += [
            (rel, digest)
            for rel, digest in zip(version.withdrawn_paths, version.withdrawn_digests, strict=True)
            if rel == f"{version.folder}/{WITHDRAWN_FILE}"
        ]
        for rel, digest in own:
            plain = settings.workspace_dir / rel
            sealed = plain.with_name(plain.name + SEALED_SUFFIX)
            if not sealed.is_file():
                raise IntegrityError(
                    f"{sealed} is missing after the pull; the remote lacks it", file=str(sealed)
                )
            # Decrypted beside the target and renamed only once it matches: a bad shard replaces nothing.
            tmp = plain.with_name(f".{plain.name}.unsealed.tmp")
            result = open_sealed_to(
                sealed, tmp, key.key, version_file_aad(version.dataset, version.version, rel)
            )
            if result.plaintext_sha256 != digest:
                tmp.unlink(missing_ok=True)
                raise _mismatch(sealed, "the sha256 of its plaintext", result.plaintext_sha256, digest)
            tmp.replace(plain)
            opened += 1
    return opened


def _remote_name(settings: Settings) -> str:
    remote = settings.dvc_remote
    return str(remote) if isinstance(remote, Path) else remote.url


def pull_version(settings: Settings, db: ExchangeDB, dataset: str, version: int | None = None) -> PullReport:
    """Fetch ``dataset``'s ``version`` (the latest when None) and its chain, and verify all of it."""
    registry = Registry(db)
    target = registry.get_version(dataset, version)
    chain = [registry.get_version(dataset, v) for v in range(1, target.version + 1)]
    workspace = settings.workspace_dir
    dvc_versions.init_workspace(workspace, settings.dvc_remote)
    from databright.trust.sealing import keep_plaintext_out_of_dvc

    keep_plaintext_out_of_dvc(workspace)  # a fresh workspace's DVC must leave the unsealed plaintext be
    for v in chain:
        dvc_versions.ensure_tracked(workspace, v.folder, v.dvc_md5)
    try:
        dvc_versions.pull(workspace, [v.folder for v in chain])
    except StorageError as exc:
        raise StorageError(
            f"could not pull {dataset} v1..v{target.version} from {_remote_name(settings)}: {exc}",
            dataset=dataset,
            version=target.version,
        ) from exc
    shards = _unseal(settings, db, chain)
    verifier = _ChainVerifier(workspace)
    verified = tuple(verifier.verify(v) for v in chain)
    return PullReport(
        dataset=dataset,
        version=target.version,
        remote=_remote_name(settings),
        chain=verified,
        files_verified=verifier.files,
        bytes_verified=verifier.bytes,
        shards_opened=shards,
    )
