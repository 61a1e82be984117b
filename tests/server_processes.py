"""Servers the integration tests start themselves on 127.0.0.1 and stop by process id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGINT first (a clean shutdown), then SIGTERM, then SIGKILL; only the process we started."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def prefect_env(home: Path) -> dict[str, str]:
    """This process's environment without its PREFECT_ settings, for a server homed in ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


@contextlib.contextmanager
def prefect_server(home: Path, fail: Any) -> Iterator[str]:
    """A ``prefect server start`` on a free port with its SQLite database in ``home``; yields the API
    URL once healthy. ``fail(message)`` reports a server that exits or never gets healthy."""
    port = free_port()
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port), "--no-ui"],
        env=prefect_env(home), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                fail(f"prefect server exited with {proc.returncode}: {(home / 'server.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                fail(f"prefect server not healthy in 120 s: {(home / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        stop(proc)
        log.close()
