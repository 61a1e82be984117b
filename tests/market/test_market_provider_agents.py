"""Provider agents on a real Prefect server: two ``databright worker start`` processes attest their
workers, open offers and run Prefect workers on a process work pool; a run of the ``train``
deployment on that pool trains one job data-parallel across both agents; a frozen agent loses its
offer; ``databright worker stop`` leaves no process behind.

The tests run in file order and share one server, one exchange home and the two agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server_processes import prefect_server

from databright.config import Settings
from databright.datasets import register_file
from databright.datasets.synthetic import make_period
from databright.ledger import deposit, verify_ledger
from databright.market import list_offers
from databright.market.agent import AgentRecord, record_path
from databright.market.remote_pool import withdraw_lost_offers
from databright.processes import pid_alive, prefect_env, stop_popen
from databright.training.jobs import list_jobs

pytestmark = pytest.mark.integration  # a Prefect server, two agents, their Prefect workers and enclaves

PERIOD = "2026-11"
POOL = "test-providers"
PROVIDERS = ("alpha", "beta")
PAYMENT = 20_000_000
DATABRIGHT = str(Path(sys.executable).parent / "databright")


@dataclass
class Stack:
    settings: Settings
    url: str
    env: dict[str, str]
    agents: dict[str, subprocess.Popen[bytes]]
    validation: Path
    logs: Path

    def record(self, provider: str) -> AgentRecord:
        return AgentRecord.load(record_path(self.settings, POOL, provider))

    def cli(self, *args: str) -> str:
        done = subprocess.run([DATABRIGHT, *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def agent_log(self, provider: str) -> str:
        return (self.logs / f"{provider}.log").read_text(errors="replace")


def _wait_for_records(stack: Stack, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    for provider, proc in stack.agents.items():
        while not record_path(stack.settings, POOL, provider).exists():
            if proc.poll() is not None:
                pytest.fail(f"agent {provider} exited with {proc.returncode}:\n{stack.agent_log(provider)}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"agent {provider} wrote no record in {timeout_s} s:\n{stack.agent_log(provider)}"
                )
            time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("agents")
    settings = Settings(home=root / "home", period=PERIOD).ensure_dirs()
    db = settings.exchange_db()
    synthetic = make_period(
        root / "inputs", seed=5, clean_rows=40, noisy_rows=20, copied_rows=5, own_rows=10, validation_rows=30
    )
    for owner, path in synthetic.contributions.items():
        register_file(settings, db, dataset="demo", contract_kind="tabular-v1", owner=owner, path=path)
    deposit(db, "acme", 5 * PAYMENT, reference="wire-1")
    del db
    (root / "prefect").mkdir()
    with prefect_server(root / "prefect", pytest.fail) as url:
        env = prefect_env(root / "prefect") | {
            "PREFECT_API_URL": url,
            "DATABRIGHT_HOME": str(settings.home),
            "DATABRIGHT_PERIOD": PERIOD,
        }
        agents: dict[str, subprocess.Popen[bytes]] = {}
        logs = root / "logs"
        logs.mkdir()
        try:
            for provider in PROVIDERS:
                agents[provider] = subprocess.Popen(
                    [DATABRIGHT, "worker", "start", "--provider", provider, "--price", "0.000001",
                     "--capacity", "500000000", "--pool", POOL, "--heartbeat", "0.5"],
                    env=env, stdout=(logs / f"{provider}.log").open("wb"), stderr=subprocess.STDOUT,
                )  # fmt: skip
            stack = Stack(settings, url, env, agents, synthetic.validation, logs)
            _wait_for_records(stack)
            yield stack
        finally:
            for proc in agents.values():  # agents (and their Prefect workers) before the server
                stop_popen(proc)


@contextlib.contextmanager
def _prefect_client_at(url: str) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


def test_a_train_deployment_run_quotes_and_trains_one_job_across_both_agents(stack: Stack) -> None:
    from prefect.deployments import run_deployment

    from flows.train import deploy_train

    with _prefect_client_at(stack.url):
        deploy_train(POOL)
        config = {
            "dataset": "demo", "validation": str(stack.validation), "budget": PAYMENT,
            "trainer": "acme", "workers": 2, "pool": POOL,
        }  # fmt: skip
        run = run_deployment("train/train", parameters={"config": config}, timeout=300)
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state}\n--- alpha ---\n{stack.agent_log('alpha')}\n--- beta ---\n{stack.agent_log('beta')}"
    )
    db = stack.settings.exchange_db()
    parts = [job for job in list_jobs(db) if job.status == "completed"]
    assert sorted(p.provider_id for p in parts) == list(PROVIDERS)
    assert len({p.model_digest for p in parts}) == 1 and all(p.receipt_key for p in parts)
    # No payment was named: the job was quoted (data price + compute estimate) within the budget,
    # which was escrowed whole; settlement refunds what the quote left unused.
    quoted = sum(p.payment for p in parts)
    assert 0 < quoted < PAYMENT and sum(p.budget for p in parts) == PAYMENT
    assert verify_ledger(db).ok
    assert all(stack.record(p).jobs_run == 1 for p in PROVIDERS)
    listing = stack.cli("worker", "list", "--pool", POOL)
    assert listing.count("live") == 2 and "alpha" in listing and "beta" in listing


def test_a_lost_heartbeat_withdraws_the_agent_s_offer(stack: Stack) -> None:
    alpha = stack.record("alpha")
    os.kill(alpha.pid, signal.SIGSTOP)  # frozen: alive, but no heartbeat
    try:
        time.sleep(5 * alpha.heartbeat_s + 1.0)
        lost = withdraw_lost_offers(stack.settings, stack.settings.exchange_db(), POOL)
    finally:
        os.kill(alpha.pid, signal.SIGCONT)
    assert list(lost) == ["alpha"] and "heartbeat" in lost["alpha"]
    status = {o.offer_id: o.status for o in list_offers(stack.settings.exchange_db())}
    assert status[alpha.offer_id] == "withdrawn" and status[stack.record("beta").offer_id] == "open"


def test_worker_stop_withdraws_offers_and_leaves_no_process(stack: Stack) -> None:
    records = {p: stack.record(p) for p in PROVIDERS}
    for provider in PROVIDERS:
        out = stack.cli("worker", "stop", "--provider", provider, "--pool", POOL)
        assert f"agent {records[provider].pid} stopped" in out
        assert stack.agents[provider].wait(30) == 0, stack.agent_log(provider)
    for record in records.values():
        for pid in (record.pid, record.prefect_worker_pid, record.enclave_pid):
            assert pid is not None and not pid_alive(pid), (
                f"process {pid} of {record.provider_id} is still running"
            )
        assert not record_path(stack.settings, POOL, record.provider_id).exists()
    assert {o.status for o in list_offers(stack.settings.exchange_db())} == {"withdrawn"}
    assert json.loads(json.dumps(records["alpha"].kex_envelope))  # the record published a real key
