"""The staging area: private folders where submissions wait between *stage* and *publish*.

Each folder ``<home>/staging/<submission>`` carries an ``owner`` marker naming the process that
made it: its pid and, on Linux, the process start time from ``/proc/<pid>/stat`` (so a recycled
pid is not mistaken for the owner). A folder normally lives only as long as one registration and
is removed by it, success or failure. A process killed mid-registration (SIGKILL, power loss)
cannot clean up, so ``sweep_stale`` removes every folder whose owner is no longer running; it runs
before each new submission is staged. A folder without a readable marker is only removed once it
is older than ``UNMARKED_GRACE_S``, because its owner may be between ``mkdir`` and writing the
marker.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

OWNER_FILE = "owner"
UNMARKED_GRACE_S = 3600.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after its last ")" are plain.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat(5)


def _running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return start is None or _start_time(pid) in (None, start)


def new_staging_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` marked as this process's; the caller removes it when done."""
    folder = root / name
    folder.mkdir(parents=True)
    pid = os.getpid()
    (folder / OWNER_FILE).write_text(f"{pid} {_start_time(pid) or '-'}\n")
    return folder


def sweep_stale(root: Path) -> list[Path]:
    """Remove the staging folders whose owning process has gone; returns what was removed."""
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            pid_text, start = (folder / OWNER_FILE).read_text().split()
            stale = not _running(int(pid_text), None if start == "-" else start)
        except (OSError, ValueError):
            try:
                stale = time.time() - folder.stat().st_mtime > UNMARKED_GRACE_S
            except OSError:
                continue  # removed meanwhile
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
