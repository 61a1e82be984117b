"""Review before money moves: the settle flow pauses on a real Prefect server until finance decides.

A real ``prefect server start`` runs on a free port with its own SQLite home. The exchange side runs
in a subprocess against it (so the flows have the home's real verifier keys): the demo settles
2026-11 without review (``review=False``), then one job is trained and valued in 2026-12 and the
settle flow proposes it and pauses. This test, acting as finance, reads the run's artifacts through
the API and rejects (``resume_review``): nothing is posted, and proposing the unchanged inputs again
is refused. A second job changes the inputs; the next run pauses again and is approved through the
raw ``resume_flow_run`` API, as the UI's form does, and only then are its transfers posted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import server_processes

from databright.processes import stop_popen

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REVIEW = "2026-12"
FINANCE = "finance@example.com"

EXCHANGE_SIDE = """
# Worker processes start with multiprocessing's "spawn", which re-imports this script: hence main().
import json, os, sys
from databright.config import Settings
from databright.errors import SettlementError
from databright.ledger import deposit
from databright.ledger.transfers import SETTLE_CODES
from databright.money import parse_amount
from flows.demo import DATASET, TRAINER, run_demo
from flows.settle import SettleConfig, settle_flow
from flows.train import TrainConfig, train_flow
from flows.value import ValueConfig, value_flow


def say(**event):
    print("EVENT " + json.dumps(event), flush=True)


def main(review):
    settings = Settings.from_env()
    report = run_demo(settings, seed=7)
    say(step="demo", state=report.settlement.state, approver=report.settlement.approver)
    db = settings.exchange_db()
    deposit(db, TRAINER, parse_amount("20"), reference="review-test")
    os.environ["DATABRIGHT_PERIOD"] = review  # the flows read the period from the environment

    def settled_transfers():
        sql = "SELECT count(*) FROM transfers WHERE period = ? AND list_contains(?, code)"
        return db.query(sql, [review, [int(c) for c in SETTLE_CODES]])[0][0]

    def train(seed):
        job = dict(dataset=DATASET, validation=str(report.synthetic.validation), trainer=TRAINER, seed=seed)
        train_flow(TrainConfig(payment=parse_amount("4"), **job))
        value_flow(ValueConfig(period=review))

    config = SettleConfig(period=review, poll_interval_s=1, review_timeout_s=600)
    train(21)
    say(step="trained", jobs=1)
    first = settle_flow(config)
    say(step="decided", state=first.state, approver=first.approver, transfers=settled_transfers())
    try:
        settle_flow(config)
        say(step="unchanged", error=None)
    except SettlementError as exc:
        say(step="unchanged", error=str(exc), transfers=settled_transfers())
    train(22)
    say(step="trained", jobs=2)
    second = settle_flow(config)
    say(step="decided", state=second.state, approver=second.approver, transfers=settled_transfers(),
        jobs=len(second.jobs), totals=second.totals, revenue=second.total_paid)


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_processes.prefect_server(tmp_path_factory.mktemp("prefect-server"), pytest.fail) as url:
        yield url


class ExchangeSide:
    """The subprocess running the flows; its ``EVENT`` lines arrive on a queue."""

    def __init__(self, url: str, home: Path) -> None:
        script = home.parent / "exchange_side.py"
        script.write_text(EXCHANGE_SIDE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DATABRIGHT_"))}
        env |= {
            "DATABRIGHT_HOME": str(home),
            "DATABRIGHT_PERIOD": "2026-11",
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(home.parent / "prefect-client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(script), REVIEW],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("EVENT "):
                self.events.put(json.loads(line[6:]))

    def alive_or_fail(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"the exchange side exited with {self.proc.returncode}:\n{''.join(self.output[-80:])}"
            )

    def event(self, step: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                self.alive_or_fail()
                continue
            if event["step"] == step:
                return event
            pytest.fail(f"expected step {step!r}, got {event}")
        pytest.fail(f"no {step!r} in {timeout} s:\n{''.join(self.output[-80:])}")


def paused_run(side: ExchangeSide, seen: set[Any], timeout: float = 300) -> Any:
    """The settle run paused for REVIEW that is not one of ``seen``."""
    from flows.settle import paused_review_runs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        side.alive_or_fail()
        runs = [r for r in paused_review_runs(REVIEW) if r.id not in seen]
        if runs:
            assert len(runs) == 1
            return runs[0]
        time.sleep(0.5)
    pytest.fail(f"no settle run paused for {REVIEW} in {timeout} s:\n{''.join(side.output[-80:])}")


def artifacts_of(run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {a.key: a for a in found}


def run_state(run_id: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.state is not None
    return run.state.type.value


def wait_final(run_id: Any, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (state := run_state(run_id)) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(0.3)
    return state


def minor(text: str) -> int:
    """``"2.800000 DBX"`` -> 2 800 000, by integer arithmetic."""
    units, fraction = text.split()[0].split(".")
    return int(units) * 1_000_000 + int(fraction)


def check_review_artifacts(artifacts: dict[str, Any]) -> None:
    summary = artifacts[f"settlement-{REVIEW}"].data
    for expected in (
        f"Settlement {REVIEW}: proposed",
        "| revenue | 4.000000 DBX |",
        "| data pool | 2.800000 DBX (70.00 %) |",
        "| compute pool |",
        "| exchange fee | 0.400000 DBX (10.00 %) |",
        "**simulated**",
        "allocation root",
    ):
        assert expected in summary, (expected, summary)
    holders = json.loads(artifacts[f"top-holders-{REVIEW}"].data)
    amounts = [minor(h["amount"]) for h in holders]
    assert [h["rank"] for h in holders] == [str(i) for i in range(1, len(holders) + 1)]
    assert amounts == sorted(amounts, reverse=True)
    assert {h["holder"] for h in holders} >= {"contributor:alice", "contributor:bob", "exchange_fee"}
    assert sum(amounts) == 4_000_000  # every holder fits in the top 20: the whole payment
    datasets = json.loads(artifacts[f"datasets-{REVIEW}"].data)
    assert [(d["dataset"], d["version"], d["jobs"]) for d in datasets] == [("tabular-demo", "v3", "1")]
    chart = artifacts[f"settlement-chart-{REVIEW}"].data
    match = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart)
    assert match, chart[:200]
    png = base64.b64decode(match.group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert f"sha256 `{hashlib.sha256(png).hexdigest()}`" in chart


def test_settle_flow_posts_only_after_approval_through_the_api(prefect_server, tmp_path):
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from databright.config import Settings
    from databright.ledger import verify_ledger
    from flows.settle import resume_review

    home = tmp_path / "home"
    side = ExchangeSide(prefect_server, home)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            demo = side.event("demo", timeout=400)
            assert (demo["state"], demo["approver"]) == ("posted", "demo-auto")  # review=False: no pause
            side.event("trained")

            first = paused_run(side, set())
            check_review_artifacts(artifacts_of(first.id))
            assert resume_review(REVIEW, "reject", FINANCE, "valuation of carol looks off") == first.id
            rejected = side.event("decided")
            assert (rejected["state"], rejected["approver"], rejected["transfers"]) == (
                "rejected",
                FINANCE,
                0,
            )
            assert wait_final(first.id) == "COMPLETED"
            unchanged = side.event("unchanged")
            assert "inputs are unchanged" in unchanged["error"] and unchanged["transfers"] == 0

            side.event("trained")
            second = paused_run(side, {first.id})
            assert artifacts_of(second.id)[f"datasets-{REVIEW}"].data.count('"jobs": "2"') == 1
            with pytest.raises(RuntimeError, match="Reason"):  # the server validates the form's schema
                resume_flow_run(second.id, run_input={"decision": "maybe", "approver": FINANCE})
            assert run_state(second.id) == "PAUSED"
            resume_flow_run(second.id, run_input={"decision": "approve", "approver": FINANCE, "reason": "ok"})
            posted = side.event("decided")
            assert wait_final(second.id) == "COMPLETED"
        side.proc.wait(60)
        assert side.proc.returncode == 0, "".join(side.output[-80:])
    finally:
        stop_popen(side.proc)

    assert (posted["state"], posted["approver"], posted["jobs"]) == ("posted", FINANCE, 2)
    assert posted["revenue"] == 8_000_000 and sum(posted["totals"].values()) == 8_000_000
    assert posted["transfers"] > 0
    db = Settings.from_env({"DATABRIGHT_HOME": str(home), "DATABRIGHT_PERIOD": REVIEW}).exchange_db()
    state, approver, reason = db.query(
        "SELECT state, approver, reason FROM settlements WHERE period = ?", [REVIEW]
    )[0]
    assert (state, approver, reason) == ("posted", FINANCE, "ok")
    paid = db.query(
        "SELECT holder, sum(amount) FROM allocations WHERE period = ? GROUP BY holder ORDER BY holder",
        [REVIEW],
    )
    assert {h: int(a) for h, a in paid} == posted["totals"]
    report = verify_ledger(db)
    assert report.ok, str(report)
