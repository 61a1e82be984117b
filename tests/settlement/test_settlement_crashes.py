"""A settlement killed (``os._exit``) at each step, then run again: nothing lost, nothing paid twice.

One small period (three jobs) is prepared once in a file-backed home (DuckDB file, object store,
keys); every case copies that folder. A child process (a script written under the test's tmp dir)
settles the copy with one step patched to call ``os._exit(137)`` — no ``finally``, no rollback, no
flush, as when a process is killed — and the parent checks what the crash left on disk (the state it
reached), reruns ``settle_period`` normally, and compares with a crash-free reference run on another
copy: ``verify_ledger`` with the audit chain, the same allocation root and inputs digest, the very
same transfers (ids and content: no duplicate, no loss), each in the audit log once, statements.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
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
from settlement_testkit import PERIOD

from databright.db import ExchangeDB
from databright.ledger.transfers import SETTLE_CODES
from databright.settlement import Settlement

pytestmark = pytest.mark.integration

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parents[1]

#: step -> (what the child patches so that reaching it kills the process, the state left on disk)
STEPS = {
    "claim": "claimed",  # claimed and committed; receipts not yet verified
    "valued": "valued",  # inputs digest committed; the proposing transaction dies before commit
    "proposed": "proposed",  # allocation rows committed; dies before the approval
    "approved": "approved",  # approval committed; dies before the posting transaction starts
    "posting": "approved",  # inside Ledger.post, every transfer inserted, before COMMIT
    "posted": "posted",  # posting committed; dies before the statements
    "statements": "posted",  # statements written; dies before the audit checkpoint
    "checkpoint": "posted",  # numbered checkpoint exported; dies before latest.json
}

CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests_dir!r})
    from pathlib import Path

    from settlement_testkit import PERIOD, make_verify, make_verify_valuation

    import databright.ledger.store as ledger_store
    import databright.settlement.period as period
    import databright.settlement.store as rows
    from databright.config import Settings
    from databright.crypto import SigningKey
    from databright.ledger import load_audit_key
    from databright.ledger.audit_log import LATEST
    from databright.settlement import AllocationPolicy, settle_period
    from databright.storage.objectstore import LocalObjectStore

    home, step = Path(sys.argv[1]), sys.argv[2]


    def die(*args, **kwargs):
        os._exit(137)


    def after(original):
        def wrapper(*args, **kwargs):
            original(*args, **kwargs)
            os._exit(137)
        return wrapper


    if step == "claim":
        period.verify_inputs = die
    elif step == "valued":
        advance = rows.advance
        def advance_unless_proposing(con, p, state, **kw):
            return die() if state == "proposed" else advance(con, p, state, **kw)
        rows.advance = advance_unless_proposing
    elif step == "proposed":
        period.approve_period = die
    elif step == "approved":
        period.settlement_transfers = die
    elif step == "posting":
        ledger_store.Ledger.post = after(ledger_store.Ledger.post)
    elif step == "posted":
        period.write_statements = die
    elif step == "statements":
        period.checkpoint = die
    elif step == "checkpoint":
        put = LocalObjectStore.put_bytes
        LocalObjectStore.put_bytes = lambda self, key, data: die() if key == LATEST else put(self, key, data)
    else:
        raise SystemExit(f"unknown step {{step}}")

    settings = Settings(home=home, period=PERIOD)
    key = SigningKey.from_seed({session_seed!r})
    settle_period(
        settings.exchange_db(),
        LocalObjectStore(settings.store_dir),
        period=PERIOD,
        policy=AllocationPolicy.load(settings.allocation_policy_path),
        verify=make_verify(key.public_key),
        verify_valuation=make_verify_valuation(key.public_key),
        statements_dir=settings.statements_dir,
        audit_key=load_audit_key(settings.keys_dir),
    )
    sys.exit(0)  # the patched step was never reached
    """
)


def statement_files(home: Path) -> list[str]:
    folder = home_settings(home).statements_dir / PERIOD
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A home with three funded, receipted and valued jobs of PERIOD, nothing settled."""
    return prepare_home(tmp_path_factory.mktemp("crash") / "prepared")


@pytest.fixture(scope="module")
def reference(prepared: Path) -> tuple[Path, Settlement]:
    home = prepared.parent / "reference"
    shutil.copytree(prepared, home)
    return home, settle_home(home)


def crash(prepared: Path, tmp_path: Path, step: str) -> Path:
    home = tmp_path / "home"
    shutil.copytree(prepared, home)
    script = tmp_path / "crash_settle.py"
    script.write_text(CHILD.format(tests_dir=str(TESTS_DIR), session_seed=HOME_SESSION_SEED))
    done = subprocess.run(
        [sys.executable, str(script), str(home), step],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 137, f"the child did not die at {step!r}:\n{done.stdout}\n{done.stderr}"
    return home


@pytest.mark.parametrize("step", list(STEPS))
def test_a_crash_at_each_step_then_rerun_settles_exactly_once(prepared, reference, tmp_path, step):
    ref_home, ref = reference
    home = crash(prepared, tmp_path, step)
    settings = home_settings(home)
    db = ExchangeDB(settings.db_path)

    # What the killed run left behind: the state it had committed, and no half-posted period.
    state = db.query("SELECT state FROM settlements WHERE period = ?", [PERIOD])[0][0]
    assert state == STEPS[step]
    settle_legs = db.query(
        "SELECT count(*) FROM transfers WHERE list_contains(?, code)", [[int(c) for c in SETTLE_CODES]]
    )[0][0]
    assert (settle_legs > 0) == (state == "posted")
    if step == "posted":
        assert statement_files(home) == []

    again = settle_home(home)
    assert again.state == "posted"
    assert again.allocation_root == ref.allocation_root
    assert again.inputs_digest == ref.inputs_digest
    assert dict(again.totals) == dict(ref.totals)
    assert home_transfers(home) == home_transfers(ref_home)  # the same ids and content: none twice, none lost
    assert statement_files(home) == statement_files(ref_home) != []

    report = verify_home(home)
    assert report.ok, str(report)
    assert report.check("audit_chain") and all(c.ok for c in report.check("audit_chain"))
    for job_id, payment in HOME_PAYMENTS.items():
        assert f"job {job_id}: pools and fee" in str(report)
        legs = db.query(
            "SELECT sum(amount) FROM transfers WHERE job_id = ? AND list_contains(?, code)",
            [job_id, [int(c) for c in SETTLE_CODES]],
        )[0][0]
        assert int(legs) == payment
    # Each transfer is in exactly one logged batch: the one entry whose subject is its created_at.
    logged = db.query(
        """SELECT count(*) FROM transfers t WHERE (SELECT count(*) FROM audit_log a
               WHERE a.kind = 'transfers'
                 AND a.subject = strftime(timezone('UTC', t.created_at), '%Y-%m-%dT%H:%M:%S.%f+00:00')
           ) <> 1"""
    )[0][0]
    assert logged == 0

    # And the period is final: one more run is a no-op with the same result.
    assert settle_home(home) == again
    assert home_transfers(home) == home_transfers(ref_home)


def test_the_reference_run_is_itself_sound(reference):
    home, ref = reference
    report = verify_home(home)
    assert report.ok, str(report)
    # j-3: 7 minor units -> data 5 (carol 1 row, dave 3 rows: 1.25 / 3.75 -> 1 / 4), compute 1, fee 1.
    assert ref.totals["contributor:dave"] == 4
    assert sum(ref.totals.values()) == sum(HOME_PAYMENTS.values())
