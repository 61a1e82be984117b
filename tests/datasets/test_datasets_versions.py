"""Version folders and the registry's view of versions: content-addressed manifests, withdrawals,
near-duplicate groups, and record ids that stay right for every version (a property)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.crypto import digest_file, merkle_root_hex, sha256_hex
from databright.datasets import Contract, ContractReport, Registry, Submission, record_ids
from databright.datasets.registry import NewVersion
from databright.datasets.shares import commit_withdrawal
from databright.datasets.versions import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    WITHDRAWN_FILE,
    DatasetVersion,
    WrittenVersion,
    load_version_frame,
    release,
    release_files,
    write_version_folder,
)
from databright.db import ExchangeDB
from databright.errors import DatasetError, IntegrityError, RegistryError


def _root(ids: list[str]) -> str:
    return merkle_root_hex([bytes.fromhex(i) for i in ids])


def _rows(rng: np.random.Generator, contract: Contract, n: int, owner: str) -> pd.DataFrame:
    frame = pd.DataFrame(rng.normal(0.0, 5.0, size=(n, 8)).round(4), columns=[f"f{i}" for i in range(8)])
    frame["label"] = rng.integers(0, 2, size=n)
    frame["record_id"] = record_ids(frame, contract.schema)
    frame["owner"] = owner
    return frame


def _report(contract: Contract, n: int) -> ContractReport:
    return ContractReport(contract.kind, contract.digest, n, n, ())


def _as_version(written: WrittenVersion, contract: Contract, parent: DatasetVersion | None) -> DatasetVersion:
    """What the registry would return for a written folder (the test stands in for the registry)."""
    m = written.manifest
    own_path = (written.withdrawn_path,) if written.withdrawn_path else ()
    own_digest = (written.withdrawn_digest,) if written.withdrawn_digest else ()
    return DatasetVersion(
        dataset=m["dataset"],
        version=m["version"],
        parent=m["parent"],
        contract_kind=contract.kind,
        contract_digest=m["contract_digest"],
        schema_digest=m["schema_digest"],
        merkle_root=m["merkle_root"],
        record_count=m["record_count"],
        owner_counts=m["owner_counts"],
        data_paths=(*(parent.data_paths if parent else ()), written.data_path),
        data_digests=(*(parent.data_digests if parent else ()), written.data_digest),
        manifest_digest=written.manifest_digest,
        dvc_md5="0" * 32 + ".dir",
        withdrawn_paths=(*(parent.withdrawn_paths if parent else ()), *own_path),
        withdrawn_digests=(*(parent.withdrawn_digests if parent else ()), *own_digest),
    )


def test_manifest_is_content_addressed_and_withdrawals_leave_the_old_version_intact(
    tmp_path: Path, tabular: Contract, rng: np.random.Generator
) -> None:
    workspace = tmp_path / "ws"
    alice = _rows(rng, tabular, 6, "alice")
    ids1 = alice["record_id"].tolist()
    groups = ((ids1[0], ids1[3]), (ids1[1], ids1[2], ids1[5]))
    w1 = write_version_folder(
        workspace,
        dataset="d",
        version=1,
        parent=None,
        contract=tabular,
        records=alice,
        report=_report(tabular, 6),
        merkle_root=_root(ids1),
        owner_counts={"alice": 6},
        near_duplicate_groups=groups,
    )
    v1 = _as_version(w1, tabular, None)
    manifest_bytes = (workspace / "datasets/d/v1" / MANIFEST_FILE).read_bytes()
    assert sha256_hex(manifest_bytes) == w1.manifest_digest == v1.manifest_digest
    m1 = json.loads(manifest_bytes)
    assert m1["format"] == MANIFEST_FORMAT
    assert (m1["parent"], m1["parent_manifest_digest"]) == (None, None)
    assert m1["near_duplicate_groups"] == [list(g) for g in groups]
    assert m1["schema"] == tabular.schema.to_dict() and m1["schema_digest"] == tabular.schema.digest
    assert (m1["record_count"], m1["added_count"], m1["withdrawn_count"]) == (6, 6, 0)
    assert m1["files"] == {
        name: digest_file(workspace / "datasets/d/v1" / name)
        for name in ("contract_report.json", "quarantine.parquet", "records.parquet")
    }

    # v2 withdraws three of alice's records and adds two of bob's: 6 - 3 + 2 = 5.
    bob = _rows(rng, tabular, 2, "bob")
    gone = [ids1[4], ids1[1], ids1[2]]  # given out of order; the file keeps what it is given
    kept = [i for i in ids1 if i not in gone] + bob["record_id"].tolist()
    w2 = write_version_folder(
        workspace,
        dataset="d",
        version=2,
        parent=v1,
        contract=tabular,
        records=bob,
        report=None,
        merkle_root=_root(kept),
        owner_counts={"alice": 3, "bob": 2},
        withdrawn=gone,
    )
    v2 = _as_version(w2, tabular, v1)
    m2 = json.loads((workspace / "datasets/d/v2" / MANIFEST_FILE).read_bytes())
    assert (m2["parent"], m2["parent_manifest_digest"]) == (1, v1.manifest_digest)
    assert (m2["record_count"], m2["added_count"], m2["withdrawn_count"]) == (5, 2, 3)
    assert sorted(m2["files"]) == ["records.parquet", WITHDRAWN_FILE]  # no contract ran: no report
    assert m2["withdrawals"] == [{"path": "datasets/d/v2/withdrawn.parquet", "digest": w2.withdrawn_digest}]
    assert [d["version"] for d in m2["deltas"]] == [1, 2]
    assert pq.read_table(workspace / w2.withdrawn_path).column("record_id").to_pylist() == gone

    # Readers rebuild each version from the files: v2 without the withdrawn rows, v1 untouched.
    frame2 = load_version_frame(workspace, v2)
    assert frame2["record_id"].tolist() == kept
    assert frame2["owner"].tolist() == ["alice"] * 3 + ["bob"] * 2
    assert load_version_frame(workspace, v1)["record_id"].tolist() == ids1
    files = release(workspace, v2)
    assert files.data_files == release_files(workspace, v2) and len(files.data_files) == 2
    assert files.withdrawn_files == ((workspace / w2.withdrawn_path).resolve(),)
    assert files.to_dict()["withdrawn_files"] == [str(files.withdrawn_files[0])]

    # A withdrawal file that lost an id changes the rebuilt version, which the digest check catches.
    pq.write_table(pa.table({"record_id": pa.array(gone[:2])}), workspace / w2.withdrawn_path)
    with pytest.raises(IntegrityError, match=r"withdrawn\.parquet does not match its registered digest"):
        load_version_frame(workspace, v2)
    assert len(load_version_frame(workspace, v2, verify=False)) == 6  # unchecked, the lost id is back


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((("a" * 64,),), r"near_duplicate_groups\[0\] .* two or more record ids"),
        ((("a" * 64, "b" * 64), ("b" * 64, "c" * 64)), r"is in near_duplicate_groups\[0\] and \[1\]"),
        ((("a" * 64, "XYZ"),), r"near_duplicate_groups\[0\]\[1\] is 'XYZ', not a record id"),
        (("ab",), r"near_duplicate_groups\[0\] is 'ab'"),
    ],
)
def test_bad_near_duplicate_groups_are_refused_before_anything_is_written(
    tmp_path: Path, tabular: Contract, rng: np.random.Generator, groups: tuple, message: str
) -> None:
    records = _rows(rng, tabular, 3, "alice")
    with pytest.raises(DatasetError, match=message):
        write_version_folder(
            tmp_path,
            dataset="d",
            version=1,
            parent=None,
            contract=tabular,
            records=records,
            report=_report(tabular, 3),
            merkle_root=_root(records["record_id"].tolist()),
            owner_counts={"alice": 3},
            near_duplicate_groups=groups,
        )
    assert not (tmp_path / "datasets").exists()


# --- the registry's rule, as a property -------------------------------------------------------

# An operation: ("add", owner, n) registers n new records; ("withdraw", owner, picks) withdraws the
# owner's live records at the given positions (modulo how many they have).
_OWNERS = st.sampled_from(["alice", "bob", "carol"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _OWNERS, st.integers(1, 4)),
        st.tuples(st.just("withdraw"), _OWNERS, st.lists(st.integers(0, 50), min_size=1, max_size=3)),
    ),
    min_size=1,
    max_size=8,
)


def _new_version(number: int, ids: list[str], withdrawn: bool) -> NewVersion:
    return NewVersion(
        version=number,
        parent=number - 1 or None,
        contract_digest="c" * 64,
        schema_digest="s" * 64,
        merkle_root=_root(ids),
        record_count=len(ids),
        manifest_key=f"datasets/d/v{number}/manifest.json",
        manifest_digest=f"{number:064x}",
        data_path=f"datasets/d/v{number}/records.parquet",
        data_digest="d" * 64,
        dvc_md5="0" * 32 + ".dir",
        withdrawn_path=f"datasets/d/v{number}/withdrawn.parquet" if withdrawn else None,
        withdrawn_digest="w" * 64 if withdrawn else None,
    )


@settings(max_examples=30, deadline=None)
@given(ops=_OPS)
def test_every_version_keeps_exactly_its_record_ids(ops: list[tuple]) -> None:
    import datetime as dt

    db = ExchangeDB(None)
    registry = Registry(db)
    live: list[tuple[str, str]] = []  # the model: (record id, owner) in sequence order
    history: list[list[tuple[str, str]]] = []
    counter = 0
    for kind, owner, arg in ops:
        number = len(history) + 1
        if kind == "add":
            new = [(f"{counter + i:064x}", owner) for i in range(arg)]
            counter += arg
            after = live + new
            submission = Submission(
                f"sub-{number}",
                "d",
                owner,
                "f.csv",
                "f" * 64,
                arg,
                arg,
                0,
                0,
                number,
                "r" * 64,
                dt.datetime.now(dt.UTC),
            )
            seq0 = registry.next_seq("d")
            registry.commit_submission(
                submission,
                contract_kind="tabular-v1",
                contract_digest="c" * 64,
                quarantine=pa.table(
                    {
                        "row_number": pa.array([], pa.int64()),
                        "column": pa.array([], pa.string()),
                        "expectation": pa.array([], pa.string()),
                        "value": pa.array([], pa.string()),
                    }
                ),
                new_version=_new_version(number, [i for i, _ in after], withdrawn=False),
                records=pa.table(
                    {
                        "record_id": [i for i, _ in new],
                        "owner": [o for _, o in new],
                        "seq": pa.array(range(seq0, seq0 + arg), pa.int64()),
                    }
                ),
            )
        else:
            mine = [i for i, o in live if o == owner]
            if not mine:
                continue
            picked = list(dict.fromkeys(mine[p % len(mine)] for p in arg))
            after = [(i, o) for i, o in live if i not in picked]
            commit_withdrawal(
                db, "d", owner, _new_version(number, [i for i, _ in after], withdrawn=True), picked
            )
        live = after
        history.append(list(live))

    for number, expected in enumerate(history, start=1):
        ids = [i for i, _ in expected]
        assert registry.version_record_ids("d", number) == ids
        assert list(registry.record_owners("d", number).items()) == expected
        counts: dict[str, int] = {}
        for _, owner in expected:
            counts[owner] = counts.get(owner, 0) + 1
        version = registry.get_version("d", number)
        assert version.owner_counts == dict(sorted(counts.items()))
        assert version.merkle_root == _root(ids)
        still_there = {i for i, _ in history[-1]}
        assert registry.withdrawn_after("d", number) == sum(1 for i in ids if i not in still_there)
    if history:
        summary = registry.list_datasets()[0]
        assert (summary.record_count, summary.owners) == (len(history[-1]), len({o for _, o in history[-1]}))


def test_commit_withdrawal_is_all_or_nothing(memory_db: ExchangeDB) -> None:
    """An id that is not the owner's aborts the whole transaction: no version row, no withdrawal."""
    import datetime as dt

    registry = Registry(memory_db)
    ids = [f"{i:064x}" for i in range(4)]
    submission = Submission(
        "sub-1", "d", "alice", "f", "f" * 64, 4, 4, 0, 0, 1, "r" * 64, dt.datetime.now(dt.UTC)
    )
    empty_quarantine = pa.table(
        {
            c: pa.array([], pa.int64() if c == "row_number" else pa.string())
            for c in ("row_number", "column", "expectation", "value")
        }
    )
    registry.commit_submission(
        submission,
        contract_kind="tabular-v1",
        contract_digest="c" * 64,
        quarantine=empty_quarantine,
        new_version=_new_version(1, ids, withdrawn=False),
        records=pa.table(
            {
                "record_id": ids,
                "owner": ["alice", "alice", "bob", "bob"],
                "seq": pa.array([1, 2, 3, 4], pa.int64()),
            }
        ),
    )
    with pytest.raises(RegistryError, match=r"stopped being 'alice''s in 'd'.*nothing was withdrawn"):
        commit_withdrawal(memory_db, "d", "alice", _new_version(2, ids[1:], withdrawn=True), [ids[0], ids[2]])
    assert registry.get_version("d").version == 1
    assert memory_db.query("SELECT count(*) FROM withdrawn_records")[0][0] == 0
    assert memory_db.query("SELECT count(*) FROM withdrawals")[0][0] == 0
    with pytest.raises(RegistryError, match="moved on while v3 was prepared"):
        commit_withdrawal(memory_db, "d", "alice", _new_version(3, ids[1:], withdrawn=True), [ids[0]])
