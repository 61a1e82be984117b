"""Settlement benchmark: one period settled end to end at 10k → 1M contributors.

``python -m benchmarks.settlement [--repeats K] [--no-full] [--quick] [--rung HOLDERS [--profile]]``
(``make bench`` should run it with the defaults; ``--rung`` times one ladder rung and prints its stages,
with ``--profile`` its cProfile summary too, saving nothing) writes, from a fixed seed, a synthetic
period straight into a fresh file-backed exchange home (DuckDB file + local object store): N
contributors, J jobs on P providers and T trainers, each job's payment deposited and escrowed
(``Ledger.post``, so the audit chain holds them), a job row, a real ``UsageReceipt`` naming R/J owners
(rows used, visits, value) signed by the provider's Ed25519 session key into a DSSE envelope in the
store, and a real ``ValuationReceipt`` bound to that envelope, signed the same way and kept with
``store_valuation``. The J receipts hold R usage rows ((job, owner) pairs); every contributor is used in
R/N jobs.

Then, in a child process per run (so peak RSS is the settlement's own: ``ru_maxrss``, cross-checked
by polling with psutil), on a fresh copy of the home:

* ``databright.settlement.settle_period`` end to end with the repository's allocation policy and
  in-process verifiers that open each envelope with the session key (real Ed25519 checks) and parse
  it into the real receipt types — inside the clock. Then ``audit_log.checkpoint`` (the signed Merkle
  root of the audit log, exported to the store). ``seconds`` = settle + checkpoint.
* Stages: timers wrap the library calls ``settle_period`` makes, by name (receipt loading, the
  verifiers, per-job checks with their escrow queries, ``allocate_job``, digests, the allocations
  table, ``settlement_transfers``, ``Ledger.post`` and its audit entries, state rows); each timer
  keeps its own time net of the timers nested in it, so stages add up to the total and what no timer
  covers is ``unattributed``. A name the library no longer has is listed under ``stages_missing``.
* Statements (1 JSON + 1 text file per holder) are measured apart: ``write_statements`` is handed the
  posted ``Settlement`` after the clock stops. Below ``--statements-full-max`` holders it runs whole;
  above, a sample of holders goes through the same per-holder steps and the stage is extrapolated
  (labelled so). Statements are built in one pass over the allocations (linear in holders), so
  ``make bench`` raises ``--statements-full-max`` to run them whole.

The ladder is (10k holders, 100 jobs, 100k rows) and (100k, 1k, 1M); the full (1M, 10k, 10M) runs only
when a power law fitted per stage to the two rungs predicts it under ``--full-limit-s`` and within
memory, otherwise the extrapolation is recorded, labelled, with its fitted exponents. One
``cProfile`` run of the first rung shows the costliest functions. Results go to
``benchmarks/results/settlement.json``: ``seconds_1m_holders`` and ``peak_rss_mb`` at the top
(measured or extrapolated, ``full_rung`` says which), every run, versions, machine and load average.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ingest import machine as machine_info

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
PERIOD = "2026-11"
PROVIDERS = 8
TRAINERS = 4
DATASET, DATASET_VERSION = "bench", 1
TARGET_S = 30.0
MB = 1024 * 1024
STATEMENT_SAMPLE = 200

# Library calls the timers attribute time to: attribute -> stage. Each is wrapped in every module
# below that has it (settle_period is being split into propose/approve/post, so names move between
# modules); a name found in none is reported under ``stages_missing``.
STAGE_MODULES = (
    "databright.settlement.period",
    "databright.settlement.inputs",
    "databright.settlement.store",
    "databright.ledger.store",
)
STAGE_TARGETS = {
    "completed_jobs": "load_jobs",
    "jobs_to_settle": "load_jobs",
    "load_envelope": "load_receipts",
    "load_valuation": "load_receipts",
    "_verify_all": "verify_loop",
    "_verify_jobs": "verify_loop",
    "verify_inputs": "verify_loop",
    "check_job": "check_jobs",
    "allocate_job": "allocate",
    "sort_allocations": "allocate",
    "inputs_digest": "digests",
    "allocation_root": "digests",
    "settlement_transfers": "build_transfers",
    "replace_allocations": "store_allocations",
    "record_allocations": "audit_allocations",
    "record_settlement": "state_rows",
    "claim": "state_rows",
    "advance": "state_rows",
    "Ledger.post": "ledger_post",
    "record_transfers": "audit_transfers",
}
# How the stages roll up into the brief's four (plus checkpoint).
GROUPS = {
    "load_and_verify": (
        "load_jobs",
        "load_receipts",
        "verify_usage",
        "verify_valuation",
        "check_jobs",
        "verify_loop",
    ),
    "allocate": ("allocate", "digests", "store_allocations", "audit_allocations", "build_transfers"),
    "post": ("ledger_post", "audit_transfers", "state_rows"),
}


@dataclass(frozen=True)
class Shape:
    holders: int
    jobs: int
    rows: int

    @property
    def label(self) -> str:
        return f"{self.holders:,} holders, {self.jobs:,} jobs, {self.rows:,} usage rows"


# The brief's ladder is 10k and 100k holders; the small rungs below them give repeats, whole statements
# and a fit before the big rungs are tried (each runs only when predicted under --rung-limit-s).
# Rungs keep 10 jobs per holder and 1,000 owners per job, so one size (usage rows) fits the ladder.
LADDER = (
    Shape(1_000, 10, 10_000),
    Shape(3_000, 30, 30_000),
    Shape(10_000, 100, 100_000),
    Shape(100_000, 1_000, 1_000_000),
)
FULL = Shape(1_000_000, 10_000, 10_000_000)
QUICK = Shape(1_000, 2, 2_000)


# --- keys and verifiers (the generator and the child derive the same keys from fixed seeds) ----


def provider_keys() -> dict[str, Any]:
    from databright.crypto import SigningKey

    return {
        f"prov-{p:02d}": SigningKey.from_seed(f"bench settlement session {p}".encode())
        for p in range(PROVIDERS)
    }


class SessionVerifier:
    """Opens an envelope with the session key its signature names (real Ed25519), then parses it into
    the real receipt type; what ``Settings.receipt_verifier`` does minus the attestation lookup."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.public = {k.public_key.key_id: k.public_key for k in keys.values()}

    def _open(self, envelope: dict[str, Any], payload_type: str) -> Any:
        from databright.crypto import open_envelope
        from databright.errors import IntegrityError, ReceiptRejected

        signatures = envelope.get("signatures") if isinstance(envelope, dict) else None
        keyid = signatures[0].get("keyid") if isinstance(signatures, list) and signatures else None
        key = self.public.get(keyid) if isinstance(keyid, str) else None
        if key is None:
            raise ReceiptRejected(f"envelope signed by unknown key {keyid!r}", reason="SIGNATURE_INVALID")
        try:
            return json.loads(open_envelope(envelope, payload_type, key))
        except IntegrityError as exc:
            raise ReceiptRejected(f"signature check failed: {exc}", reason="SIGNATURE_INVALID") from exc

    def usage(self, envelope: dict[str, Any]) -> Any:
        from databright.trust import USAGE_RECEIPT_TYPE, UsageReceipt

        return UsageReceipt.from_statement(self._open(envelope, USAGE_RECEIPT_TYPE))

    def valuation(self, envelope: dict[str, Any]) -> Any:
        from databright.trust import VALUATION_RECEIPT_TYPE
        from databright.trust.valuation_receipts import ValuationReceipt

        return ValuationReceipt.from_statement(self._open(envelope, VALUATION_RECEIPT_TYPE))


# --- the generator ------------------------------------------------------------------------------


def _hex(label: str) -> str:
    from databright.crypto import sha256_hex

    return sha256_hex(label.encode())


def generate(home: Path, shape: Shape, seed: int = 7) -> dict[str, Any]:
    """Write the synthetic period into a fresh home; return what was written."""
    import datetime as dt

    from databright.config import Settings
    from databright.crypto import digest_json
    from databright.ledger import ESCROW, Ledger, Transfer, TransferCode, deposit, trainer_account
    from databright.storage.objectstore import LocalObjectStore
    from databright.training.valuation_store import store_valuation
    from databright.trust import OwnerUsage, OwnerValue, UsageReceipt, sign_receipt, sign_valuation_receipt
    from databright.trust.valuation_receipts import ValuationReceipt

    if shape.rows % shape.jobs or shape.rows // shape.jobs > shape.holders:
        raise SystemExit(
            f"{shape.label}: rows must split evenly over jobs, at most one row per holder per job"
        )
    started = time.perf_counter()
    settings = Settings(home=home, project_root=PROJECT_ROOT, period=PERIOD).ensure_dirs()
    db, store = settings.exchange_db(), LocalObjectStore(settings.store_dir)
    rng = np.random.default_rng(seed)
    keys = provider_keys()
    providers = sorted(keys)
    per_job = shape.rows // shape.jobs
    payments = rng.integers(1_000_000, 50_000_000, size=shape.jobs)
    trainers = [f"trainer-{t}" for t in range(TRAINERS)]
    names = np.array([f"c{h:07d}" for h in range(shape.holders)], dtype=object)
    measurement, root = _hex("measurement"), _hex(f"{DATASET}-v{DATASET_VERSION}")
    issued = "2026-11-15T12:00:00+00:00"
    for t, trainer in enumerate(trainers[: shape.jobs]):  # jobs go round the trainers: job j to trainer j % T
        deposit(db, trainer, int(payments[t::TRAINERS].sum()), reference=f"bench-wire-{t}")
    escrows, job_rows = [], []
    for j in range(shape.jobs):
        job_id, provider, trainer = f"job-{j:06d}", providers[j % PROVIDERS], trainers[j % TRAINERS]
        # A contiguous block of holders per job, wrapping: every holder is used in rows/holders jobs.
        owners = names[(np.arange(per_job) + j * per_job) % shape.holders]
        rows_used = rng.integers(1, 20, size=per_job)
        visits = rows_used * rng.integers(1, 5, size=per_job)
        values = rng.normal(2e-4, 1e-4, size=per_job)  # a few negative: clipped by the policy
        work_units = int(visits.sum()) * 14
        receipt = UsageReceipt(
            period=PERIOD, job_id=job_id, run_id=f"run-{job_id}", provider_id=provider,
            attestation_result_id=f"ar-{provider}", assurance="simulated", measurement=measurement,
            task="tabular_logreg", dataset=DATASET, dataset_version=DATASET_VERSION, dataset_merkle_root=root,
            owners={
                str(o): OwnerUsage(int(r), int(v), float(x))
                for o, r, v, x in zip(owners, rows_used, visits, values, strict=True)
            },
            records_root=_hex(f"records-{job_id}"),
            valuation={"method": "knn-shapley", "params": {"k": 5}, "validation_digest": _hex("validation")},
            work_units=work_units, model_digest=_hex(f"model-{job_id}"), sequence=j // PROVIDERS,
            previous_receipt_digest=None, issued_at=issued,
        )  # fmt: skip
        envelope = sign_receipt(keys[provider], receipt)
        receipt_key = f"receipts/{PERIOD}/{job_id}.json"
        store.put_bytes(receipt_key, json.dumps(envelope).encode())
        valuation = ValuationReceipt(
            period=PERIOD, job_id=job_id, run_id=f"value-{job_id}", provider_id=provider,
            attestation_result_id=f"ar-{provider}", assurance="simulated", measurement=measurement,
            task="knn_shapley", dataset=DATASET, dataset_version=DATASET_VERSION, dataset_merkle_root=root,
            usage_receipt_digest=digest_json(envelope), model_digest=receipt.model_digest,
            validation_digest=_hex("validation"), method="knn-shapley", params={"k": 5}, seed=seed,
            valuation_digest=_hex(f"valuation-{job_id}"),
            owners={o: OwnerValue(u.rows_used, u.value) for o, u in receipt.owners.items()},
            values_root=_hex(f"values-{job_id}"), near_duplicate_groups=0, sequence=j // PROVIDERS,
            previous_receipt_digest=None, issued_at=issued,
        )  # fmt: skip
        values_table = json.dumps({o: u.value for o, u in receipt.owners.items()}).encode()
        store_valuation(db, store, valuation, sign_valuation_receipt(keys[provider], valuation), values_table)
        payment = int(payments[j])
        escrows.append(
            Transfer.create(
                {"kind": "escrow", "job": job_id}, debit_account=trainer_account(trainer),
                credit_account=ESCROW,
                amount=payment, code=TransferCode.ESCROW, period=PERIOD, job_id=job_id,
                memo=f"escrow job {job_id} of trainer {trainer}",
            )
        )  # fmt: skip
        job_rows.append(
            [job_id, PERIOD, trainer, DATASET, DATASET_VERSION, "tabular_logreg", payment, payment, provider,
             f"offer-{provider}", "completed", receipt_key, f"models/{job_id}.pt", receipt.model_digest,
             work_units, dt.datetime.now(dt.UTC)]
        )  # fmt: skip
    with db.transaction() as con:
        Ledger(db).post(con, escrows)
        con.executemany(
            """INSERT INTO jobs (job_id, period, trainer_id, dataset, dataset_version, task, payment,
                   budget, provider_id, offer_id, status, receipt_key, model_key, model_digest,
                   work_units, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            job_rows,
        )
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    return {
        "generate_s": time.perf_counter() - started,
        "payments_total": int(payments.sum()),
        "home_bytes": size,
        "owners_per_job": per_job,
        "jobs_per_holder": shape.rows / shape.holders,
    }


# --- the child: one timed settlement ------------------------------------------------------------


class StageClock:
    """Wall time per stage, each call's time net of the timed calls nested inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._nested: list[float] = []

    def wrap(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._nested.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                inner = self._nested.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self._nested:
                    self._nested[-1] += elapsed

        return timed

    def install(self) -> tuple[list[str], list[str]]:
        import importlib

        installed, wrapped_classes = [], set()
        for module_name in STAGE_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for attribute, stage in STAGE_TARGETS.items():
                owner: Any = module
                *path, name = attribute.split(".")
                for part in path:
                    owner = getattr(owner, part, None)
                if owner is None or not callable(getattr(owner, name, None)):
                    continue
                if path:  # a method: wrap it once on its class, wherever the class is imported
                    if id(owner) in wrapped_classes:
                        continue
                    wrapped_classes.add(id(owner))
                setattr(owner, name, self.wrap(getattr(owner, name), stage))
                installed.append(f"{module_name}.{attribute}")
        found = {i.rsplit(".", 2)[-1] if "Ledger." not in i else "Ledger.post" for i in installed}
        missing = [a for a in STAGE_TARGETS if a not in found]
        return installed, missing


def child(home: Path, out: Path, mode: str, statements_full_max: int) -> None:
    import psutil

    from databright import settlement as settlement_pkg
    from databright.config import Settings
    from databright.settlement import AllocationPolicy, settle_period
    from databright.settlement import period as period_module
    from databright.storage.objectstore import LocalObjectStore

    settings = Settings(home=home, project_root=PROJECT_ROOT, period=PERIOD)
    db, store = settings.exchange_db(), LocalObjectStore(settings.store_dir)
    db.query("SELECT 1")  # the schema check of a first connection is not the settlement's cost
    policy = AllocationPolicy.load(settings.allocation_policy_path)
    verifier = SessionVerifier(provider_keys())
    clock = StageClock()
    installed, missing = clock.install() if mode == "time" else ([], [])
    verify_usage = clock.wrap(verifier.usage, "verify_usage") if mode == "time" else verifier.usage
    verify_valuation = (
        clock.wrap(verifier.valuation, "verify_valuation") if mode == "time" else verifier.valuation
    )
    captured: list[Any] = []
    # Statements are measured apart (below); settle_period hands its Settlement to this stand-in.
    period_module.write_statements = lambda settlement, folder: captured.append(settlement) or []  # type: ignore[assignment,func-returns-value]
    rss_ready = psutil.Process().memory_info().rss

    def settle() -> Any:
        return settle_period(
            db, store, period=PERIOD, policy=policy, verify=verify_usage, verify_valuation=verify_valuation,
            approver="bench", statements_dir=settings.statements_dir,
        )  # fmt: skip

    report: dict[str, Any] = {
        "rss_ready_mb": rss_ready / MB,
        "stages_installed": installed,
        "stages_missing": missing,
    }
    started = time.perf_counter()
    if mode == "profile":
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(settle)
        report["profile"] = summarise_profile(profiler)
    else:
        result = settle()
    report["settle_s"] = time.perf_counter() - started
    report["checkpoint_s"], report["checkpoint"] = run_checkpoint(settings, db, store)
    report["seconds"] = report["settle_s"] + report["checkpoint_s"]
    report["peak_rss_settle_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report["stages_s"] = clock.seconds
    report["stage_calls"] = clock.calls
    report["unattributed_s"] = report["settle_s"] - sum(clock.seconds.values()) if mode == "time" else None
    report |= check_result(db, result)
    if mode == "time" and captured and statements_full_max >= 0:
        report["statements"] = measure_statements(settlement_pkg, captured[0], settings, statements_full_max)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(report, default=str), encoding="utf-8")


def run_checkpoint(settings: Any, db: Any, store: Any) -> tuple[float, dict[str, Any]]:
    """Sign and export the audit checkpoint (a no-op if the settlement already signed one)."""
    try:
        from databright.ledger.audit_log import checkpoint, load_audit_key
    except ImportError as exc:  # the audit chain is another engineer's work in progress
        return 0.0, {"available": False, "why": str(exc)}
    key = load_audit_key(settings.keys_dir)
    started = time.perf_counter()
    signed = checkpoint(db, store, key)
    return time.perf_counter() - started, {"available": True, "tree_size": signed.tree_size}


def check_result(db: Any, result: Any) -> dict[str, Any]:
    """Counts of what was posted, and the money check: the period's settle legs move every payment."""
    posted, moved = db.query(
        "SELECT count(*), COALESCE(SUM(amount) FILTER (WHERE debit_account = 'escrow'), 0::HUGEINT) "
        "FROM transfers WHERE period = ? AND settlement_id IS NOT NULL",
        [PERIOD],
    )[0]
    payments = int(db.query("SELECT SUM(payment) FROM jobs WHERE period = ?", [PERIOD])[0][0])
    if result.state != "posted" or int(moved) != payments:
        raise SystemExit(f"settlement ended {result.state} moving {moved} of {payments} escrowed minor units")
    return {
        "state": result.state,
        "transfers_posted": int(posted),
        "allocations": len(result.allocations),
        "holders_paid": len(result.totals),
        "audit_entries": int(db.query("SELECT count(*) FROM audit_log")[0][0]),
    }


def measure_statements(pkg: Any, settlement: Any, settings: Any, full_max: int) -> dict[str, Any]:
    """``write_statements`` whole, or the same per-holder steps on a sample, extrapolated."""
    from databright.settlement import statements as st

    holders = len({a.holder for a in settlement.allocations}) + len({j.trainer_id for j in settlement.jobs})
    folder = settings.statements_dir
    if holders <= full_max:
        started = time.perf_counter()
        paths = pkg.write_statements(settlement, folder)
        return {
            "holders": holders,
            "files": len(paths),
            "seconds": time.perf_counter() - started,
            "measured": "whole",
        }
    contributors = sorted({a.holder for a in settlement.allocations if a.role == "data"})
    sample = contributors[:: max(1, len(contributors) // STATEMENT_SAMPLE)][:STATEMENT_SAMPLE]
    target = folder / PERIOD
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    index = st._index(settlement)  # built once per period by build_statements, as here
    index_s = time.perf_counter() - started
    started = time.perf_counter()
    for holder in sample:  # the steps write_statements takes per contributor (build_statements' loop body)
        lines = st._contributor_lines(settlement, holder, index)
        statement = st.Statement(
            **st._header(settlement, holder, "contributor"),
            lines=tuple(lines),
            total=sum(x["amount"] for x in lines),
        )
        name = st.statement_filename(holder)
        st._write_atomic(
            target / f"{name}.json", json.dumps(statement.to_dict(), indent=2, sort_keys=True) + "\n"
        )
        st._write_atomic(target / f"{name}.txt", st.render_statement(statement))
    per_holder = (time.perf_counter() - started) / len(sample)
    return {
        "holders": holders,
        "sampled_holders": len(sample),
        "per_holder_s": per_holder,
        "index_s": index_s,
        "seconds": index_s + per_holder * holders,
        "measured": f"EXTRAPOLATED from {len(sample)} sampled contributors × {holders:,} holders",
    }


def summarise_profile(profiler: Any) -> dict[str, Any]:
    import pstats

    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        return f"{file.split('site-packages/')[-1].split(str(PROJECT_ROOT) + '/')[-1]}:{line}({func})"

    own = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:20]
    ours = [(k, v) for k, v in raw.items() if "databright/" in k[0] and "site-packages" not in k[0]]
    cumulative = sorted(ours, key=lambda kv: kv[1][3], reverse=True)[:25]
    return {
        "total_s": stats.total_tt,  # type: ignore[attr-defined]
        "top_own_time_s": {name(k): round(v[2], 4) for k, v in own},
        "databright_cumulative_s": {name(k): round(v[3], 4) for k, v in cumulative},
    }


# --- the parent: generate, run children, fit, write ------------------------------------------------


def _poll_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.02)
    except psutil.NoSuchProcess:
        return


def run_child(home: Path, out: Path, mode: str, statements_full_max: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.settlement",
        "--child",
        mode,
        str(home),
        str(out),
        str(statements_full_max),
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child_proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
    stop, peak = threading.Event(), [0]
    poller = threading.Thread(target=_poll_rss, args=(child_proc.pid, stop, peak), daemon=True)
    poller.start()
    code = child_proc.wait()
    stop.set()
    poller.join()
    if code != 0:
        raise SystemExit(f"the settlement child ({mode}, {home}) failed with exit code {code}")
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    report["peak_rss_polled_mb"] = peak[0] / MB
    return report


def grouped(stages: dict[str, float], unattributed: float, checkpoint_s: float) -> dict[str, float]:
    out = {group: sum(stages.get(s, 0.0) for s in names) for group, names in GROUPS.items()}
    covered = {s for names in GROUPS.values() for s in names}
    out["other"] = unattributed + sum(v for s, v in stages.items() if s not in covered)
    out["checkpoint"] = checkpoint_s
    return out


def bench_rung(
    shape: Shape, work: Path, repeats: int, profile: bool, statements_full_max: int
) -> dict[str, Any]:
    say(f"generating {shape.label} ...")
    source = work / f"home-{shape.holders}"
    generated = generate(source, shape)
    say(f"  generated in {generated['generate_s']:.1f} s ({generated['home_bytes'] / MB:.0f} MB)")
    runs = []
    for i in range(repeats):
        home = work / f"run-{shape.holders}-{i}"
        shutil.copytree(source, home)
        runs.append(run_child(home, work / f"child-{shape.holders}-{i}.json", "time", statements_full_max))
        shutil.rmtree(home, ignore_errors=True)
        r = runs[-1]
        say(
            f"  run {i + 1}: settle {r['settle_s']:.2f} s + checkpoint {r['checkpoint_s']:.2f} s, "
            f"peak RSS {r['peak_rss_settle_mb']:.0f} MB"
        )
    profiled = None
    if profile:
        home = work / f"profile-{shape.holders}"
        shutil.copytree(source, home)
        profiled = run_child(home, work / f"profile-{shape.holders}.json", "profile", statements_full_max)
        shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    seconds = [r["seconds"] for r in runs]
    median_run = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    stage_names = sorted({s for r in runs for s in r["stages_s"]})
    stages = {s: statistics.median(r["stages_s"].get(s, 0.0) for r in runs) for s in stage_names}
    unattributed = statistics.median(r["unattributed_s"] for r in runs)
    checkpoint_s = statistics.median(r["checkpoint_s"] for r in runs)
    return {
        "shape": asdict(shape),
        "label": shape.label,
        "generated": generated,
        "seconds_median": statistics.median(seconds),
        "seconds_runs": seconds,
        "settle_s_runs": [r["settle_s"] for r in runs],
        "checkpoint_s_runs": [r["checkpoint_s"] for r in runs],
        "peak_rss_settle_mb": max(r["peak_rss_settle_mb"] for r in runs),
        "peak_rss_polled_mb": max(r["peak_rss_polled_mb"] for r in runs),
        "rss_ready_mb": median_run["rss_ready_mb"],
        "stages_median_s": stages,
        "unattributed_s": unattributed,
        "groups_median_s": grouped(stages, unattributed, checkpoint_s),
        "stage_calls": median_run["stage_calls"],
        "stages_missing": median_run["stages_missing"],
        "statements": median_run.get("statements"),
        "posted": {
            k: median_run[k] for k in ("transfers_posted", "allocations", "holders_paid", "audit_entries")
        },
        "checkpoint": median_run["checkpoint"],
        "profile": profiled["profile"] if profiled else None,
    }


def extrapolate(rungs: list[dict[str, Any]], shape: Shape) -> dict[str, Any]:
    """Per group, ``t = a · size^b`` through the two largest rungs (size = usage rows); summed."""
    lo, hi = rungs[-2], rungs[-1]
    x0, x1, x = lo["shape"]["rows"], hi["shape"]["rows"], shape.rows
    fits, predicted = {}, {}
    for group, t1 in hi["groups_median_s"].items():
        t0 = lo["groups_median_s"][group]
        b = math.log(t1 / t0) / math.log(x1 / x0) if t0 > 0 and t1 > 0 else 1.0
        fits[group] = {"exponent": b, "seconds_at_rungs": [t0, t1]}
        predicted[group] = t1 * (x / x1) ** b
    s0, s1 = lo["statements"]["seconds"], hi["statements"]["seconds"]
    b_st = math.log(s1 / s0) / math.log(x1 / x0)
    # Memory above the ready interpreter grows linearly with the rows held as Python objects.
    r0, r1 = lo["peak_rss_settle_mb"] - lo["rss_ready_mb"], hi["peak_rss_settle_mb"] - hi["rss_ready_mb"]
    per_row_mb = (r1 - r0) / (x1 - x0)
    return {
        "label": "EXTRAPOLATED, not measured",
        "shape": asdict(shape),
        "method": "per stage group t = a·rows^b through the two measured rungs; RSS linear in rows",
        "fits": fits,
        "groups_s": predicted,
        "seconds": sum(predicted.values()),
        "statements_exponent": b_st,
        "statements_s": s1 * (x / x1) ** b_st,
        "peak_rss_mb": hi["peak_rss_settle_mb"] + per_row_mb * (x - x1),
        "rss_mb_per_usage_row": per_row_mb,
    }


def note(results: dict[str, Any]) -> str:
    seconds, rss, full = results["seconds_1m_holders"], results["peak_rss_mb"], results["full_rung"]
    how = "measured" if full == "measured" else "EXTRAPOLATED (the full rung was not run)"
    parts = [
        (
            f"target met: {seconds:.1f} s"
            if seconds <= TARGET_S
            else f"target missed: {seconds:,.0f} s against ≤ {TARGET_S:g} s, "
            f"{seconds / TARGET_S:,.0f}× too slow"
        )
        + f" for 1M holders / 10k jobs / 10M rows ({how}); peak RSS {rss:,.0f} MB ({how})"
    ]
    for rung in results["ladder"]:
        groups = ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(rung["groups_median_s"].items(), key=lambda kv: -kv[1])
        )
        parts.append(
            f"{rung['label']}: {rung['seconds_median']:.2f} s ({groups}); "
            f"peak RSS {rung['peak_rss_settle_mb']:.0f} MB"
        )
    if "extrapolation" in results:
        fits = results["extrapolation"]["fits"]
        parts.append(
            "fitted exponents (time ∝ rows^b): "
            + ", ".join(f"{k} {v['exponent']:.2f}" for k, v in fits.items())
        )
        parts.append(
            "statements (1 JSON + 1 text file per holder, measured apart; built in one pass, linear in "
            "holders) ≈ "
            f"{results['extrapolation']['statements_s']:,.0f} s at 1M holders, EXTRAPOLATED"
        )
    load = results["machine"]
    parts.append(
        f"{load['cpus']} CPUs; load average before {load['load_average_before']}, "
        f"after {load['load_average_after']}"
    )
    return "; ".join(parts)


def rung_summary(rung: dict[str, Any]) -> dict[str, Any]:
    """One rung's total, memory, stages (costliest first) and profile, for ``--rung``."""
    stages = sorted(rung["stages_median_s"].items(), key=lambda kv: -kv[1])
    return {
        "label": rung["label"],
        "seconds_median": round(rung["seconds_median"], 3),
        "seconds_runs": [round(x, 3) for x in rung["seconds_runs"]],
        "peak_rss_settle_mb": round(rung["peak_rss_settle_mb"]),
        "stages_median_s": {k: round(v, 3) for k, v in stages},
        "unattributed_s": round(rung["unattributed_s"], 3),
        "checkpoint_s": round(rung["groups_median_s"]["checkpoint"], 3),
        "posted": rung["posted"],
        "stages_missing": rung["stages_missing"],
        "profile": rung["profile"],
    }


def versions() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        **{n: metadata.version(n) for n in ("duckdb", "cryptography", "numpy")},
    }


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.settlement", description="settle_period at scale"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each of the two small rungs (larger rungs run once)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"one tiny rung ({QUICK.label}), results not saved"
    )
    parser.add_argument(
        "--rung",
        type=int,
        choices=[s.holders for s in LADDER],
        help="time only the ladder rung with this many holders and print its stages; results not saved",
    )
    parser.add_argument("--profile", action="store_true", help="with --rung: add one cProfile run")
    parser.add_argument(
        "--no-statements",
        action="store_true",
        help="with --rung: skip the statements measurement (its sample takes ~20 min at 100k holders)",
    )
    parser.add_argument("--no-full", action="store_true", help="never run the full rung; extrapolate it")
    parser.add_argument(
        "--full-limit-s", type=float, default=600.0, help="run the full rung below this prediction"
    )
    parser.add_argument(
        "--rung-limit-s", type=float, default=400.0, help="run a ladder rung below this prediction"
    )
    parser.add_argument(
        "--statements-full-max", type=int, default=2_000, help="holders up to which statements run whole"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "HOME", "OUT", "FULLMAX"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        mode, home, out, full_max = args.child
        child(Path(home), Path(out), mode, int(full_max))
        return {}
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    load_before, started = [round(x, 2) for x in os.getloadavg()], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="databright-bench-settlement-") as tmp:
        work = Path(tmp)
        if args.rung:
            shape = next(s for s in LADDER if s.holders == args.rung)
            full_max = -1 if args.no_statements else args.statements_full_max  # -1: the child skips them
            rung = bench_rung(shape, work, args.repeats, args.profile, full_max)
            print(json.dumps(rung_summary(rung), indent=2))
            return rung
        if args.quick:
            rung = bench_rung(QUICK, work, 1, False, args.statements_full_max)
            print(
                json.dumps(
                    {
                        k: rung[k]
                        for k in (
                            "label",
                            "seconds_median",
                            "peak_rss_settle_mb",
                            "groups_median_s",
                            "statements",
                            "posted",
                            "stages_missing",
                        )
                    },
                    indent=2,
                )
            )
            if args.out:
                args.out.write_text(json.dumps(rung, indent=2) + "\n", encoding="utf-8")
            return rung
        ladder: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        for i, shape in enumerate(LADDER):
            if len(ladder) >= 2:
                guess = extrapolate(ladder, shape)
                # Statements above --statements-full-max run on a sample, so they do not decide.
                if guess["seconds"] > args.rung_limit_s:
                    say(f"{shape.label}: predicted {guess['seconds']:,.0f} s > --rung-limit-s; not run")
                    skipped.append(guess)
                    continue
            ladder.append(
                bench_rung(shape, work, args.repeats if i < 2 else 1, i == 0, args.statements_full_max)
            )
        prediction = extrapolate(ladder, FULL)
        memory_mb = machine_info()["memory_gb"] * 1024
        fits = prediction["seconds"] < args.full_limit_s and prediction["peak_rss_mb"] < 0.8 * memory_mb
        verdict = "running it" if fits and not args.no_full else "not run"
        say(
            f"full rung predicted {prediction['seconds']:,.0f} s, "
            f"{prediction['peak_rss_mb']:,.0f} MB: {verdict}"
        )
        full = (
            bench_rung(FULL, work, 1, False, args.statements_full_max) if fits and not args.no_full else None
        )
    results: dict[str, Any] = {
        "case": (
            "settle_period end to end (allocation, posting, checkpoint) on a synthetic period; "
            f"target {FULL.label} ≤ {TARGET_S:g} s"
        ),
        "seconds_1m_holders": full["seconds_median"] if full else prediction["seconds"],
        "peak_rss_mb": full["peak_rss_settle_mb"] if full else prediction["peak_rss_mb"],
        "full_rung": "measured" if full else "extrapolated",
        "statements_seconds_1m_holders": full["statements"]["seconds"]
        if full
        else prediction["statements_s"],
        "targets": {
            "seconds_max": TARGET_S,
            "met": (full["seconds_median"] if full else prediction["seconds"]) <= TARGET_S,
        },
        "note": "",
        "ladder": ladder,
        "rungs_not_run": skipped,
    }
    if full:
        results["full"] = full
    results["extrapolation"] = prediction
    results["benchmark_wall_s"] = time.perf_counter() - started
    results["versions"] = versions()
    results["machine"] = machine_info() | {
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    results["note"] = note(results)
    out = args.out or RESULTS / "settlement.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {k: results[k] for k in ("seconds_1m_holders", "peak_rss_mb", "full_rung", "note")},
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
