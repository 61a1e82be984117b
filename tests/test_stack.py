"""``databright stack up|status|down`` on this machine: a Prefect server and two provider agents come
up healthy, a second ``up`` is refused, and ``down`` leaves no process behind — the agents' Prefect
workers and enclave sessions included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration  # a Prefect server and two agents, started and stopped by pid

DATABRIGHT = str(Path(sys.executable).parent / "databright")


def _cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"DATABRIGHT_HOME": str(home), "DATABRIGHT_PERIOD": "2026-11", "COLUMNS": "200"}
    done = subprocess.run([DATABRIGHT, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_stack_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pids: set[int] = set()
    try:
        _cli(home, "stack", "up", "--providers", "2")
        components = json.loads((home / "stack.json").read_text())["components"]
        assert [c["name"] for c in components] == ["prefect-server", "provider-1", "provider-2"]
        pids = {c["pid"] for c in components}
        for c in components:  # the agents' Prefect workers and enclave sessions too
            pids |= {child.pid for child in psutil.Process(c["pid"]).children(recursive=True)}
        assert len(pids) >= 7

        status = _cli(home, "stack", "status").stdout
        assert status.count("healthy") == 3, status
        again = _cli(home, "stack", "up", check=False)
        assert again.returncode != 0 and "already runs" in again.stdout + again.stderr
    finally:
        _cli(home, "stack", "down")
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not alive, f"still running after `stack down`: {alive}"
    assert not (home / "stack.json").exists()
    assert "no stack runs" in _cli(home, "stack", "status").stdout
