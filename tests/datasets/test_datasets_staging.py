"""The staging area: folders of killed registrations are swept, live ones never."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from databright.datasets.staging import OWNER_FILE, UNMARKED_GRACE_S, new_staging_dir, sweep_stale


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_owners_folder_is_kept_and_a_dead_owners_is_swept(tmp_path: Path) -> None:
    mine = new_staging_dir(tmp_path, "sub-mine")
    pid_text, start = (mine / OWNER_FILE).read_text().split()
    assert int(pid_text) == os.getpid() and start != "-"  # Linux: the start time is recorded
    dead = tmp_path / "sub-dead"
    dead.mkdir()
    (dead / OWNER_FILE).write_text(f"{_dead_pid()} -\n")
    (dead / "accepted.parquet").write_bytes(b"rows")
    assert sweep_stale(tmp_path) == [dead]
    assert mine.is_dir() and not dead.exists()


def test_a_recycled_pid_is_not_mistaken_for_the_owner(tmp_path: Path) -> None:
    """Same pid (ours, running) but another start time: the owner is gone, the pid was reused."""
    recycled = tmp_path / "sub-recycled"
    recycled.mkdir()
    (recycled / OWNER_FILE).write_text(f"{os.getpid()} 1\n")
    assert sweep_stale(tmp_path) == [recycled]


def test_an_unmarked_folder_gets_a_grace_period(tmp_path: Path) -> None:
    young, old = tmp_path / "sub-young", tmp_path / "sub-old"
    young.mkdir()
    old.mkdir()
    (old / OWNER_FILE).write_text("not a marker")
    past = time.time() - UNMARKED_GRACE_S - 60
    os.utime(old, (past, past))
    assert sweep_stale(tmp_path) == [old]
    assert young.is_dir()
    assert sweep_stale(tmp_path / "missing") == []
