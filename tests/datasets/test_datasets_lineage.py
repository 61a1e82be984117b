"""Lineage: diffs between versions, and pulling a version back from the DVC remote with every digest
re-derived — record ids from the row values, not the stored column."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from databright.config import Settings
from databright.crypto import canonical_json, digest_file, merkle_root_hex, sha256_hex
from databright.datasets import Contract, DatasetVersion, Registry, record_ids, register_file
from databright.datasets.lineage import diff_versions, pull_version
from databright.datasets.shares import withdraw_records
from databright.datasets.versions import MANIFEST_FILE, RECORDS_FILE
from databright.db import ExchangeDB
from databright.errors import IntegrityError, StorageError
from databright.storage import dvc_versions
from databright.trust.keys import DataKeys
from databright.trust.sealing import SEALED_SUFFIX, seal_version_files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DatasetVersion]]:
    """Once per module: v1: 6 of alice; v2: 4 of bob; v3: two of alice's withdrawn; v4: 3 of carol."""
    root = tmp_path_factory.mktemp("lineage")
    home = Settings(home=root / "home", period="2026-11").ensure_dirs()
    db = ExchangeDB(home.db_path)
    rng = np.random.default_rng(7)

    def add(owner: str, n: int) -> DatasetVersion:
        result = register_file(
            home,
            db,
            dataset="credit",
            contract_kind="tabular-v1",
            owner=owner,
            path=write_rows(root, owner, n, rng),
        )
        assert result.version is not None
        return result.version

    v1, v2 = add("alice", 6), add("bob", 4)
    alice = [rid for rid, o in Registry(db).record_owners("credit", 2).items() if o == "alice"]
    v3 = withdraw_records(home, db, dataset="credit", owner="alice", record_ids=alice[1:3]).version
    return home.home, [v1, v2, v3, add("carol", 3)]


def write_rows(folder: Path, name: str, n: int, rng: np.random.Generator) -> Path:
    """A tabular-v1 CSV of ``n`` random valid rows."""
    x = rng.normal(0.0, 5.0, size=(n, 8)).round(4)
    lines = [",".join([*(f"f{i}" for i in range(8)), "label"])]
    lines += [
        ",".join([*(f"{v:.4f}" for v in row), str(int(y))])
        for row, y in zip(x, rng.integers(0, 2, n), strict=True)
    ]
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def settings(built: tuple[Path, list[DatasetVersion]], tmp_path: Path) -> Settings:
    """A private copy of the built home (tests corrupt and wipe it), its DVC remote pointed at itself."""
    home = tmp_path / "home"
    shutil.copytree(built[0], home, symlinks=True)
    copy = Settings(home=home, period="2026-11")
    dvc_versions.init_workspace(copy.workspace_dir, copy.dvc_remote)
    return copy


@pytest.fixture
def chain(built: tuple[Path, list[DatasetVersion]]) -> list[DatasetVersion]:
    return built[1]


def _wipe(workspace: Path, *, dvc_files: bool) -> None:
    """Lose the version folders and DVC's cache (and optionally the .dvc files): only the remote is left."""
    for path in (workspace / "datasets" / "credit").iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif dvc_files:
            path.unlink()
    shutil.rmtree(workspace / ".dvc" / "cache", ignore_errors=True)


def test_diff_names_added_and_withdrawn_records_per_owner(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB
) -> None:
    registry = Registry(file_db)
    owners = {v: registry.record_owners("credit", v) for v in (1, 2, 3, 4)}
    diff = diff_versions(file_db, settings.workspace_dir, "credit", 2, 4)
    expected_added = [rid for rid in owners[4] if rid not in owners[2]]
    expected_gone = [rid for rid in owners[2] if rid not in owners[4]]
    assert list(diff.added_ids) == expected_added and len(expected_added) == 3
    assert list(diff.withdrawn_ids) == expected_gone and len(expected_gone) == 2
    assert {o.owner: (o.records_a, o.records_b, o.added, o.withdrawn) for o in diff.owners} == {
        "alice": (6, 4, 0, 2),
        "bob": (4, 4, 0, 0),
        "carol": (0, 3, 3, 0),
    }
    assert (diff.merkle_root_a, diff.merkle_root_b) == (chain[1].merkle_root, chain[3].merkle_root)
    assert (diff.manifest_digest_a, diff.manifest_digest_b) == (
        chain[1].manifest_digest,
        chain[3].manifest_digest,
    )
    assert (diff.record_count_a, diff.record_count_b, diff.manifests_checked) == (10, 11, True)
    assert (
        diff.to_dict()["added"] == 3
        and diff.to_dataframe()["change"].tolist() == ["added"] * 3 + ["withdrawn"] * 2
    )
    backwards = diff_versions(file_db, settings.workspace_dir, "credit", 4, 2)
    assert (backwards.added_ids, backwards.withdrawn_ids) == (diff.withdrawn_ids, diff.added_ids)

    # A manifest that differs from its registered digest is named; a missing one is just not checked.
    manifest = settings.workspace_dir / chain[3].manifest_path
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes().replace(b'"version":4', b'"version":5'))
    with pytest.raises(IntegrityError, match=r"v4/manifest\.json has digest"):
        diff_versions(file_db, settings.workspace_dir, "credit", 2, 4)
    manifest.unlink()
    assert not diff_versions(file_db, settings.workspace_dir, "credit", 2, 4).manifests_checked


def _folder_files(workspace: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file inside the version folders (not the .dvc files)."""
    base = workspace / "datasets"
    return {str(p.relative_to(base)): digest_file(p) for p in base.glob("*/v*/*") if p.is_file()}


def test_pull_restores_a_wiped_workspace_and_verifies_every_digest(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB, tabular: Contract
) -> None:
    workspace = settings.workspace_dir
    before = _folder_files(workspace)
    _wipe(workspace, dvc_files=True)
    report = pull_version(settings, file_db, "credit", 3)
    assert [v.version for v in report.chain] == [1, 2, 3]
    assert [(v.added, v.withdrawn, v.record_count) for v in report.chain] == [
        (6, 0, 6),
        (4, 0, 10),
        (0, 2, 8),
    ]
    assert report.merkle_root == chain[2].merkle_root and report.record_count == 8
    # v1 and v2: records, quarantine, report, manifest; v3: records, withdrawn, manifest.
    assert report.files_verified == 4 + 4 + 3
    assert report.remote == str(settings.dvc_remote_dir)
    assert _folder_files(workspace) == {k: v for k, v in before.items() if not k.startswith("credit/v4/")}
    # The root, independently: ids hashed from the restored rows, minus the withdrawn ids, in order.
    ids = []
    for v in (1, 2, 3):
        frame = pq.read_table(workspace / f"datasets/credit/v{v}" / RECORDS_FILE).to_pandas()
        ids += record_ids(frame, tabular.schema)
    gone = set(pq.read_table(workspace / "datasets/credit/v3/withdrawn.parquet")["record_id"].to_pylist())
    assert merkle_root_hex([bytes.fromhex(i) for i in ids if i not in gone]) == report.merkle_root
    assert json.loads(json.dumps(report.to_dict()))["chain"][2]["withdrawn"] == 2

    latest = pull_version(settings, file_db, "credit")  # the latest; v1..v3 are already in place
    assert latest.version == 4 and latest.record_count == 11


def test_a_corrupted_remote_object_is_named(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB
) -> None:
    # The remote holds v2's delta only as its sealed shard: corrupt that, and unsealing names it.
    path = settings.workspace_dir / (chain[1].data_paths[1] + SEALED_SUFFIX)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    remote_object = settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]
    data = bytearray(remote_object.read_bytes())
    data[len(data) // 2] ^= 0xFF
    remote_object.chmod(0o644)
    remote_object.write_bytes(bytes(data))
    _wipe(settings.workspace_dir, dvc_files=False)
    with pytest.raises(
        IntegrityError, match=r"credit/v2/records\.parquet\.sealed: chunk 0 .* fails authentication"
    ):
        pull_version(settings, file_db, "credit", 2)
    assert not (settings.workspace_dir / chain[1].data_paths[1]).exists()  # nothing half-restored


def test_the_remote_holds_no_plaintext_and_pull_unseals_it(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB
) -> None:
    workspace = settings.workspace_dir
    # Each version's own worker files: v1..v3's deltas and v3's withdrawal file.
    plain = [workspace / v.data_paths[-1] for v in chain[:3]] + [workspace / chain[2].withdrawn_paths[0]]
    remote = {p.name for p in settings.dvc_remote_dir.rglob("*") if p.is_file()}
    for path in plain:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        assert md5[2:] not in remote, f"{path} reached the DVC remote unsealed"
        sealed_md5 = hashlib.md5(path.with_name(path.name + SEALED_SUFFIX).read_bytes()).hexdigest()
        assert sealed_md5[2:] in remote
    before = _folder_files(workspace)
    _wipe(workspace, dvc_files=True)
    report = pull_version(settings, file_db, "credit", 3)
    # v1, v2: one delta each; v3: its empty delta and its withdrawal file.
    assert report.shards_opened == 4 and report.to_dict()["shards_opened"] == 4
    assert _folder_files(workspace) == {k: v for k, v in before.items() if not k.startswith("credit/v4/")}


def test_pull_rederives_record_ids_from_the_rows(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB
) -> None:
    """A version whose files, manifest and registry rows all agree, but whose rows were edited after
    their ids were computed: only re-deriving the ids from the values catches it."""
    workspace = settings.workspace_dir
    v1 = chain[0]
    folder = workspace / v1.folder
    records = folder / RECORDS_FILE
    table = pq.read_table(records)
    edited = table.set_column(0, table.schema.field(0), pc.add(table.column(0), pa.scalar(1.0)))
    for name in (RECORDS_FILE, MANIFEST_FILE):
        (folder / name).chmod(0o644)
    pq.write_table(edited, records)
    # Sealed again under v1's own key, so the shard and the plaintext agree and only the ids differ.
    key = DataKeys.from_settings(settings, file_db).get("credit", 1)
    seal_version_files(workspace, {v1.data_paths[0]: digest_file(records)}, key)
    manifest = json.loads((folder / MANIFEST_FILE).read_bytes())
    manifest["files"][RECORDS_FILE] = digest_file(records)
    manifest_bytes = canonical_json(manifest)
    (folder / MANIFEST_FILE).write_bytes(manifest_bytes)
    md5 = dvc_versions.track_and_push(workspace, v1.folder)
    file_db.query(
        "UPDATE dataset_versions SET data_digest = ?, manifest_digest = ?, dvc_md5 = ? WHERE version = 1",
        [digest_file(records), sha256_hex(manifest_bytes), md5],
    )
    _wipe(workspace, dvc_files=False)
    with pytest.raises(
        IntegrityError, match=r"v1/records\.parquet: row 0's record_id \(its values hash to [0-9a-f]{64}\)"
    ):
        pull_version(settings, file_db, "credit", 1)


def test_pull_refuses_a_changed_dvc_file_and_an_unreachable_remote(
    chain: list[DatasetVersion], settings: Settings, file_db: ExchangeDB
) -> None:
    dvc_path = dvc_versions.dvc_file(settings.workspace_dir, chain[0].folder)
    dvc_path.write_text(dvc_path.read_text().replace(chain[0].dvc_md5, "0" * 32 + ".dir"))
    with pytest.raises(StorageError, match=r"v1\.dvc names md5 0{32}\.dir, the registry says"):
        pull_version(settings, file_db, "credit", 1)
    dvc_path.unlink()  # lost: rewritten from the registry on the next pull
    shutil.rmtree(settings.dvc_remote_dir)
    _wipe(settings.workspace_dir, dvc_files=False)
    with pytest.raises(StorageError, match=r"could not pull credit v1\.\.v1 from .*store/dvc"):
        pull_version(settings, file_db, "credit", 1)
