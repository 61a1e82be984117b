"""Servers the integration tests start themselves on 127.0.0.1 and stop by process id
(``databright.processes`` has the port, environment and stop helpers they share with the stack)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from databright.processes import free_port, prefect_env, stop_popen


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
        stop_popen(proc)
        log.close()
