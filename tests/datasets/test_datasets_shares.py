"""Shares (by count, by posted value) and withdrawal: a new version without the records, refusals
that name the ids, no half versions, and training that follows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from databright.config import Settings
from databright.crypto import merkle_root_hex
from databright.datasets import Contract, DatasetVersion, Registry, register_file
from databright.datasets import shares as shares_module
from databright.datasets.shares import SHARE_SCALE, check_trainable, dataset_shares, withdraw_records
from databright.datasets.versions import load_version_frame, read_manifest, release
from databright.db import ExchangeDB
from databright.errors import (
    DatasetError,
    IntegrityError,
    NothingAccepted,
    RegistryError,
    StorageError,
    UnknownDataset,
)
from databright.storage import dvc_versions
from databright.training import JobSpec, run_job
from databright.trust.keys import DataKeys
from databright.trust.receipts import parse_receipt
from databright.trust.sealing import SEALED_SUFFIX, open_sealed, version_file_aad

HEADER = ",".join([*(f"f{i}" for i in range(8)), "label"])
Rows = Callable[[int], list[str]]
Writer = Callable[..., Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[DatasetVersion, DatasetVersion]]:
    """Once per module: ``credit`` v1 holds 10 records of alice, v2 adds 5 of bob."""
    root = tmp_path_factory.mktemp("shares")
    home = Settings(home=root / "home", period="2026-11").ensure_dirs()
    db = ExchangeDB(home.db_path)
    rng = np.random.default_rng(11)
    versions = []
    for owner, n in (("alice", 10), ("bob", 5)):
        x = rng.normal(0.0, 5.0, size=(n, 8)).round(4)
        labels = rng.integers(0, 2, size=n)
        path = root / f"{owner}.csv"
        lines = [
            ",".join([*(f"{v:.4f}" for v in row), str(int(y))]) for row, y in zip(x, labels, strict=True)
        ]
        path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
        result = register_file(home, db, dataset="credit", contract_kind="tabular-v1", owner=owner, path=path)
        assert result.version is not None
        versions.append(result.version)
    return home.home, (versions[0], versions[1])


@pytest.fixture
def settings(built: tuple[Path, tuple[DatasetVersion, DatasetVersion]], tmp_path: Path) -> Settings:
    """A private copy of the built home, its DVC remote pointed at itself."""
    home = tmp_path / "home"
    shutil.copytree(built[0], home, symlinks=True)
    copy = Settings(home=home, period="2026-11")
    dvc_versions.init_workspace(copy.workspace_dir, copy.dvc_remote)
    return copy


@pytest.fixture
def credit(
    built: tuple[Path, tuple[DatasetVersion, DatasetVersion]],
) -> tuple[DatasetVersion, DatasetVersion]:
    return built[1]


def _ids_of(db: ExchangeDB, owner: str, version: int = 2) -> list[str]:
    return [rid for rid, o in Registry(db).record_owners("credit", version).items() if o == owner]


def _root(ids: list[str]) -> str:
    return merkle_root_hex([bytes.fromhex(i) for i in ids])


def _versions(db: ExchangeDB) -> int:
    return int(db.query("SELECT count(*) FROM dataset_versions")[0][0])


# --- shares -----------------------------------------------------------------------------------


def _check_apportioned(parts: dict[str, int], weights: dict[str, int]) -> None:
    """Parts sum to the scale exactly and each is the floor or ceiling of its exact share."""
    assert sum(parts.values()) == SHARE_SCALE
    total = sum(weights.values())
    for owner, part in parts.items():
        exact = Fraction(SHARE_SCALE * weights[owner], total)
        assert abs(part - exact) < 1


def test_shares_by_count_until_value_is_posted(credit: tuple, file_db: ExchangeDB) -> None:
    shares = dataset_shares(file_db, "credit")
    assert (shares.version, shares.record_count, shares.basis) == (2, 15, "count")
    assert [(o.owner, o.records, o.share_by_value_ppm) for o in shares.owners] == [
        ("alice", 10, None),
        ("bob", 5, None),
    ]
    # 10/15 and 5/15 of a million: 666,666.67 and 333,333.33; the spare unit goes to the larger remainder.
    assert [o.share_by_count_ppm for o in shares.owners] == [666_667, 333_333]
    assert shares.share("alice") == 666_667 and shares.share("nobody") == 0
    assert dataset_shares(file_db, "credit", 1).to_dict()["owners"] == [
        {
            "owner": "alice",
            "records": 10,
            "share_by_count_ppm": SHARE_SCALE,
            "value": 0,
            "share_by_value_ppm": None,
        }
    ]
    assert shares.to_dataframe()["records"].tolist() == [10, 5]
    with pytest.raises(UnknownDataset, match="has no version 7"):
        dataset_shares(file_db, "credit", 7)


def _job(con: duckdb.DuckDBPyConnection, job_id: str, period: str, dataset: str, version: int) -> None:
    con.execute(
        "INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment, budget, "
        "status, created_at) VALUES (?, ?, 'acme', ?, ?, 'tabular_logreg', 1000, 1000, 'completed', ?)",
        [job_id, period, dataset, version, dt.datetime.now(dt.UTC)],
    )


def test_shares_by_value_sum_posted_data_allocations_only(credit: tuple, file_db: ExchangeDB) -> None:
    now = dt.datetime.now(dt.UTC)
    with file_db.transaction() as con:
        for period, state in (("2026-10", "posted"), ("2026-11", "proposed")):
            con.execute(
                "INSERT INTO settlements (period, state, created_at) VALUES (?, ?, ?)", [period, state, now]
            )
        _job(con, "job-1", "2026-10", "credit", 2)
        _job(con, "job-2", "2026-10", "credit", 1)
        _job(con, "job-3", "2026-11", "credit", 2)  # its period is not posted yet
        _job(con, "job-4", "2026-10", "other", 1)  # another dataset
        rows = [
            ("2026-10", "job-1", "contributor:alice", "data", 700),
            ("2026-10", "job-1", "contributor:bob", "data", 300),
            ("2026-10", "job-1", "provider:p1", "compute", 500),
            ("2026-10", "job-2", "contributor:alice", "data", 50),
            ("2026-10", "job-2", "contributor:carol", "data", 25),  # carol holds no record of v2
            ("2026-11", "job-3", "contributor:bob", "data", 10_000),
            ("2026-10", "job-4", "contributor:bob", "data", 10_000),
        ]
        con.executemany("INSERT INTO allocations VALUES (?, ?, ?, ?, 'value', 1, ?)", [list(r) for r in rows])
    shares = dataset_shares(file_db, "credit")
    values = {"alice": 750, "bob": 300, "carol": 25}
    assert (shares.basis, shares.valued_jobs, shares.value_total) == ("value", 2, 1075)
    assert {o.owner: o.value for o in shares.owners} == values
    assert {o.owner: o.records for o in shares.owners} == {"alice": 10, "bob": 5, "carol": 0}
    by_value = {o.owner: o.share_by_value_ppm for o in shares.owners}
    _check_apportioned(by_value, values)
    assert by_value == {"alice": 697_674, "bob": 279_070, "carol": 23_256}
    assert shares.share("bob") == 279_070
    # At v1 only job-2 (on v1) counts.
    assert {o.owner: o.value for o in dataset_shares(file_db, "credit", 1).owners} == {
        "alice": 50,
        "carol": 25,
    }


# --- withdrawal -------------------------------------------------------------------------------


def test_withdrawal_makes_a_new_version_and_keeps_the_old_ones(
    credit: tuple, settings: Settings, file_db: ExchangeDB, write_csv: Writer
) -> None:
    v1, v2 = credit
    registry = Registry(file_db)
    ids2 = registry.version_record_ids("credit", 2)
    bob = _ids_of(file_db, "bob")
    result = withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=[bob[3], bob[0]])
    v3 = result.version
    kept = [i for i in ids2 if i not in (bob[0], bob[3])]
    assert (result.parent, result.withdrawn, result.withdrawn_ids) == (v2, 2, (bob[0], bob[3]))
    assert (v3.version, v3.parent, v3.record_count) == (3, 2, 13)
    assert v3.owner_counts == {"alice": 10, "bob": 3}
    assert v3.merkle_root == _root(kept) and registry.version_record_ids("credit", 3) == kept
    assert (v3.contract_digest, v3.schema_digest) == (v2.contract_digest, v2.schema_digest)
    manifest = read_manifest(settings.workspace_dir, v3)
    assert (manifest["withdrawn_count"], manifest["added_count"], manifest["parent_manifest_digest"]) == (
        2,
        0,
        v2.manifest_digest,
    )
    assert "withdrawn" in repr(result) and result.to_dict()["withdrawn_ids"] == [bob[0], bob[3]]

    # Past versions are untouched: same ids, same root, files load and verify.
    assert registry.get_version("credit", 2) == v2 and registry.version_record_ids("credit", 2) == ids2
    assert load_version_frame(settings.workspace_dir, v2)["record_id"].tolist() == ids2
    assert load_version_frame(settings.workspace_dir, v3)["record_id"].tolist() == kept
    # The withdrawal file went to the DVC remote like any worker file: sealed, under v3's data key.
    withdrawn_file = settings.workspace_dir / v3.withdrawn_paths[0]
    sealed = withdrawn_file.with_name(withdrawn_file.name + SEALED_SUFFIX)
    for path, pushed in ((sealed, True), (withdrawn_file, False)):
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        assert (settings.dvc_remote_dir / "files" / "md5" / md5[:2] / md5[2:]).is_file() is pushed
    key = DataKeys.from_settings(settings, file_db).get("credit", 3)
    aad = version_file_aad("credit", 3, v3.withdrawn_paths[0])
    assert open_sealed(sealed, key.key, aad) == withdrawn_file.read_bytes()

    # New jobs may not use a version that still holds withdrawn records.
    with pytest.raises(
        DatasetError, match=r"credit v2 holds 2 record\(s\) their owners withdrew later; train on v3"
    ):
        check_trainable(file_db, v2)
    check_trainable(file_db, v3)
    check_trainable(file_db, v1)  # v1 never held bob's records

    # Withdrawing the rest (None = all the owner's records) removes bob from the owners.
    rest = withdraw_records(settings, file_db, dataset="credit", owner="bob")
    assert rest.withdrawn_ids == (bob[1], bob[2], bob[4])
    assert (rest.version.version, rest.version.record_count, rest.version.owner_counts) == (
        4,
        10,
        {"alice": 10},
    )
    assert len(rest.version.withdrawn_paths) == 2
    assert [o.owner for o in dataset_shares(file_db, "credit").owners] == ["alice"]
    assert load_version_frame(settings.workspace_dir, rest.version)["record_id"].tolist() == _ids_of(
        file_db, "alice"
    )

    # A withdrawn record stays registered: the same row sent again is a refused duplicate.
    bob_frame = load_version_frame(settings.workspace_dir, v2)
    row = bob_frame[bob_frame["owner"] == "bob"].iloc[0]
    line = ",".join([*(f"{row[f'f{i}']:.4f}" for i in range(8)), str(row["label"])])
    with pytest.raises(NothingAccepted, match="1 duplicates"):
        register_file(
            settings,
            file_db,
            dataset="credit",
            contract_kind="tabular-v1",
            owner="bob",
            path=write_csv("again.csv", [line]),
        )


def test_withdrawal_refusals_name_the_ids_and_change_nothing(
    credit: tuple, settings: Settings, file_db: ExchangeDB
) -> None:
    alice, bob = _ids_of(file_db, "alice"), _ids_of(file_db, "bob")
    withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=[bob[0]])
    before = _versions(file_db)
    cases = [
        ("bob", [alice[0]], rf"1 owned by someone else \({alice[0][:16]}…\); nothing was withdrawn"),
        ("bob", ["f" * 64, "e" * 64], rf"2 not registered in 'credit' \({'f' * 16}…, {'e' * 16}…\); nothing"),
        ("bob", [bob[0], bob[1]], rf"1 already withdrawn \({bob[0][:16]}…, in v3\); nothing"),
        ("bob", ["nope"], r"record_ids\[0\] is 'nope', not a record id"),
        ("bob", [], "no record ids given"),
        ("carol", None, "'carol' has no records in 'credit' v3"),
    ]
    for owner, ids, message in cases:
        with pytest.raises(DatasetError, match=message):
            withdraw_records(settings, file_db, dataset="credit", owner=owner, record_ids=ids)
    with pytest.raises(UnknownDataset, match="no dataset 'debit'"):
        withdraw_records(settings, file_db, dataset="debit", owner="bob")
    with pytest.raises(DatasetError, match="owner id"):
        withdraw_records(settings, file_db, dataset="credit", owner="../bob")
    assert _versions(file_db) == before
    assert not (settings.workspace_dir / "datasets" / "credit" / "v4").exists()


def test_a_failed_withdrawal_leaves_no_half_version(
    credit: tuple, settings: Settings, file_db: ExchangeDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = _ids_of(file_db, "bob")
    folder = settings.workspace_dir / "datasets" / "credit" / "v3"

    def push_fails(workspace: Path, target: object) -> str:
        raise StorageError("the remote is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(shares_module.dvc_versions, "track_and_push", push_fails)
        with pytest.raises(StorageError, match="unreachable"):
            withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=bob[:1])
    assert not folder.exists() and not dvc_versions.dvc_file(settings.workspace_dir, folder).exists()
    assert _versions(file_db) == 2

    real_insert = shares_module.insert_version_row

    def insert_then_fail(con: duckdb.DuckDBPyConnection, *args: object, **kwargs: object) -> None:
        real_insert(con, *args, **kwargs)
        raise duckdb.IOException("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(shares_module, "insert_version_row", insert_then_fail)
        with pytest.raises(RegistryError, match="disk full; nothing was withdrawn"):
            withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=bob[:1])
    assert not folder.exists() and _versions(file_db) == 2
    assert file_db.query("SELECT count(*) FROM withdrawn_records")[0][0] == 0

    # Nothing was left behind that blocks the next attempt.
    again = withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=bob[:1])
    assert again.version.version == 3 and again.version.record_count == 14


# --- training follows withdrawals -------------------------------------------------------------


def test_a_job_on_a_version_with_withdrawals_trains_on_the_remaining_records(
    credit: tuple,
    settings: Settings,
    file_db: ExchangeDB,
    tabular: Contract,
    tmp_path: Path,
    clean_rows: Rows,
) -> None:
    from databright.crypto import SigningKey

    bob = _ids_of(file_db, "bob")
    v3 = withdraw_records(settings, file_db, dataset="credit", owner="bob", record_ids=bob[:3]).version
    files = release(settings.workspace_dir, v3)
    validation = tmp_path / "validation.csv"
    validation.write_text(
        "\n".join([",".join([*(f"f{i}" for i in range(8)), "label"]), *clean_rows(20)]) + "\n"
    )
    spec = JobSpec(
        job_id="job-w",
        period="2026-11",
        run_id="run-w",
        provider_id="prov-1",
        task="tabular_logreg",
        dataset="credit",
        dataset_version=3,
        data_files=tuple(str(p) for p in files.data_files),
        withdrawn_files=tuple(str(p) for p in files.withdrawn_files),
        expected_merkle_root=v3.merkle_root,
        schema=tabular.schema.to_dict(),
        validation_file=str(validation),
        config={"epochs": 2},
        seed=5,
        attestation_result_id="ar-test",
        output_dir=str(tmp_path / "out"),
    )

    def run(job: JobSpec):
        return run_job(
            job,
            SigningKey.from_seed(b"session"),
            sequence=0,
            previous_receipt_digest=None,
            measurement="ab" * 32,
            enclave_tasks_dir=settings.enclave_tasks_dir,
        )

    outcome = run(spec)
    receipt = parse_receipt(outcome.receipt_envelope)
    assert (
        receipt.dataset_merkle_root
        == v3.merkle_root
        == _root(Registry(file_db).version_record_ids("credit", 3))
    )
    assert {o: u.rows_used for o, u in receipt.owners.items()} == {"alice": 10, "bob": 2}
    used = pd.read_parquet(outcome.records_path)
    assert used["record_id"].tolist() == Registry(file_db).version_record_ids("credit", 3)
    assert not set(bob[:3]) & set(used["record_id"])

    # Without the withdrawal files the rows no longer match the version's root.
    with pytest.raises(IntegrityError, match="Merkle root"):
        run(replace(spec, withdrawn_files=()))
    # A withdrawal file naming an id that no data file holds is not this version's release.
    stray = tmp_path / "stray.parquet"
    pq.write_table(pa.table({"record_id": ["0" * 64]}), stray)
    with pytest.raises(IntegrityError, match=r"list 1 record\(s\) that no data file holds"):
        run(replace(spec, withdrawn_files=(*spec.withdrawn_files, str(stray))))
    from databright.errors import TrainingError

    with pytest.raises(TrainingError, match=r"withdrawn_files\[0\] is the relative path"):
        replace(spec, withdrawn_files=("withdrawn.parquet",))
    assert json.loads(json.dumps(files.to_dict()))["record_count"] == 12
