"""A seeded settlement simulation: random job streams, duplicate deliveries, crashes and retries.

``run_seed(seed, workdir)`` builds one exchange from ``random.Random(seed)`` alone, so a seed is a
complete, replayable scenario:

* two periods of random jobs (random trainers, providers and owners; values that are zero, negative,
  below the quantum, ordinary or large; payments from one minor unit up to 10**30), delivered in a
  random order, some of them twice (the same signed envelope stored again, the escrow and deposit
  repeated, the valuation offered again and refused as already stored);
* each period settled with a *crash* injected at a random step (``SimulatedCrash`` raised before or
  after the n-th call of a settlement or ledger function, so a transaction either rolls back or a
  committed step is left behind), then retried until it posts, sometimes settled once more;
* sometimes a late job for a posted period, which must raise ``SettlementConflict`` and post nothing.

Then ``check_seed`` compares the exchange with an independent reference: every (job, role, holder)
amount and every holder's balance recomputed here with ``fractions.Fraction`` and the largest
remainder method (its own code, not ``databright.settlement.rounding``), payouts per job equal to the
payment, transfer ids unique, each transfer in the audit chain exactly once, ``verify_ledger`` with
the audit chain, and every holder's statement total.

A failure names the seed; ``DATABRIGHT_SIM_SEED=<seed>`` reruns only that seed
(``test_settlement_simulation.py``).
"""

from __future__ import annotations

import importlib
import json
import math
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from settlement_testkit import (
    PERIOD,
    add_job,
    add_valuation,
    make_receipt,
    make_valuation,
    make_verify,
    make_verify_valuation,
    sign_receipt,
)

from databright.config import Settings
from databright.crypto import SigningKey
from databright.db import ExchangeDB
from databright.errors import SettlementConflict, TrainingError
from databright.ledger import deposit, escrow_job_payment, load_audit_key, verify_ledger
from databright.ledger.transfers import SETTLE_CODES, TransferCode
from databright.settlement import AllocationPolicy, Settlement, settle_period
from databright.settlement.statements import load_statement
from databright.storage.objectstore import LocalObjectStore

SIM_SEED_ENV = "DATABRIGHT_SIM_SEED"
PERIODS = ("2026-10", "2026-11")
OWNERS = ("alice", "bob", "carol", "dave", "erin", "frank", "Grace")
PROVIDERS = ("p1", "p2", "p3")
TRAINERS = ("acme", "globex")
VALUE_SCALE = 10**9  # databright.valuation.quantize.DEFAULT_SCALE, restated: the reference is independent
SESSION_KEY = SigningKey.from_seed(b"settlement-sim-session")
AUDIT_KEY = SigningKey.from_seed(b"settlement-sim-audit")

#: The policies a seed settles under: v1; other shares; a usage floor (no minimum payout: carry-over is
#: not part of settle_period yet).
POLICIES = (
    AllocationPolicy(name="sim", version=1),
    AllocationPolicy(name="sim", version=2, data_share_bps=5000, compute_share_bps=3333, fee_bps=1667),
    AllocationPolicy(name="sim", version=3, usage_floor_bps=1000),
)

#: Where a crash can strike: ``module:attribute`` (or ``module:Class.method``) as settlement looks it
#: up at call time. Between them they cover every step: claim, valued, proposed (allocations
#: stored), approved, inside the posting transaction, after posting, after the statements.
CRASH_TARGETS = (
    "databright.settlement.store:claim",
    "databright.settlement.period:verify_inputs",
    "databright.settlement.store:advance",
    "databright.settlement.store:replace_allocations",
    "databright.settlement.period:approve_period",
    "databright.settlement.period:settlement_transfers",
    "databright.ledger.store:Ledger.post",
    "databright.ledger.store:record_transfers",
    "databright.ledger.audit_log:append",
    "databright.settlement.period:write_statements",
    "databright.settlement.period:checkpoint",
)


class SimulatedCrash(Exception):
    """A process dying at a step. Deliberately not a ``DatabrightError``: nothing may treat it as input
    that was refused, and ``ExchangeDB.transaction`` rolls back on it as on any interruption."""


# --- the scenario ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimJob:
    job_id: str
    period: str
    trainer: str
    provider: str
    payment: int
    work_units: int
    owners: dict[str, tuple[int, int, float]]  # owner -> (rows_used, visits, value)


@dataclass(frozen=True)
class CrashPoint:
    target: str
    when: str  # "before" | "after" the real call
    nth: int  # on which call of the target

    def __str__(self) -> str:
        return f"{self.when} call {self.nth} of {self.target}"


def random_value(rng: random.Random) -> float:
    kind = rng.randrange(6)
    if kind == 0:
        return 0.0
    if kind == 1:
        return -rng.uniform(1e-6, 2.0)  # clipped to zero
    if kind == 2:
        return rng.uniform(0, 4e-10)  # below half a quantum: weight zero
    if kind == 3:
        return rng.uniform(1e3, 1e6)
    return rng.uniform(0, 1)


def random_payment(rng: random.Random) -> int:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randint(1, 9)
    if kind == 1:
        return rng.randint(10, 10**7)
    if kind == 2:
        return rng.randint(10**12, 10**18)
    return rng.randint(10**28, 10**30)


def random_job(rng: random.Random, index: int, period: str) -> SimJob:
    chosen = rng.sample(OWNERS, rng.randint(1, 4))
    owners = {o: (rng.randint(0, 40), rng.randint(0, 90), random_value(rng)) for o in chosen}
    if all(rows == 0 for rows, _, _ in owners.values()):
        # A job whose every owner has zero rows used and zero value has no basis for its data share
        # (settlement refuses it, tested elsewhere); give one owner the rows it read.
        first = chosen[0]
        owners[first] = (rng.randint(1, 40), *owners[first][1:])
    return SimJob(
        job_id=f"j-{period}-{index:02d}",
        period=period,
        trainer=rng.choice(TRAINERS),
        provider=rng.choice(PROVIDERS),
        payment=random_payment(rng),
        work_units=rng.randint(1, 5000),
        owners=owners,
    )


def random_crash(rng: random.Random) -> CrashPoint | None:
    if rng.random() < 0.15:
        return None
    return CrashPoint(rng.choice(CRASH_TARGETS), rng.choice(("before", "after")), rng.randint(1, 2))


# --- crashes ---------------------------------------------------------------------------------------


@contextmanager
def crash_at(point: CrashPoint | None) -> Iterator[list[int]]:
    """Patch ``point.target`` so that its ``nth`` call raises ``SimulatedCrash`` before or after doing
    its work; yields a one-element list holding how many crashes happened (0 or 1)."""
    crashed = [0]
    if point is None:
        yield crashed
        return
    module_name, _, attr = point.target.partition(":")
    owner: Any = importlib.import_module(module_name)
    name = attr
    if "." in attr:
        cls_name, name = attr.split(".")
        owner = getattr(owner, cls_name)
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        strike = calls[0] == point.nth
        if strike and point.when == "before":
            crashed[0] += 1
            raise SimulatedCrash(str(point))
        out = original(*args, **kwargs)
        if strike:
            crashed[0] += 1
            raise SimulatedCrash(str(point))
        return out

    setattr(owner, name, wrapper)
    try:
        yield crashed
    finally:
        setattr(owner, name, original)


# --- the independent reference -------------------------------------------------------------------


def reference_split(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Largest remainder with exact fractions: floors of the exact shares, then one unit each to the
    largest fractional parts, equal parts to the smaller key."""
    whole = sum(weights.values())
    shares = {k: Fraction(total * w, whole) for k, w in weights.items()}
    parts = {k: math.floor(s) for k, s in shares.items()}
    left = total - sum(parts.values())
    for k in sorted(shares, key=lambda k: (-(shares[k] - parts[k]), k))[:left]:
        parts[k] += 1
    return parts


def reference_weight(value: float) -> int:
    """``round_half_up(max(v, 0) * scale)`` on the float's exact binary value."""
    if value <= 0:
        return 0
    return math.floor(Fraction(value) * VALUE_SCALE + Fraction(1, 2))


def reference_amounts(policy: AllocationPolicy, job: SimJob) -> dict[tuple[str, str, str], int]:
    """(job, role, holder) -> minor units (a holder's usage-floor and value rows summed), for one job
    under ``policy``: the payment split by basis points, the usage floor (if any) by rows used, the
    rest by quantized value, or by rows used when no owner has a positive value."""
    split = reference_split(
        job.payment,
        {"data": policy.data_share_bps, "compute": policy.compute_share_bps, "fee": policy.fee_bps},
    )
    rows_used = {f"contributor:{o}": rows for o, (rows, _, _) in job.owners.items()}
    by_value = {f"contributor:{o}": reference_weight(v) for o, (_, _, v) in job.owners.items()}
    if sum(by_value.values()) == 0:
        by_value = rows_used
    floor = dict.fromkeys(rows_used, 0)
    value_part = split["data"]
    if policy.usage_floor_bps:
        parts = reference_split(
            split["data"], {"floor": policy.usage_floor_bps, "value": 10_000 - policy.usage_floor_bps}
        )
        if sum(rows_used.values()):
            floor, value_part = reference_split(parts["floor"], rows_used), parts["value"]
    by_holder = reference_split(value_part, by_value)
    out = {(job.job_id, "data", h): a + floor[h] for h, a in by_holder.items()}
    out[(job.job_id, "compute", f"provider:{job.provider}")] = split["compute"]
    out[(job.job_id, "fee", "exchange_fee")] = split["fee"]
    return out


# --- one seed --------------------------------------------------------------------------------------


@dataclass
class SeedRun:
    seed: int
    policy: AllocationPolicy
    db: ExchangeDB
    store: LocalObjectStore
    statements_dir: Path
    settled: list[SimJob] = field(default_factory=list)
    late: list[SimJob] = field(default_factory=list)
    settlements: dict[str, Settlement] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def deliver(run: SeedRun, job: SimJob, *, again: bool) -> None:
    """Store a job as the train and value steps do; ``again`` replays the same delivery."""
    receipt = make_receipt(
        job.job_id,
        job.owners,
        provider_id=job.provider,
        work_units=job.work_units,
        period=job.period,
    )
    envelope = sign_receipt(SESSION_KEY, receipt)
    if not again:
        add_job(
            run.db,
            run.store,
            SESSION_KEY,
            receipt,
            payment=job.payment,
            trainer_id=job.trainer,
            envelope=envelope,
        )
        return
    # The same signed envelope and escrow delivered a second time: stored once, escrowed once.
    escrow_job_payment(
        run.db, trainer_id=job.trainer, job_id=job.job_id, period=job.period, amount=job.payment
    )
    run.store.put_bytes(f"receipts/{job.period}/{job.job_id}.json", json.dumps(envelope).encode())
    try:
        add_valuation(run.store, run.db, SESSION_KEY, make_valuation(receipt, envelope))
    except TrainingError:
        run.events.append(f"duplicate valuation of {job.job_id} refused")
    else:
        raise AssertionError(f"seed {run.seed}: a second valuation of {job.job_id} was stored")


def settle(run: SeedRun, period: str) -> Settlement:
    return settle_period(
        run.db,
        run.store,
        period=period,
        policy=run.policy,
        verify=make_verify(SESSION_KEY.public_key),
        verify_valuation=make_verify_valuation(SESSION_KEY.public_key),
        statements_dir=run.statements_dir,
        audit_key=AUDIT_KEY,
    )


def settle_with_crash(run: SeedRun, period: str, point: CrashPoint | None) -> Settlement:
    """Settle once under ``point``; after a crash, retry (unpatched) until it posts."""
    with crash_at(point) as crashed:
        try:
            result: Settlement | None = settle(run, period)
        except SimulatedCrash:
            result = None
    run.events.append(f"{period}: crash {point}: {'struck' if crashed[0] else 'not reached'}")
    for _ in range(2):
        if result is not None:
            break
        result = settle(run, period)
    if result is None:
        raise AssertionError(f"seed {run.seed}: period {period} never posted after {point}")
    return result


def run_seed(seed: int, workdir: Path) -> SeedRun:
    rng = random.Random(seed)
    run = SeedRun(
        seed=seed,
        policy=rng.choice(POLICIES),
        db=ExchangeDB(None),
        store=LocalObjectStore(workdir / "store"),
        statements_dir=workdir / "statements",
    )
    # Every seed settles the first period; a third of them a second one too (cross-period isolation).
    periods = PERIODS if rng.random() < 0.35 else PERIODS[:1]
    jobs = [random_job(rng, i, period) for period in periods for i in range(rng.randint(1, 3))]
    for trainer in TRAINERS:
        funds = sum(j.payment for j in jobs) + 10**6
        deposit(run.db, trainer, funds, reference=f"wire-{trainer}")
        if rng.random() < 0.3:
            deposit(run.db, trainer, funds, reference=f"wire-{trainer}")  # a repeated wire: no-op
    order = jobs[:]
    rng.shuffle(order)
    for job in order:
        deliver(run, job, again=False)
        if rng.random() < 0.3:
            deliver(run, job, again=True)
    for period in periods:
        first = settle_with_crash(run, period, random_crash(rng))
        if rng.random() < 0.2:
            again = settle(run, period)
            if again != first:
                raise AssertionError(f"seed {seed}: settling {period} again returned another settlement")
        run.settlements[period] = first
        run.settled += [j for j in jobs if j.period == period]
        if rng.random() < 0.2:
            late = random_job(rng, 90, period)
            deposit(run.db, late.trainer, late.payment, reference=f"wire-{late.job_id}")
            deliver(run, late, again=False)
            try:
                settle(run, period)
            except SettlementConflict:
                run.late.append(late)
            else:
                raise AssertionError(f"seed {seed}: a late job in posted period {period} did not conflict")
    return run


# --- the checks -------------------------------------------------------------------------------------


def _int(x: Any) -> int:
    return int(x)


def check_seed(run: SeedRun) -> list[str]:
    """Every way the exchange differs from the reference, as readable lines (empty when it agrees)."""
    db, problems = run.db, []
    report = verify_ledger(db, store=run.store, audit_key=AUDIT_KEY.public_key)
    if not report.ok:
        problems += [f"verify_ledger: {c.detail}" for c in report.failures]

    total, distinct = db.query("SELECT count(*), count(DISTINCT transfer_id) FROM transfers")[0]
    if total != distinct:
        problems.append(f"{total - distinct} duplicate transfer ids")
    # Each transfer is in exactly one logged batch: the one entry whose subject is its created_at.
    logged = db.query(
        """SELECT t.transfer_id, count(a.seq) FROM transfers t
           LEFT JOIN audit_log a ON a.kind = 'transfers'
               AND a.subject = strftime(timezone('UTC', t.created_at), '%Y-%m-%dT%H:%M:%S.%f+00:00')
           GROUP BY t.transfer_id HAVING count(a.seq) <> 1"""
    )
    problems += [f"transfer {t[:12]} is in the audit log {n} times" for t, n in logged]

    expected: dict[tuple[str, str, str], int] = {}
    for job in run.settled:
        expected.update(reference_amounts(run.policy, job))
    stored = {
        (r[0], r[1], r[2]): _int(r[3])
        for r in db.query(
            "SELECT job_id, role, holder, sum(amount) FROM allocations GROUP BY job_id, role, holder"
        )
    }
    nonzero_stored = {k: v for k, v in stored.items() if v}
    nonzero_expected = {k: v for k, v in expected.items() if v}
    for key in sorted(set(nonzero_stored) | set(nonzero_expected)):
        if nonzero_stored.get(key, 0) != nonzero_expected.get(key, 0):
            problems.append(
                f"allocation {key}: stored {nonzero_stored.get(key, 0)}, "
                f"reference {nonzero_expected.get(key, 0)}"
            )

    settle_codes = [int(c) for c in SETTLE_CODES]
    legs = {
        r[0]: (_int(r[1]), r[2])
        for r in db.query(
            """SELECT job_id, sum(amount) FILTER (WHERE list_contains($1, code)),
                      count(*) FILTER (WHERE code = $2)
               FROM transfers WHERE job_id IS NOT NULL GROUP BY job_id""",
            [settle_codes, int(TransferCode.PAYOUT)],
        )
        if r[1] is not None
    }
    for job in run.settled:
        got = legs.get(job.job_id, (0, 0))[0]
        if got != job.payment:
            problems.append(f"job {job.job_id}: settlement legs {got} != payment {job.payment}")
    for job in run.late:
        if job.job_id in legs:
            problems.append(f"late job {job.job_id} of a posted period was settled")

    holders: dict[str, int] = {}
    for (_, _, holder), amount in expected.items():
        holders[holder] = holders.get(holder, 0) + amount
    balances = {
        r[0]: _int(r[1])
        for r in db.query(
            """SELECT account, sum(amount) FROM (
                   SELECT credit_account AS account, amount FROM transfers
                   UNION ALL SELECT debit_account, -amount FROM transfers)
               WHERE account LIKE 'contributor:%' OR account LIKE 'provider:%' OR account = 'exchange_fee'
               GROUP BY account"""
        )
    }
    for holder in sorted(set(holders) | set(balances)):
        if balances.get(holder, 0) != holders.get(holder, 0):
            problems.append(
                f"holder {holder}: ledger balance {balances.get(holder, 0)}, "
                f"reference {holders.get(holder, 0)}"
            )

    for period, settlement in run.settlements.items():
        for holder, amount in settlement.totals.items():
            if holder == "exchange_fee" or not amount:
                continue
            statement = load_statement(run.statements_dir, period, holder)
            if statement.total != amount or statement.allocation_root != settlement.allocation_root:
                problems.append(
                    f"statement {period}/{holder}: total {statement.total} (settled {amount}), root "
                    f"{statement.allocation_root[:12]} (settled {settlement.allocation_root[:12]})"
                )
    return problems


# --- file-backed homes for the crash and concurrency tests ---------------------------------------

#: A small period for the process-level tests: three jobs, one of them with no positive value.
HOME_SESSION_SEED = b"settlement-crash-session"
HOME_PAYMENTS = {"j-1": 1_000_000, "j-2": 333_333, "j-3": 7}
HOME_OWNERS = {
    "j-1": {"alice": (30, 60, 0.3), "bob": (10, 20, 0.1)},
    "j-2": {"bob": (5, 5, 0.25), "carol": (7, 14, 0.5)},
    "j-3": {"carol": (1, 1, -0.2), "dave": (3, 3, 0.0)},  # no positive value: split by rows used
}


def home_settings(home: Path) -> Settings:
    return Settings(home=home, period=PERIOD)


def prepare_home(home: Path) -> Path:
    """A home with the three jobs of PERIOD funded, receipted and valued; nothing settled. The audit
    key is created here, once, so copies share it (and no two runs race to create it)."""
    settings = home_settings(home).ensure_dirs()
    db, store = ExchangeDB(settings.db_path), LocalObjectStore(settings.store_dir)
    key = SigningKey.from_seed(HOME_SESSION_SEED)
    deposit(db, "acme", 2_000_000, reference="wire-1")
    for job_id, payment in HOME_PAYMENTS.items():
        receipt = make_receipt(job_id, HOME_OWNERS[job_id])
        add_job(db, store, key, receipt, payment=payment, trainer_id="acme")
    load_audit_key(settings.keys_dir)
    return home


def settle_home(home: Path, policy: AllocationPolicy | None = None) -> Settlement:
    """``settle_period`` on a home's database file, as the settle flow calls it (one ExchangeDB each)."""
    settings = home_settings(home)
    key = SigningKey.from_seed(HOME_SESSION_SEED)
    return settle_period(
        ExchangeDB(settings.db_path),
        LocalObjectStore(settings.store_dir),
        period=PERIOD,
        policy=policy or AllocationPolicy.load(settings.allocation_policy_path),
        verify=make_verify(key.public_key),
        verify_valuation=make_verify_valuation(key.public_key),
        statements_dir=settings.statements_dir,
        audit_key=load_audit_key(settings.keys_dir),
    )


def home_transfers(home: Path) -> list[tuple[Any, ...]]:
    """Every transfer's content (created_at left out: a rerun posts at another instant)."""
    return ExchangeDB(home_settings(home).db_path).query(
        "SELECT transfer_id, debit_account, credit_account, amount, ledger, code, period, settlement_id, "
        "job_id, memo FROM transfers ORDER BY transfer_id"
    )


def verify_home(home: Path) -> Any:
    """``verify_ledger`` of a home with its audit chain (the home's checkpoints and audit key)."""
    settings = home_settings(home)
    return verify_ledger(
        ExchangeDB(settings.db_path),
        store=LocalObjectStore(settings.store_dir),
        audit_key=load_audit_key(settings.keys_dir).public_key,
    )


def failure_message(seed: int, problems: list[str], events: list[str]) -> str:
    shown = "\n  ".join(problems[:20])
    return (
        f"settlement simulation seed {seed} failed ({len(problems)} problems):\n  {shown}\n"
        f"events: {'; '.join(events)}\n"
        f"rerun just this seed: {SIM_SEED_ENV}={seed} .venv/bin/python -m pytest -q "
        "tests/settlement/test_settlement_simulation.py -p no:cacheprovider"
    )


def run_and_check(seed: int, workdir: Path) -> tuple[list[str], list[str]]:
    """(problems, events) of one seed; an exception inside the run is a problem too."""
    try:
        run = run_seed(seed, workdir)
    except Exception as exc:  # any escape (a raw driver error included) is a finding for this seed
        return [f"the run raised {type(exc).__name__}: {exc}"], []
    return check_seed(run), run.events
