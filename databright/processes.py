"""Local processes the exchange starts and stops: free ports, liveness by pid, a clean stop.

A clean stop is SIGINT first (how Prefect servers, workers and the provider agents shut down), then
SIGTERM, then SIGKILL, each after a grace period; only the process named is signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

#: (signal, seconds to wait for the process to exit after it)
STOP_SCHEDULE = ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_popen(proc: subprocess.Popen[Any]) -> None:
    """Stop a process this one started (and reap it), by the stop schedule."""
    for sig, grace in STOP_SCHEDULE:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def stop_pid(pid: int) -> None:
    """Stop a process known only by its pid (another command may have started it), by the schedule."""
    for sig, grace in STOP_SCHEDULE:
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process did start it
            time.sleep(0.1)


def prefect_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """This process's environment without its PREFECT_ settings, for a Prefect server (or client of
    one at ``api_url``) whose SQLite database lives in ``prefect_home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env
