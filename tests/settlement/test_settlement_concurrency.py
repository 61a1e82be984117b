"""Two settlements of one period at once — two threads on one database file, and a second process.

Whatever the interleaving, exactly one posting commits: the transfers are exactly those of a single
run (same ids and content), each logged once in the audit chain, and ``verify_ledger`` holds. The
loser either finds the period posted (and returns the same ``Settlement``) or fails; it must fail
with a ``SettlementError`` that says another run was settling and that running again is safe (two
threads that meet inside the posting transaction lose on DuckDB's primary key; settlement
translates that). Then: same inputs again post nothing; different inputs for the posted period
raise ``SettlementConflict``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from settlement_sim import (
    HOME_PAYMENTS,
    HOME_SESSION_SEED,
    home_settings,
    home_transfers,
    prepare_home,
    settle_home,
    verify_home,
)
from settlement_testkit import PERIOD, add_job, make_receipt

import databright.ledger.store as ledger_store
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import DatabrightError, SettlementConflict, SettlementError
from databright.settlement import AllocationPolicy, Settlement
from databright.storage.objectstore import LocalObjectStore

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_home(tmp_path_factory.mktemp("concurrent") / "prepared")


@pytest.fixture(scope="module")
def reference(prepared: Path) -> tuple[list[tuple[object, ...]], Settlement]:
    home = prepared.parent / "reference"
    shutil.copytree(prepared, home)
    settlement = settle_home(home)
    return home_transfers(home), settlement


@pytest.fixture
def home(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(prepared, copy)
    return copy


def assert_settled_once(home: Path, reference: tuple[list[tuple[object, ...]], Settlement]) -> None:
    transfers, settlement = reference
    assert home_transfers(home) == transfers  # one posting's transfers: none twice, none lost
    report = verify_home(home)
    assert report.ok, str(report)
    db = ExchangeDB(home_settings(home).db_path)
    state, root = db.query("SELECT state, allocation_root FROM settlements WHERE period = ?", [PERIOD])[0]
    assert (state, root) == ("posted", settlement.allocation_root)
    twice = db.query(
        "SELECT subject FROM audit_log WHERE kind = 'transfers' GROUP BY subject HAVING count(*) > 1"
    )
    assert twice == []
    posted = db.query(
        """SELECT count(*) FROM audit_log
           WHERE kind = 'settlement-state' AND subject = ? AND body LIKE '%"state":"posted"%'""",
        [PERIOD],
    )[0][0]
    assert posted == 1  # the move to posted was committed once


def race_in_threads(home: Path, *, meet_in_posting: bool, monkeypatch) -> list[object]:
    """Two threads settle ``home`` at once (each with its own ExchangeDB on the file, as two flow
    runs in one process would). Without ``meet_in_posting`` both start together (they usually
    collide at the claim). With it, the second starts once the first is inside ``Ledger.post``'s
    transaction and both are held there until each has entered it, so both insert the same
    transfers. Returns each thread's Settlement or exception."""
    barrier = threading.Barrier(2, timeout=30)
    first_in_post = threading.Event()
    if meet_in_posting:
        post = ledger_store.Ledger.post

        def meeting_post(self, con, transfers):  # type: ignore[no-untyped-def]
            first_in_post.set()
            with contextlib.suppress(threading.BrokenBarrierError):  # reported by the outcomes
                barrier.wait()
            return post(self, con, transfers)

        monkeypatch.setattr(ledger_store.Ledger, "post", meeting_post)
    outcomes: list[object] = [None, None]

    def run(index: int) -> None:
        try:
            if not meet_in_posting:
                barrier.wait()
            outcomes[index] = settle_home(home)
        except BaseException as exc:  # recorded and judged by the caller
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    threads[0].start()
    if meet_in_posting:
        assert first_in_post.wait(30), "the first run never reached Ledger.post"
    threads[1].start()
    for t in threads:
        t.join(60)
    return outcomes


def test_two_threads_meeting_in_posting_commit_once(home, reference, monkeypatch):
    outcomes = race_in_threads(home, meet_in_posting=True, monkeypatch=monkeypatch)
    won = [o for o in outcomes if isinstance(o, Settlement)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert won[0].allocation_root == reference[1].allocation_root
    assert_settled_once(home, reference)
    # The loser's retry is a no-op returning the posted settlement.
    monkeypatch.undo()
    assert settle_home(home) == won[0]
    assert_settled_once(home, reference)


def test_the_losing_thread_gets_a_clear_databright_error(home, reference, monkeypatch):
    outcomes = race_in_threads(home, meet_in_posting=True, monkeypatch=monkeypatch)
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(lost) == 1, outcomes
    assert isinstance(lost[0], SettlementError), f"{type(lost[0]).__module__}.{type(lost[0]).__name__}"
    assert "another run was settling period" in str(lost[0]) and "run again" in str(lost[0])
    assert_settled_once(home, reference)


def test_two_threads_started_together_settle_once(home, reference, monkeypatch):
    """A free race: the loser may lose at any step, or finish after the winner and find it posted."""
    outcomes = race_in_threads(home, meet_in_posting=False, monkeypatch=monkeypatch)
    won = [o for o in outcomes if isinstance(o, Settlement)]
    assert won, outcomes
    assert all(s.allocation_root == reference[1].allocation_root for s in won)
    assert_settled_once(home, reference)
    assert settle_home(home).allocation_root == reference[1].allocation_root
    assert_settled_once(home, reference)


CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {tests_dir!r})
    from pathlib import Path

    from settlement_sim import settle_home

    from databright.errors import DatabrightError

    home, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    try:
        out = {{"ok": settle_home(home).allocation_root}}
    except DatabrightError as exc:
        out = {{"databright_error": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:
        out = {{"raw_error": f"{{type(exc).__module__}}.{{type(exc).__name__}}", "message": str(exc)}}
    print(json.dumps(out))
    """
)


def test_a_second_process_settling_at_once_commits_once(home, reference, tmp_path):
    script = tmp_path / "race_settle.py"
    script.write_text(CHILD.format(tests_dir=str(TESTS_DIR)))
    go = tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, str(script), str(home), str(go)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # let the child import databright and wait on the go file
        go.touch()
        try:
            mine: object = settle_home(home)
        except DatabrightError as exc:
            mine = exc
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    theirs = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"crashed": stderr}
    assert "raw_error" not in theirs and "crashed" not in theirs, theirs
    roots = [mine.allocation_root] if isinstance(mine, Settlement) else []
    roots += [theirs["ok"]] if "ok" in theirs else []
    assert roots, (mine, theirs)  # at least one of them settled
    assert set(roots) == {reference[1].allocation_root}
    assert_settled_once(home, reference)


def test_same_inputs_post_nothing_and_different_inputs_conflict(home, reference):
    first = settle_home(home)
    before = home_transfers(home)
    assert settle_home(home) == first
    assert home_transfers(home) == before

    # Another policy for the posted period: a conflict, nothing posted.
    settings = home_settings(home)
    policy = AllocationPolicy.load(settings.allocation_policy_path)
    other = AllocationPolicy.from_mapping({**policy.to_dict(), "version": policy.version + 1})
    with pytest.raises(SettlementConflict, match=f"period {PERIOD} is already posted"):
        settle_home(home, other)
    assert home_transfers(home) == before

    # A late job for the posted period: a conflict; only its own escrow is new.
    db, store = ExchangeDB(settings.db_path), LocalObjectStore(settings.store_dir)
    add_job(
        db,
        store,
        SigningKey.from_seed(HOME_SESSION_SEED),
        make_receipt("j-late", {"erin": (2, 2, 0.5)}),
        payment=10_000,
        trainer_id="acme",
    )
    with pytest.raises(SettlementConflict):
        settle_home(home)
    new = [t for t in home_transfers(home) if t not in before]
    assert [(t[8], t[3]) for t in new] == [("j-late", 10_000)]
    report = verify_home(home)
    assert report.ok, str(report)
    assert sum(HOME_PAYMENTS.values()) == sum(first.totals.values())
