"""Ingest under stress: the same file twice, two writers at once, a crash at every step, and the
reconciliation rule ``rows read = accepted + quarantined + refused duplicates`` for any input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from databright.config import Settings
from databright.datasets import Registry, register_file
from databright.datasets.ingest import check_dataset_name
from databright.errors import NothingAccepted
from databright.storage import dvc_versions
from databright.trust.keys import DataKeys
from databright.trust.sealing import SEALED_SUFFIX, open_sealed, version_file_aad

HEADER = ",".join([*(f"f{i}" for i in range(8)), "label"])


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def _registry_state(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    db = settings.exchange_db()
    return {
        table: db.query(f"SELECT * FROM {table} ORDER BY ALL")
        for table in ("datasets", "dataset_versions", "records")
    }


def test_the_same_file_twice_is_refused_whole_as_duplicates(settings, file_db, clean_rows, tmp_path):
    path = _csv(tmp_path / "a.csv", clean_rows(12))
    first = register_file(
        settings, file_db, dataset="d", contract_kind="tabular-v1", owner="alice", path=path
    )
    assert first.accepted == 12
    before = _registry_state(settings)
    with pytest.raises(NothingAccepted, match=r"0 quarantined, 12 duplicates") as info:
        register_file(settings, file_db, dataset="d", contract_kind="tabular-v1", owner="alice", path=path)
    assert _registry_state(settings) == before  # no new version, no new record
    submission = Registry(file_db).get_submission(info.value.context["submission_id"])
    assert (submission.accepted, submission.duplicates, submission.version) == (0, 12, None)


def test_the_same_rows_from_a_second_contributor_keep_the_first_registrants_credit(
    settings, file_db, clean_rows, tmp_path
):
    rows = clean_rows(10)
    register_file(settings, file_db, dataset="d", contract_kind="tabular-v1", owner="alice",
                  path=_csv(tmp_path / "a.csv", rows))  # fmt: skip
    mixed = _csv(tmp_path / "b.csv", rows[:6] + clean_rows(4))
    result = register_file(
        settings, file_db, dataset="d", contract_kind="tabular-v1", owner="bob", path=mixed
    )
    assert (result.accepted, result.duplicates_refused) == (4, 6)
    assert result.version is not None and result.version.owner_counts == {"alice": 10, "bob": 4}


def _register_in_child(args: tuple[str, str, str]) -> str:
    home, owner, path = args
    settings = Settings(home=Path(home), period="2026-11")
    try:
        result = register_file(
            settings,
            settings.exchange_db(),
            dataset="d",
            contract_kind="tabular-v1",
            owner=owner,
            path=Path(path),
        )
    except NothingAccepted:
        return f"{owner}:refused"
    return f"{owner}:v{result.version.version if result.version else '-'}:{result.accepted}"


def test_concurrent_registrations_into_one_dataset_serialise(settings, clean_rows, tmp_path):
    """Two processes register overlapping files at once: versions 1 and 2, no lost or double row."""
    shared = clean_rows(20)
    a = _csv(tmp_path / "a.csv", shared + clean_rows(5))
    b = _csv(tmp_path / "b.csv", shared + clean_rows(7))
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_register_in_child, [(str(settings.home), "alice", str(a)),
                                                      (str(settings.home), "bob", str(b))]))  # fmt: skip
    latest = Registry(settings.exchange_db()).get_version("d")
    assert latest.version == 2
    assert latest.record_count == 20 + 5 + 7  # the shared rows count once, for whoever came first
    accepted = sorted(int(o.rsplit(":", 1)[1]) for o in outcomes)
    assert accepted in ([7, 25], [5, 27])
    assert sorted(o.split(":")[1] for o in outcomes) == ["v1", "v2"]


CRASH_STEPS = ("deduplicated", "version-written", "sealed", "pushed", "committed")


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_crash_at_any_step_leaves_no_version_or_a_complete_one(settings, clean_rows, tmp_path, step):
    """The child process is killed (os._exit: no cleanup, no finally) right after ``step``."""
    path = _csv(tmp_path / "a.csv", clean_rows(15))
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from databright.config import Settings
        from databright.datasets import ingest

        def crash(step):
            if step == {step!r}:
                os._exit(17)

        ingest.checkpoint = crash
        settings = Settings(home=Path({str(settings.home)!r}), period="2026-11")
        ingest.register_file(settings, settings.exchange_db(), dataset="d", contract_kind="tabular-v1",
                             owner="alice", path=Path({str(path)!r}))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 17, child.stderr

    registry = Registry(settings.exchange_db())
    latest = registry.latest_version("d")
    if step == "committed":
        assert latest is not None and latest.version == 1 and latest.record_count == 15
    else:
        assert latest is None  # nothing registered before the commit
    keys = DataKeys.from_settings(settings, settings.exchange_db())
    orphan = keys.find("d", 1)  # a data key row made for a v1 that never committed, if sealed
    assert (orphan is not None) == (step in ("sealed", "pushed", "committed"))
    staging = settings.home / "staging"
    assert len(list(staging.iterdir())) == 1  # the killed child could not remove its staging folder
    # whatever the crash left on disk does not stop the next registration, and the result is whole
    again = register_file(settings, settings.exchange_db(), dataset="d", contract_kind="tabular-v1",
                          owner="bob", path=_csv(tmp_path / "b.csv", clean_rows(3)))  # fmt: skip
    assert list(staging.iterdir()) == []  # the next registration swept it, then removed its own
    assert not list((settings.workspace_dir / "datasets" / "d").glob(".staging-*"))
    assert again.version is not None
    assert again.version.version == (2 if step == "committed" else 1)
    assert dvc_versions.dvc_file(settings.workspace_dir, again.version.folder).is_file()
    registry_ids = registry.version_record_ids("d", again.version.version)
    assert len(registry_ids) == again.version.record_count
    # The new version's shard opens under its own key; an orphan key of a failed v1 was replaced.
    key = keys.get("d", again.version.version)
    assert step == "committed" or orphan is None or key.key != orphan.key
    rel = again.version.data_paths[-1]
    shard = settings.workspace_dir / (rel + SEALED_SUFFIX)
    aad = version_file_aad("d", again.version.version, rel)
    assert open_sealed(shard, key.key, aad) == (settings.workspace_dir / rel).read_bytes()


_cell = st.one_of(
    st.floats(min_value=-49, max_value=49, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["", "abc", "999", "nan", "inf", "-0.0"]),
)
_label = st.sampled_from(["0", "1", "", "2", "x"])
_row = st.tuples(st.lists(_cell, min_size=8, max_size=8), _label).map(lambda r: ",".join([*r[0], r[1]]))


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(_row, min_size=1, max_size=25), second=st.lists(_row, min_size=1, max_size=25),
       overlap=st.integers(min_value=0, max_value=25))  # fmt: skip
def test_every_row_read_is_accepted_quarantined_or_refused(
    settings, tmp_path_factory, first, second, overlap
):
    folder = tmp_path_factory.mktemp("rec")
    home = Settings(home=folder / "home", period="2026-11").ensure_dirs()
    db = home.exchange_db()
    for owner, rows in (("alice", first), ("bob", first[:overlap] + second)):
        try:
            result = register_file(home, db, dataset="d", contract_kind="tabular-v1", owner=owner,
                                   path=_csv(folder / f"{owner}.csv", rows))  # fmt: skip
            read, accepted, quarantined, duplicates = (
                result.rows_received,
                result.accepted,
                result.quarantined_rows,
                result.duplicates_refused,
            )
        except NothingAccepted as refused:
            read, accepted = refused.context["rows_received"], 0
            quarantined, duplicates = refused.context["quarantined_rows"], refused.context["duplicates"]
        assert read == len(rows)
        assert accepted + quarantined + duplicates == read
    assert check_dataset_name("d") == "d"
