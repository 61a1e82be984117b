"""register_file end to end: versions, dedup and credit, Merkle manifests, DVC, and atomicity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.config import Settings
from databright.crypto import digest_file, merkle_root_hex, sha256_hex
from databright.datasets import (
    Contract,
    IngestResult,
    Registry,
    load_version_frame,
    read_manifest,
    record_ids,
    register_file,
    release_files,
)
from databright.datasets.lineage import pull_version
from databright.datasets.registry import NewVersion
from databright.datasets.versions import MANIFEST_FILE, quarantine_table
from databright.db import ExchangeDB
from databright.errors import (
    DatasetError,
    IntegrityError,
    NothingAccepted,
    RegistryError,
    SchemaMismatch,
    StorageError,
    UnknownDataset,
)
from databright.storage import dvc_versions
from databright.trust.keys import DataKeys
from databright.trust.sealing import SEALED_SUFFIX, open_sealed, version_file_aad

Rows = Callable[[int], list[str]]
Writer = Callable[..., Path]


def _count(db: ExchangeDB, table: str) -> int:
    return int(db.query(f"SELECT count(*) FROM {table}")[0][0])


def _register(
    settings: Settings, db: ExchangeDB, owner: str, path: Path, dataset: str = "credit"
) -> IngestResult:
    return register_file(settings, db, dataset=dataset, contract_kind="tabular-v1", owner=owner, path=path)


def test_two_contributors_dedup_credit_and_merkle(
    settings: Settings, file_db: ExchangeDB, tabular: Contract, clean_rows: Rows, write_csv: Writer
) -> None:
    alice_rows = clean_rows(10)
    alice_rows[0] = "1.5000,2.0000,-0.0000,0.2500,1.0000,1.0000,1.0000,1.0000,1"
    bad = ["99,0,0,0,0,0,0,0,1", "x,0,0,0,0,0,0,0,1"]
    alice = _register(settings, file_db, "alice", write_csv("alice.csv", alice_rows + bad))
    assert (alice.accepted, alice.quarantined_rows, alice.duplicates_refused) == (10, 2, 0)
    v1 = alice.version
    assert v1 is not None and (v1.version, v1.parent, v1.record_count) == (1, None, 10)

    new = clean_rows(5)
    same_as_alice_0 = "1.5,2,0,0.25,1,1,1,1.0,1"  # written differently, the same record
    bob_lines = [same_as_alice_0, *alice_rows[1:3], new[0], new[0], *new[1:], new[1]]
    bob = _register(settings, file_db, "bob", write_csv("bob.csv", bob_lines))
    assert (bob.rows_received, bob.accepted, bob.duplicates_refused) == (10, 5, 5)
    v2 = bob.version
    assert v2 is not None and (v2.version, v2.parent, v2.record_count) == (2, 1, 15)
    assert v2.owner_counts == {"alice": 10, "bob": 5}
    assert len(v2.data_paths) == 2 and v2.data_paths[0] == v1.data_paths[0]

    registry = Registry(file_db)
    owners = registry.record_owners("credit", 2)
    assert list(owners.values()).count("alice") == 10  # credit for the shared rows stays with alice
    assert registry.version_record_ids("credit", 1) == registry.version_record_ids("credit", 2)[:10]
    assert registry.get_version("credit") == v2 and registry.latest_version("credit") == v2
    assert [s.accepted for s in registry.list_submissions("credit")] == [10, 5]
    assert registry.list_datasets()[0].record_count == 15

    # Recompute everything from the Parquet files alone: ids from the values, then the Merkle roots.
    paths = release_files(settings.workspace_dir, v2)
    assert all(p.is_absolute() for p in paths)
    ids_per_file = []
    for path in paths:
        frame = pq.read_table(path).to_pandas()
        recomputed = record_ids(frame, tabular.schema)
        assert recomputed == frame["record_id"].tolist()
        ids_per_file.append(recomputed)
    assert merkle_root_hex([bytes.fromhex(i) for i in ids_per_file[0]]) == v1.merkle_root
    root = merkle_root_hex([bytes.fromhex(i) for i in ids_per_file[0] + ids_per_file[1]])
    assert root == v2.merkle_root
    manifest = read_manifest(settings.workspace_dir, v2)
    assert manifest["merkle_root"] == root and manifest["record_count"] == 15 and manifest["parent"] == 1
    assert [d["digest"] for d in manifest["deltas"]] == [digest_file(p) for p in paths]
    manifest_bytes = (settings.workspace_dir / v2.folder / MANIFEST_FILE).read_bytes()
    assert sha256_hex(manifest_bytes) == v2.manifest_digest

    # The version folder's report and quarantine are the submission's.
    v1_dir = settings.workspace_dir / v1.folder
    assert json.loads((v1_dir / "contract_report.json").read_bytes()) == alice.report.to_dict()
    assert pq.read_table(v1_dir / "quarantine.parquet").num_rows == 2
    assert registry.quarantine_rows(alice.submission_id) == [
        (11, "f0", "expect_column_values_to_be_between", "99"),
        (12, "f0", "type:float", "x"),
    ]

    frame = load_version_frame(settings.workspace_dir, v2)
    assert len(frame) == 15 and frame["owner"].tolist() == ["alice"] * 10 + ["bob"] * 5

    # The DVC remote holds the delta only sealed: the shard under its md5, never the plaintext.
    def remote_object(path: Path) -> Path:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        return settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]

    sealed = paths[1].with_name(paths[1].name + SEALED_SUFFIX)
    assert not remote_object(paths[1]).exists()
    key = DataKeys.from_settings(settings, file_db).get("credit", 2)
    aad = version_file_aad("credit", 2, v2.data_paths[1])
    assert open_sealed(remote_object(sealed), key.key, aad) == paths[1].read_bytes()


def test_nothing_accepted_leaves_no_version(
    settings: Settings, file_db: ExchangeDB, clean_rows: Rows, write_csv: Writer
) -> None:
    with pytest.raises(
        NothingAccepted, match=r"no row of 2 was accepted .*2 quarantined, 0 duplicates"
    ) as info:
        _register(
            settings, file_db, "mallory", write_csv("bad.csv", ["0,0,0,0,0,0,0,0,5", ",0,0,0,0,0,0,0,1"])
        )
    assert _count(file_db, "datasets") == 0 and _count(file_db, "dataset_versions") == 0
    assert _count(file_db, "records") == 0
    assert not (settings.workspace_dir / "datasets" / "credit").exists()
    registry = Registry(file_db)
    submission = registry.get_submission(info.value.context["submission_id"])
    assert (submission.version, submission.accepted, submission.quarantined) == (None, 0, 2)
    assert len(registry.quarantine_rows(submission.submission_id)) == 2
    with pytest.raises(UnknownDataset, match="no dataset 'credit'"):
        registry.get_version("credit")

    rows = clean_rows(3)
    _register(settings, file_db, "alice", write_csv("a.csv", rows))
    with pytest.raises(NothingAccepted, match="0 quarantined, 3 duplicates"):
        _register(settings, file_db, "bob", write_csv("b.csv", rows))
    assert registry.get_version("credit").version == 1
    assert not (settings.workspace_dir / "datasets" / "credit" / "v2").exists()


@pytest.mark.parametrize("failing", ["track_and_push", "commit_submission"])
def test_a_failure_midway_leaves_no_trace(
    settings: Settings,
    file_db: ExchangeDB,
    clean_rows: Rows,
    write_csv: Writer,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    path = write_csv("a.csv", clean_rows(4))

    def boom(*args: object, **kwargs: object) -> None:
        raise (StorageError if failing == "track_and_push" else RegistryError)("injected failure")

    target = dvc_versions if failing == "track_and_push" else Registry
    with monkeypatch.context() as patch:
        patch.setattr(target, failing, boom)
        with pytest.raises((StorageError, RegistryError), match="injected failure"):
            _register(settings, file_db, "alice", path)
    for table in ("datasets", "dataset_versions", "records", "submissions", "quarantine"):
        assert _count(file_db, table) == 0, table
    dataset_dir = settings.workspace_dir / "datasets" / "credit"
    assert not any(dataset_dir.iterdir()) if dataset_dir.exists() else True
    result = _register(settings, file_db, "alice", path)  # the retry gets v1, cleanly
    assert result.version is not None and result.version.version == 1


def test_a_dataset_keeps_its_contract(
    tmp_path: Path, settings: Settings, file_db: ExchangeDB, clean_rows: Rows, write_csv: Writer
) -> None:
    project = tmp_path / "project"
    for kind in ("tabular-v1", "other-v1"):
        shutil.copytree(settings.contracts_dir / "tabular-v1", project / "data_contracts" / kind)
    local = Settings(home=settings.home, project_root=project, period=settings.period)
    register_file(
        local,
        file_db,
        dataset="d",
        contract_kind="tabular-v1",
        owner="a",
        path=write_csv("a.csv", clean_rows(2)),
    )
    with pytest.raises(DatasetError, match="registered with contract tabular-v1, not other-v1"):
        register_file(
            local,
            file_db,
            dataset="d",
            contract_kind="other-v1",
            owner="a",
            path=write_csv("b.csv", clean_rows(2)),
        )


def test_refused_files_and_names_register_nothing(
    settings: Settings, file_db: ExchangeDB, clean_rows: Rows, write_csv: Writer
) -> None:
    with pytest.raises(SchemaMismatch):
        _register(settings, file_db, "alice", write_csv("x.csv", ["1,2"], header="a,b"))
    with pytest.raises(DatasetError, match="dataset name 'Credit Risk' is not allowed"):
        _register(settings, file_db, "alice", write_csv("y.csv", clean_rows(1)), dataset="Credit Risk")
    with pytest.raises(DatasetError, match="owner id 'al ice' is not allowed"):
        _register(settings, file_db, "al ice", write_csv("z.csv", clean_rows(1)))
    assert _count(file_db, "submissions") == 0


def test_tampered_data_is_detected(
    settings: Settings, file_db: ExchangeDB, clean_rows: Rows, write_csv: Writer
) -> None:
    version = _register(settings, file_db, "alice", write_csv("a.csv", clean_rows(5))).version
    assert version is not None
    with pytest.raises(UnknownDataset, match="has no version 7; its versions are v1"):
        Registry(file_db).get_version("credit", 7)
    records = settings.workspace_dir / version.data_paths[0]
    table = pq.read_table(records)
    pq.write_table(table.slice(0, 4), records)
    with pytest.raises(IntegrityError, match="does not match its registered digest"):
        load_version_frame(settings.workspace_dir, version)
    # The remote's sealed copy is the truth: pulling the version unseals it back into place.
    assert pull_version(settings, file_db, "credit", 1).shards_opened == 1
    assert len(load_version_frame(settings.workspace_dir, version)) == 5


def test_the_registry_refuses_record_ids_it_already_holds(
    settings: Settings, file_db: ExchangeDB, clean_rows: Rows, write_csv: Writer
) -> None:
    """Dedup refuses repeats before publishing; were it bypassed, the registry's one insert still does."""
    first = _register(settings, file_db, "alice", write_csv("a.csv", clean_rows(5)))
    assert first.version is not None
    registry = Registry(file_db)
    held = registry.version_record_ids("credit", 1)
    before = {t: _count(file_db, t) for t in ("dataset_versions", "records", "submissions")}
    v1 = first.version
    cases = (
        ([held[0], "ab" * 32], r"\(0 within the version, 1 already registered\)"),
        (["cd" * 32, "cd" * 32], r"\(1 within the version, 0 already registered\)"),
    )
    for ids, clash in cases:
        submission = dataclasses.replace(
            registry.get_submission(first.submission_id), submission_id=f"sub-{ids[0][:8]}", version=2
        )
        new_version = NewVersion(
            version=2, parent=1, contract_digest=v1.contract_digest, schema_digest=v1.schema_digest,
            merkle_root="00" * 32, record_count=7, manifest_key="m", manifest_digest="00" * 32,
            data_path="d", data_digest="00" * 32, dvc_md5="x",
        )  # fmt: skip
        records = pa.table({"record_id": ids, "owner": ["bob", "bob"], "seq": pa.array([6, 7], pa.int64())})
        with pytest.raises(RegistryError, match=f"repeats record ids {clash}"):
            registry.commit_submission(
                submission, contract_kind="tabular-v1", contract_digest=v1.contract_digest,
                quarantine=quarantine_table(first.report),
                new_version=new_version, records=records,
            )  # fmt: skip
    assert {t: _count(file_db, t) for t in before} == before
