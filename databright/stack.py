"""``databright stack up|down|status``: the whole exchange on this machine, started and stopped by pid.

``up`` starts, each in its own session so they outlive the command:

* a Prefect server on 127.0.0.1 (its SQLite database and logs in ``<home>/prefect``), waits until its
  health endpoint answers, and creates the work pools (``databright-exchange`` for the exchange's
  flow runs, ``databright-providers`` for the provider agents), both of type ``process``;
* N provider agents (``databright worker start``, ``market.agent``), each attesting its worker,
  opening its offer and running a Prefect worker on the providers' pool; ``up`` waits for their
  records.

Every pid, URL and log file goes to ``<home>/stack.json``. ``status`` reads it and checks each
component: the server's ``/api/health``, each agent's heartbeat (``remote_pool.lost``). ``down``
stops the agents first (their Prefect workers before the server), then the server: SIGINT, then
SIGTERM, then SIGKILL, each by the recorded pid, and removes the file. An S3-compatible store is
not started here: point ``DATABRIGHT_S3_*`` at one (``infra/compose.yaml`` runs MinIO).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from databright.config import Settings
from databright.errors import StackError
from databright.market.agent import AgentRecord, record_path
from databright.processes import free_port, pid_alive, prefect_env, stop_pid

EXCHANGE_POOL = "databright-exchange"
PROVIDER_POOL = "databright-providers"


@dataclass(frozen=True)
class Component:
    name: str
    pid: int
    url: str
    log: str


def stack_file(settings: Settings) -> Path:
    return settings.home / "stack.json"


def read_stack(settings: Settings) -> list[Component]:
    path = stack_file(settings)
    if not path.exists():
        return []
    return [Component(**c) for c in json.loads(path.read_text())["components"]]


def _write_stack(settings: Settings, components: list[Component]) -> None:
    data = {"components": [asdict(c) for c in components]}
    stack_file(settings).write_text(json.dumps(data, indent=2) + "\n")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def stack_env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    """The environment of the stack's processes: Prefect homed in ``<home>/prefect``, this home."""
    env = prefect_env(settings.home / "prefect", api_url)
    return env | {"DATABRIGHT_HOME": str(settings.home), "DATABRIGHT_PERIOD": settings.period}


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # A session of its own: the process outlives `stack up` and a Ctrl-C in its terminal.
        return subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def server_healthy(url: str, timeout_s: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(what: str, ready: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise StackError(f"{what} exited with {proc.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not ready within {timeout_s:g} s; see {log}")
        time.sleep(0.3)


def _create_pools(api_url: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for pool in (EXCHANGE_POOL, PROVIDER_POOL):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))


def up(settings: Settings, *, providers: int = 2, timeout_s: float = 180.0) -> list[Component]:
    """Start the server and ``providers`` agents; return the components (see the module docstring)."""
    running = [c for c in read_stack(settings) if pid_alive(c.pid)]
    if running:
        raise StackError(
            f"a stack already runs from {settings.home} "
            f"({', '.join(f'{c.name} pid {c.pid}' for c in running)}); `databright stack down` first"
        )
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
    components: list[Component] = []
    try:
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        log = logs / "prefect-server.log"
        server = _spawn(
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            stack_env(settings),
            log,
        )
        components.append(Component("prefect-server", server.pid, api_url, str(log)))
        _write_stack(settings, components)  # recorded at once: `down` can stop a half-started stack
        _wait("the Prefect server", lambda: server_healthy(api_url), server, log, timeout_s)
        _create_pools(api_url)
        agents = []
        for k in range(1, providers + 1):
            name = f"provider-{k}"
            log = logs / f"{name}.log"
            agent = _spawn(
                [_bin("databright"), "worker", "start", "--provider", name, "--price", f"0.00000{k}",
                 "--capacity", "50000000", "--pool", PROVIDER_POOL],
                stack_env(settings, api_url),
                log,
            )  # fmt: skip
            agents.append((name, agent, log))
            components.append(Component(name, agent.pid, f"pool {PROVIDER_POOL}", str(log)))
            _write_stack(settings, components)
        for name, agent, log in agents:
            path = record_path(settings, PROVIDER_POOL, name)
            _wait(f"agent {name}", path.exists, agent, log, timeout_s)
    except BaseException:
        down(settings)
        raise
    return components


def status(settings: Settings) -> list[tuple[Component, str]]:
    """Each component and its health: ``healthy``, or what is wrong."""
    from databright.market.remote_pool import lost

    found = []
    for component in read_stack(settings):
        if not pid_alive(component.pid):
            found.append((component, f"down (pid {component.pid} is gone)"))
        elif component.name == "prefect-server":
            found.append((component, "healthy" if server_healthy(component.url) else "not answering"))
        else:
            path = record_path(settings, PROVIDER_POOL, component.name)
            why = lost(AgentRecord.load(path)) if path.exists() else "no record yet"
            found.append((component, "healthy" if why is None else why))
    return found


def down(settings: Settings) -> list[Component]:
    """Stop every recorded component, agents before the server; return what was stopped."""
    components = read_stack(settings)
    # Agents (and the Prefect workers they run) before the server they talk to.
    for component in sorted(components, key=lambda c: c.name == "prefect-server"):
        stop_pid(component.pid)
    stack_file(settings).unlink(missing_ok=True)
    return components
