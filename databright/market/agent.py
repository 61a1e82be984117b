"""A provider's agent (``databright worker start``): one attested worker, offered to a work pool.

The agent runs on the provider's machine until it is stopped (SIGINT or SIGTERM; ``databright
worker stop`` sends SIGINT to the pid in its record). While it runs it:

1. registers the provider (price per work unit, capacity, tee type) and starts its enclave session
   (a ``WorkerProcess``: the session key exists only in that child);
2. has the exchange's verifier appraise the session for the task and opens the offer under the
   result (``pool.attest_and_offer``), as the in-process ``LocalPool`` does;
3. answers the exchange's job commands — ``run``, ``value``, ``status`` — on 127.0.0.1, on a
   connection authenticated with a key only its record holds (``multiprocessing.connection``'s
   HMAC challenge), and relays them to the enclave session, one job at a time;
4. rewrites its *record* (``<home>/pool/<pool>/<provider>.json``, mode 0600: address, key, pid,
   offer, the session's published key-exchange key, heartbeat time) every ``heartbeat_s``;
   the exchange treats an offer whose record is missing, stale or whose pid is gone as lost and
   withdraws it (``remote_pool.withdraw_lost_offers``);
5. runs a Prefect worker on the process work pool of the same name, which executes the runs of the
   ``train`` deployment; a run allocates the pool's offers and sends each part to its agent.

Stopping it stops the Prefect worker (SIGINT, then SIGTERM), withdraws the offer, stops the enclave
and removes the record, so no offer outlives the agent that serves it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from databright.config import Settings
from databright.errors import MarketError, TrainingError
from databright.market.offers import Provider, register_provider, withdraw_offer
from databright.market.pool import PoolMember, attest_and_offer
from databright.processes import pid_alive, stop_popen
from databright.training.worker import WorkerProcess, failure_reply
from databright.trust import SimulatedVerifier, provision_platform

DEFAULT_POOL = "databright-providers"
HEARTBEAT_S = 2.0


def pool_dir(settings: Settings, pool: str) -> Path:
    """Where the agents serving ``pool`` keep their records."""
    if not pool or "/" in pool or pool.startswith("."):
        raise MarketError(f"pool name {pool!r} must be a plain name like {DEFAULT_POOL!r}")
    return settings.home / "pool" / pool


def record_path(settings: Settings, pool: str, provider_id: str) -> Path:
    return pool_dir(settings, pool) / f"{provider_id}.json"


@dataclass(frozen=True)
class AgentRecord:
    """What an agent publishes about itself, rewritten at every heartbeat."""

    provider_id: str
    pool: str
    task: str
    pid: int
    address: tuple[str, int]
    authkey: str  # hex; the record is readable by its owner only
    offer_id: str
    attestation_result_id: str
    kex_envelope: dict[str, Any]
    heartbeat_at: str
    heartbeat_s: float
    enclave_alive: bool
    enclave_pid: int | None
    prefect_worker_pid: int | None
    jobs_run: int

    @classmethod
    def load(cls, path: Path) -> AgentRecord:
        data = json.loads(path.read_text())
        data["address"] = tuple(data["address"])
        return cls(**data)

    def age_s(self, now: dt.datetime | None = None) -> float:
        moment = now or dt.datetime.now(dt.UTC)
        return (moment - dt.datetime.fromisoformat(self.heartbeat_at)).total_seconds()


def _write_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, sort_keys=True)
    tmp.replace(path)


class ProviderAgent:
    """See the module docstring. ``serve_forever`` blocks until ``stop`` (or a signal) is called."""

    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        pool: str = DEFAULT_POOL,
        task: str = "tabular_logreg",
        heartbeat_s: float = HEARTBEAT_S,
        prefect_worker: bool = True,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.pool = pool
        self.task = task
        self.heartbeat_s = heartbeat_s
        self.prefect_worker = prefect_worker
        self.path = record_path(settings, pool, provider.provider_id)
        self._stopping = threading.Event()
        self._job_lock = threading.Lock()
        self._worker: WorkerProcess | None = None
        self._member: PoolMember | None = None
        self._listener: Listener | None = None
        self._prefect: subprocess.Popen[bytes] | None = None
        self._authkey = secrets.token_bytes(32)
        self._jobs_run = 0

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> AgentRecord:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            old = AgentRecord.load(self.path)
            if pid_alive(old.pid):
                raise MarketError(
                    f"provider {self.provider.provider_id} already has an agent on pool {self.pool} (pid "
                    f"{old.pid}); stop it with `databright worker stop --provider "
                    f"{self.provider.provider_id}`"
                )
        db = self.settings.exchange_db()
        register_provider(db, self.provider)
        platform = provision_platform(self.settings.keys_dir, self.provider.provider_id)
        self._worker = WorkerProcess(
            self.provider.provider_id,
            platform.key_path,
            platform.endorsement,
            self.settings.enclave_tasks_dir,
        )
        self._worker.start()
        verifier = SimulatedVerifier.from_settings(self.settings, db, self.settings.object_store())
        self._member = attest_and_offer(db, verifier, self.provider, self._worker, self.task)
        self._listener = Listener(("127.0.0.1", 0), authkey=self._authkey)
        threading.Thread(target=self._accept, name="agent-accept", daemon=True).start()
        if self.prefect_worker:
            self._prefect = _start_prefect_worker(self.pool, self.provider.provider_id)
        return self.beat()

    def beat(self) -> AgentRecord:
        """Rewrite the record with the current time: the heartbeat the exchange checks."""
        assert self._member is not None and self._listener is not None and self._worker is not None
        address = self._listener.address
        record = AgentRecord(
            provider_id=self.provider.provider_id,
            pool=self.pool,
            task=self.task,
            pid=os.getpid(),
            address=(str(address[0]), int(address[1])),
            authkey=self._authkey.hex(),
            offer_id=self._member.offer.offer_id,
            attestation_result_id=self._member.attestation.result_id,
            kex_envelope=self._member.kex_envelope,
            heartbeat_at=dt.datetime.now(dt.UTC).isoformat(),
            heartbeat_s=self.heartbeat_s,
            enclave_alive=self._worker.is_alive(),
            enclave_pid=self._worker.pid,
            prefect_worker_pid=None if self._prefect is None else self._prefect.pid,
            jobs_run=self._jobs_run,
        )
        data = {**record.__dict__, "address": list(record.address)}
        _write_private(self.path, data)
        return record

    def serve_forever(self) -> None:
        """Heartbeat until stopped; SIGINT and SIGTERM stop the agent cleanly."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stopping.set())
        try:
            while not self._stopping.wait(self.heartbeat_s):
                self.beat()
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._prefect is not None:
            stop_popen(self._prefect)
            self._prefect = None
        if self._member is not None:
            with contextlib.suppress(Exception):  # the exchange may withdraw a lost offer first
                withdraw_offer(self.settings.exchange_db(), self._member.offer.offer_id)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        if self._worker is not None:
            self._worker.stop()
        self.path.unlink(missing_ok=True)

    # --- the exchange's commands -------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                if self._stopping.is_set():
                    return
                continue  # a client that failed the authentication challenge; keep serving
            threading.Thread(target=self._serve, args=(conn,), name="agent-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            try:
                command, args = conn.recv()
            except (EOFError, OSError):
                return
            try:
                conn.send(("ok", self._dispatch(command, args)))
            except (Exception, SystemExit) as exc:
                with contextlib.suppress(OSError):
                    conn.send(failure_reply(exc))

    def _dispatch(self, command: str, args: tuple[Any, ...]) -> Any:
        assert self._worker is not None
        if command == "status":
            return {"enclave_alive": self._worker.is_alive(), "enclave_pid": self._worker.pid}
        if command not in ("run", "value"):
            raise TrainingError(f"unknown agent command {command!r}; use run, value or status")
        # One job at a time: the enclave session signs one receipt chain, in order.
        with self._job_lock:
            result = self._worker.run(*args) if command == "run" else self._worker.value(*args)
            self._jobs_run += 1
            return result


def _start_prefect_worker(pool: str, provider_id: str) -> subprocess.Popen[bytes]:
    """A Prefect process worker for ``pool``: it runs the ``train`` deployment's flow runs."""
    prefect = Path(sys.executable).parent / "prefect"
    env = {"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2", **os.environ}
    return subprocess.Popen(
        [
            str(prefect),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            f"{pool}-{provider_id}",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )


def stop_agent(settings: Settings, pool: str, provider_id: str, *, timeout_s: float = 60.0) -> int:
    """Send SIGINT to the agent of ``provider_id`` on ``pool`` and wait until it is gone; its pid."""
    path = record_path(settings, pool, provider_id)
    if not path.exists():
        raise MarketError(
            f"no agent of provider {provider_id} runs on pool {pool} (no record at {path}); "
            "`databright worker list` shows the running ones"
        )
    record = AgentRecord.load(path)
    if pid_alive(record.pid):
        os.kill(record.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while pid_alive(record.pid) and path.exists():
        if time.monotonic() > deadline:
            raise MarketError(
                f"the agent of {provider_id} (pid {record.pid}) did not stop within {timeout_s:g} s; "
                f"kill it (`kill {record.pid}`) and its offer will be withdrawn as lost"
            )
        time.sleep(0.2)
    return record.pid
