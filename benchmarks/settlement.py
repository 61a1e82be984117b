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

This module is the parent (ladder, fit, report); ``settlement_period`` generates the period and
``settlement_child`` times one settlement in the child process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.ingest import machine as machine_info
from benchmarks.settlement_child import MB, child
from benchmarks.settlement_period import FULL, LADDER, PROJECT_ROOT, QUICK, Shape, generate

RESULTS = Path(__file__).parent / "results"
TARGET_S = 30.0

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
