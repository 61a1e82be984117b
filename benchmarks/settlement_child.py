"""The settlement benchmark's child process: one timed ``settle_period`` on a copy of a generated
home, with per-stage timers, the checkpoint, the result checks and the statements measured apart."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks import timing
from benchmarks.settlement_period import PERIOD, PROJECT_ROOT, SessionVerifier, provider_keys

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
# --- the child: one timed settlement ------------------------------------------------------------


class StageClock(timing.StageClock):
    """The shared clock, installed on the settlement library's calls named in ``STAGE_TARGETS``."""

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
