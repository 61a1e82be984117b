"""Training benchmark: what attestation, metering and in-run valuation cost a training job.

``python -m benchmarks.training [--repeats K] [--rows N] [--val M] [--quick] [--out PATH]`` writes one
dataset version to a temporary folder the way a release hands it to a worker — ``N`` rows of 8 Gaussian
features and a 0/1 label (``benchmarks.inrun.problem``: a noisy linear rule, 10 % of labels flipped)
plus ``record_id`` and ``owner`` (200 owners), in two Parquet files, with its Merkle root, and a clean
validation file of ``M`` rows — and trains on it, ``K`` times, every variant once per repeat, in a
new seeded random order each repeat, all in this one process with torch on one CPU thread:

* ``tabular_logreg`` / **plain_torch**: the textbook ``torch.optim.SGD`` loop on the same standardised
  rows, model, batches and seed (``benchmarks.inrun.plain_torch``): no checks, no metering, nothing
  signed;
* ``tabular_logreg`` / **meter_replay**: the metering alone — ``UsageMeter.record`` over the same
  batches (drawn before the clock);
* ``tabular_logreg`` / **off**: the enclave task's ``train`` with ``inrun: false`` — metered SGD, the
  same weights as the plain loop, bit for bit;
* ``tabular_logreg`` / **on**: the same with in-run contributions (the task's default);
* ``tabular_logreg`` / **run_job**: ``databright.training.runner.run_job`` on a plain ``JobSpec`` — what
  runs inside a worker for a job: read the version's files, recompute every record id and the Merkle
  root, read and digest the validation file, train (metered, in-run on), build the in-run valuation,
  the per-owner usage and the records root, write and digest the model, sign the usage receipt;
* ``tabular_mlp`` / **off** and **on**: the one-hidden-layer MLP task, in-run contributions off and on.

Sections of the result, ``benchmarks/results/training.json`` (fractions: 0.03 = 3 %):

* ``attested``: ``run_job`` against the plain loop. The runner refuses a task output without in-run
  contributions (``runner._contributions``: the receipt carries one per record), so it cannot run with
  in-run valuation off; the attested path is therefore reported two ways — ``metering_only`` (the
  task's ``train`` with ``inrun: false`` vs the plain loop) and ``full_run_job`` (``run_job`` with in-run
  on, nothing subtracted; the top-level ``attested_overhead``) — and, derived and labelled so,
  ``run_job_without_inrun_derived`` (``run_job`` minus the measured in-run cost). ``breakdown`` splits
  ``run_job``'s wall time by stage (timers wrap the runner's calls by name, net of nested ones), in
  three groups: record verification, training, receipt and digests.
* ``tasks``: in-run valuation on vs off per task; the top-level ``inrun_overhead`` is the worse of the
  two (``benchmarks.inrun`` does the same for ``tabular_logreg`` alone, at its own size).
* ``data_parallel``: two workers vs one (``benchmarks.data_parallel.two_workers_vs_one``): ``run_job``
  of ``tabular_mlp`` in one worker process and as a two-worker torch.distributed job, samples per
  second of each and the speedup, on this machine's cores (``--no-parallel`` skips it).

Medians of wall-clock and of this process's CPU seconds (``time.process_time``) are both recorded,
with every run and the load average before and after: the machine is shared. ``--quick`` (a few
thousand rows, 2 epochs, one repeat) checks the pipeline in seconds and saves nothing unless ``--out``
is given. A benchmark, not a test: no time is asserted; the model bytes and contributions are.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.data_parallel import PARALLEL_CASES, two_workers_vs_one
from benchmarks.ingest import machine as machine_info
from benchmarks.inrun import TARGET_OVERHEAD as TARGET_INRUN
from benchmarks.inrun import (
    check_inrun_outputs,
    inrun_cases,
    plain_torch,
    problem,
    recall_lowest,
    versions,
)
from benchmarks.timing import StageClock
from databright.config import PROJECT_ROOT
from databright.crypto import SigningKey, merkle_root_hex, sha256_hex
from databright.datasets.canonical import record_ids
from databright.datasets.contracts import Schema
from databright.training import JobOutcome, JobSpec, TrainOutput, UsageMeter, load_task, run_job
from databright.trust.measurement import measure_task

RESULTS = Path(__file__).parent / "results"
ENCLAVE_TASKS = PROJECT_ROOT / "enclave_tasks"
TARGET_ATTESTED = 0.03
TASKS = ("tabular_logreg", "tabular_mlp")
ATTESTED_TASK = "tabular_logreg"
FEATURES = tuple(f"f{i}" for i in range(8))
OWNERS = 200
SEED = 0
QUICK = {"rows": 3_000, "val": 200, "repeats": 1, "epochs": 2}

# run_job's calls, by the name the runner module looks them up under -> stage; a name the runner no
# longer has is left out (its time falls into "unattributed"). The task's train is wrapped apart.
RUNNER_STAGES = {
    "load_dataset": "read_data_files",
    "record_ids": "recompute_record_ids",
    "merkle_root_hex": "merkle_root",
    "merkle_root_digests": "merkle_root",
    "verify_records": "compare_ids",
    "shard_of": "feature_arrays",
    "feature_arrays": "feature_arrays",
    "load_validation": "validation_file",
    "digest_file": "validation_file",
    "load_task": "load_task",
    "_contributions": "inrun_valuation_result",
    "owner_usage": "owner_usage",
    "records_root": "records_root",
    "_write_atomic": "model_file_and_digest",
    "sha256_hex": "model_file_and_digest",
    "sign_receipt": "sign_receipt",
}
GROUPS = {
    "record_verification": (
        "read_data_files",
        "recompute_record_ids",
        "merkle_root",
        "compare_ids",
        "feature_arrays",
        "validation_file",
    ),
    "training": ("load_task", "train"),
    "receipt_and_digests": (
        "inrun_valuation_result",
        "owner_usage",
        "records_root",
        "model_file_and_digest",
        "sign_receipt",
        "unattributed",
    ),
}
UNATTRIBUTED = "unattributed"  # records.parquet, the UsageReceipt's own checks, JobOutcome


# --- inputs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Version:
    """A dataset version on disk as ``datasets.release`` hands it over, and which labels were flipped."""

    schema: Schema
    files: tuple[Path, ...]
    validation: Path
    merkle_root: str
    flipped: np.ndarray


def write_version(folder: Path, rows: int, val: int, seed: int) -> Version:
    """``rows`` records in two Parquet files (schema columns, record_id, owner) and a validation file."""
    x, y, xv, yv, flipped = problem(rows, val, seed)
    columns = [{"name": f, "dtype": "float", "nullable": False} for f in FEATURES]
    schema = Schema.from_dict(
        {
            "columns": [*columns, {"name": "label", "dtype": "int", "nullable": False}],
            "features": list(FEATURES),
            "label": "label",
        }
    )
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame["label"] = y
    ids = record_ids(frame, schema)
    frame["record_id"] = ids
    frame["owner"] = [f"owner-{i % OWNERS:03d}" for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    split = rows * 7 // 10  # a first version and a later delta
    files = (folder / "part-0.parquet", folder / "part-1.parquet")
    frame.iloc[:split].to_parquet(files[0], index=False)
    frame.iloc[split:].to_parquet(files[1], index=False)
    validation = pd.DataFrame(xv, columns=list(FEATURES))
    validation["label"] = yv
    validation.to_parquet(folder / "validation.parquet", index=False)
    root = merkle_root_hex([bytes.fromhex(i) for i in ids])
    return Version(schema, files, folder / "validation.parquet", root, flipped)


def job_inputs(spec: JobSpec, schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays ``run_job`` trains on, read by its own functions: the same values *and* memory layout
    (column-major from pandas), which decide the last bits of the mean, the standardised rows and the
    weights, so that every variant trains on exactly what ``run_job`` does."""
    from databright.training.runner import feature_arrays, load_dataset, load_validation

    dataset, _ = load_dataset(spec, schema)
    x, y = feature_arrays(dataset, schema, "benchmark version")
    return (x, y, *load_validation(Path(spec.validation_file), schema))


def job_spec(version: Version, task: str, overrides: dict[str, Any], output_dir: Path) -> JobSpec:
    return JobSpec(
        job_id="bench-job",
        period="2026-11",
        run_id="bench-run",
        provider_id="bench-provider",
        task=task,
        dataset="bench",
        dataset_version=1,
        data_files=tuple(str(p) for p in version.files),
        expected_merkle_root=version.merkle_root,
        schema=version.schema.to_dict(),
        validation_file=str(version.validation),
        config=overrides,
        seed=SEED,
        attestation_result_id="ar-bench",
        assurance="simulated",
        output_dir=str(output_dir),
    )


def batches(rows: int, config: dict[str, Any], seed: int) -> list[np.ndarray]:
    """Every step's row indices, in order: the batches the task and the plain loop draw from ``seed``."""
    shuffler, size = np.random.default_rng(seed), config["batch_size"]
    steps = []
    for _ in range(config["epochs"]):
        order = shuffler.permutation(rows)
        steps.extend(order[start : start + size] for start in range(0, rows, size))
    return steps


def meter_replay(rows: int, steps: list[np.ndarray]) -> np.ndarray:
    """The metering alone: ``UsageMeter.record`` over the task's batches, nothing else."""
    meter = UsageMeter(rows)
    for batch in steps:
        meter.record(batch)
    return meter.visits


# --- the attested run, with its stages timed ----------------------------------------------------


@contextmanager
def staged(clock: StageClock) -> Iterator[None]:
    """Time ``run_job``'s calls by stage while the block runs: the runner's module-level names, and
    the loaded task's ``train``."""
    from databright.training import runner

    load = runner.load_task

    def load_task_timed(tasks_dir: Path, name: str) -> Any:
        task = load(tasks_dir, name)
        return dataclasses.replace(task, train=clock.wrap(task.train, "train"))

    runner.load_task = load_task_timed  # type: ignore[assignment]
    try:
        with clock.patched(runner, RUNNER_STAGES):
            yield
    finally:
        runner.load_task = load


def attested_job(spec: JobSpec, key: SigningKey, measurement: str, stages: list[dict[str, float]]) -> Any:
    """One ``run_job``; appends its seconds per stage to ``stages``."""
    clock = StageClock()
    started = time.perf_counter()  # the timers' own set-up counts as unattributed, not as nothing
    with staged(clock):
        outcome = run_job(
            spec,
            key,
            sequence=0,
            previous_receipt_digest=None,
            measurement=measurement,
            enclave_tasks_dir=ENCLAVE_TASKS,
        )
    total = time.perf_counter() - started
    stages.append({**clock.seconds, UNATTRIBUTED: total - sum(clock.seconds.values())})
    return outcome


# --- the sections ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def attested_section(
    runs: dict[str, list[float]],
    cpu: dict[str, list[float]],
    stages: list[dict[str, float]],
    checks: dict[str, bool],
    steps: int,
) -> dict[str, Any]:
    """``run_job`` and the metered task against the plain loop, and ``run_job`` by stage."""
    variants = ("plain_torch", "meter_replay", "off", "on", "run_job")
    wall = {name: median(runs[f"{ATTESTED_TASK}/{name}"]) for name in variants}
    cpu_s = {name: median(cpu[f"{ATTESTED_TASK}/{name}"]) for name in wall}
    plain = wall["plain_torch"]
    inrun_s = wall["on"] - wall["off"]
    names = sorted({name for run in stages for name in run})
    stage_s = {name: median([run.get(name, 0.0) for run in stages]) for name in names}
    groups = {
        group: {name: stage_s[name] for name in members if name in stage_s}
        for group, members in GROUPS.items()
    }
    grouped = {group: sum(parts.values()) for group, parts in groups.items()}
    train_in_job = stage_s.get("train", 0.0)
    return {
        "task": ATTESTED_TASK,
        "definition": (
            "run_job on a plain JobSpec (record ids and Merkle root recomputed, validation file read "
            "and digested, metered training with in-run contributions — the runner refuses a task "
            "output without them —, in-run valuation result, per-owner usage, records root, model "
            "file and digest, signed usage receipt) against benchmarks.inrun.plain_torch on the same "
            "rows, model, batches and seed"
        ),
        "overhead": {
            "full_run_job": wall["run_job"] / plain - 1.0,
            "metering_only": wall["off"] / plain - 1.0,
            # Derived, not measured: run_job minus the in-run cost measured by the task's on/off runs.
            "run_job_without_inrun_derived": (wall["run_job"] - inrun_s) / plain - 1.0,
        },
        "overhead_cpu": {
            "full_run_job": cpu_s["run_job"] / cpu_s["plain_torch"] - 1.0,
            "metering_only": cpu_s["off"] / cpu_s["plain_torch"] - 1.0,
        },
        "median_s": {
            "plain_torch": plain,
            "meter_replay": wall["meter_replay"],
            "metered_train": wall["off"],
            "metered_train_inrun": wall["on"],
            "run_job": wall["run_job"],
        },
        "median_cpu_s": {
            "plain_torch": cpu_s["plain_torch"],
            "meter_replay": cpu_s["meter_replay"],
            "metered_train": cpu_s["off"],
            "metered_train_inrun": cpu_s["on"],
            "run_job": cpu_s["run_job"],
        },
        "per_step_us": {name: 1e6 * seconds / steps for name, seconds in wall.items()},
        # run_job's wall time by stage (medians over the repeats, each stage net of nested timers).
        "breakdown_s": {"groups": grouped, "stages": groups},
        # Where run_job's time beyond the plain loop goes, as fractions of the plain loop's time. They
        # add up to run_job's summed stage medians over the plain loop: full_run_job, but for the
        # difference between a median of sums and a sum of medians.
        "overhead_parts": {
            "record_verification": grouped["record_verification"] / plain,
            "metering": wall["meter_replay"] / plain,
            # The task writes torch.optim.SGD's update out by hand (same weights, bit for bit); the
            # textbook loop's optimiser.zero_grad/step cost more per step, so this part is negative.
            "task_loop_vs_textbook_loop": (wall["off"] - wall["meter_replay"] - plain) / plain,
            "inrun_contributions": inrun_s / plain,
            # The same code on the same arrays: a measure of the noise between separate runs.
            "training_in_run_job_vs_task_alone": (train_in_job - wall["on"]) / plain,
            "load_task": groups["training"].get("load_task", 0.0) / plain,
            "receipt_and_digests": grouped["receipt_and_digests"] / plain,
        },
        "checks": checks,
    }


def task_section(
    name: str,
    runs: dict[str, list[float]],
    cpu: dict[str, list[float]],
    contributions: np.ndarray,
    flipped: np.ndarray,
    steps: int,
) -> dict[str, Any]:
    """In-run valuation on vs off for one task."""
    off, on = median(runs[f"{name}/off"]), median(runs[f"{name}/on"])
    cpu_off, cpu_on = median(cpu[f"{name}/off"]), median(cpu[f"{name}/on"])
    overhead = on / off - 1.0
    return {
        "inrun_overhead": overhead,
        "inrun_overhead_cpu": cpu_on / cpu_off - 1.0,
        "inrun_overhead_min": min(runs[f"{name}/on"]) / min(runs[f"{name}/off"]) - 1.0,
        "target_met": overhead <= TARGET_INRUN,
        "median_s": {"off": off, "on": on},
        "median_cpu_s": {"off": cpu_off, "on": cpu_on},
        "per_step_us": {"off": 1e6 * off / steps, "on": 1e6 * on / steps},
        "inrun_us_per_step": 1e6 * (on - off) / steps,
        "noisy_recall_at_10pct_inrun": recall_lowest(contributions, flipped),
        "model_bytes_identical_on_off": True,
        "contributions_bit_identical_across_repeats": True,
    }


def note(result: dict[str, Any]) -> str:
    attested, tasks = result["attested"], result["tasks"]
    overhead, parts = attested["overhead"], attested["overhead_parts"]
    machinery = ("record_verification", "metering", "load_task", "receipt_and_digests")
    inrun = ", ".join(f"{name} {100 * t['inrun_overhead']:+.1f} %" for name, t in tasks.items())

    def pct(value: float) -> str:
        return f"{100 * value:+.1f} %"

    return (
        f"{ATTESTED_TASK}: run_job {pct(overhead['full_run_job'])} over a plain torch.optim loop (target ≤ "
        f"{100 * TARGET_ATTESTED:.0f} % "
        + ("met" if result["target_met"]["attested_overhead"] else "MISSED")
        + f"), in-run valuation included ({pct(parts['inrun_contributions'])}): the runner cannot turn it "
        f"off. Attestation and metering themselves: record verification {pct(parts['record_verification'])}, "
        f"metering {pct(parts['metering'])}, receipt and digests {pct(parts['receipt_and_digests'])} — "
        f"{pct(sum(parts[k] for k in machinery))} in all with load_task —, against the task's hand-written "
        f"SGD update at {pct(parts['task_loop_vs_textbook_loop'])} of torch.optim's loop; the metered task "
        f"alone {pct(overhead['metering_only'])}, run_job less the measured in-run cost "
        f"{pct(overhead['run_job_without_inrun_derived'])} (derived). In-run valuation on vs off: {inrun} "
        f"(target ≤ {100 * TARGET_INRUN:.0f} % "
        + ("met" if result["target_met"]["inrun_overhead"] else "MISSED")
        + "). The machine is shared: see the load averages and the CPU-second ratios; the variants run in "
        "a new random order every repeat."
    )


def all_versions() -> dict[str, Any]:
    extra = {name: metadata.version(name) for name in ("pandas", "pyarrow", "duckdb")}

    def git(*args: str) -> str | None:
        try:
            command = ["git", *args]
            done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        **versions(),
        **extra,
        "databright_commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
    }


# --- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=16_000)
    parser.add_argument("--val", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true", help="a few thousand rows, 2 epochs, one repeat")
    parser.add_argument("--out", type=Path, default=None, help="default results/training.json")
    parser.add_argument(
        "--parallel-rows", type=int, default=20_000, help="rows of the two-workers-vs-one comparison"
    )
    parser.add_argument("--no-parallel", action="store_true", help="skip the two-workers-vs-one comparison")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.quick:
        args.rows, args.val, args.repeats = QUICK["rows"], QUICK["val"], QUICK["repeats"]
        overrides = {"epochs": QUICK["epochs"]}
    if args.repeats < 1 or args.rows < 2 or args.val < 1:
        parser.error("--repeats and --val must be ≥ 1 and --rows ≥ 2")
    out = args.out if args.out is not None or args.quick else RESULTS / "training.json"

    import torch
    import torch.optim

    with tempfile.TemporaryDirectory(prefix="databright-bench-training-") as tmp:
        version = write_version(Path(tmp) / "version", args.rows, args.val, SEED)
        spec = job_spec(version, ATTESTED_TASK, overrides, Path(tmp) / "job")
        x, y, xv, yv = job_inputs(spec, version.schema)
        tasks = {name: load_task(ENCLAVE_TASKS, name) for name in TASKS}
        configs = {name: task.resolve_config(overrides) for name, task in tasks.items()}
        measurement = measure_task(tasks[ATTESTED_TASK].path)
        key = SigningKey.from_seed(b"bench-training-session")
        stages: list[dict[str, float]] = []
        logreg = configs[ATTESTED_TASK]
        steps_drawn = batches(args.rows, logreg, SEED)
        cases: dict[str, Callable[[], Any]] = {
            f"{ATTESTED_TASK}/plain_torch": lambda: plain_torch(x, y, logreg, SEED),
            f"{ATTESTED_TASK}/meter_replay": lambda: meter_replay(args.rows, steps_drawn),
            f"{ATTESTED_TASK}/run_job": lambda: attested_job(spec, key, measurement, stages),
        }
        for name, task in tasks.items():
            for variant, fn in inrun_cases(task, configs[name], x, y, xv, yv, SEED).items():
                cases[f"{name}/{variant}"] = fn

        # One small run of each first, so torch's kernels and numpy's buffers are warm before any clock.
        small = min(500, args.rows)
        for name, task in tasks.items():
            for fn in inrun_cases(task, configs[name], x[:small], y[:small], xv, yv, SEED).values():
                fn()
        plain_torch(x[:small], y[:small], logreg, SEED)
        attested_job(spec, key, measurement, [])

        load_before = [round(v, 2) for v in os.getloadavg()]
        started = time.perf_counter()
        runs: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        outputs: dict[str, list[Any]] = {name: [] for name in cases}
        shuffler = np.random.default_rng(SEED)
        for repeat in range(args.repeats):
            # A fresh order every repeat: no variant always runs first, or always after the same one.
            for name in shuffler.permutation(list(cases)).tolist():
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                outputs[name].append(cases[name]())
                runs[name].append(time.perf_counter() - wall_started)
                cpu[name].append(time.process_time() - cpu_started)
            print(
                f"repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{name} {seconds[-1]:.2f} s" for name, seconds in runs.items()),
                flush=True,
            )
        measured_s = time.perf_counter() - started
        load_after = [round(v, 2) for v in os.getloadavg()]
        parallel = None
        if not args.no_parallel:
            parallel_rows = QUICK["rows"] if args.quick else args.parallel_rows
            epochs, repeats = (2, 1) if args.quick else (3, 3)
            parallel = {
                # The manifest's MLP (16 hidden units, batches of 32) and a wider one on larger
                # batches, where a step has enough arithmetic to split.
                name: two_workers_vs_one(
                    parallel_rows, epochs, repeats, Path(tmp) / f"parallel-{name}", config
                )
                for name, config in PARALLEL_CASES.items()
            }

    contributions = {
        name: check_inrun_outputs(outputs[f"{name}/off"], outputs[f"{name}/on"]) for name in TASKS
    }
    checks = attested_checks(outputs, torch)
    rows = args.rows
    steps = {name: configs[name]["epochs"] * -(-rows // configs[name]["batch_size"]) for name in TASKS}
    task_results = {
        name: task_section(name, runs, cpu, contributions[name], version.flipped, steps[name])
        for name in TASKS
    }
    worst = max(TASKS, key=lambda name: task_results[name]["inrun_overhead"])
    attested = attested_section(runs, cpu, stages, checks, steps[ATTESTED_TASK])
    result: dict[str, Any] = {
        "attested_overhead": attested["overhead"]["full_run_job"],
        "attested_overhead_metering_only": attested["overhead"]["metering_only"],
        "inrun_overhead": task_results[worst]["inrun_overhead"],
        "inrun_overhead_task": worst,
        "targets": {"attested_overhead": TARGET_ATTESTED, "inrun_overhead": TARGET_INRUN},
        "target_met": {
            "attested_overhead": attested["overhead"]["full_run_job"] <= TARGET_ATTESTED,
            "attested_overhead_metering_only": attested["overhead"]["metering_only"] <= TARGET_ATTESTED,
            "inrun_overhead": task_results[worst]["inrun_overhead"] <= TARGET_INRUN,
        },
        "attested": attested,
        "tasks": task_results,
        "data_parallel": parallel,
        "parameters": {
            "rows": rows,
            "features": len(FEATURES),
            "validation_rows": args.val,
            "owners": OWNERS,
            "data_files": len(version.files),
            "flipped_share": float(len(version.flipped) / rows),
            "seed": SEED,
            "configs": configs,
            "steps": steps,
            "repeats": args.repeats,
            "torch_threads": 1,
            "quick": args.quick,
            "measured_s": measured_s,
        },
        "runs_s": runs,
        "runs_cpu_s": cpu,
        "stage_runs_s": stages,
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": load_after},
        "versions": all_versions(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["note"] = note(result)
    summary = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    print(json.dumps({**summary, "attested": attested["overhead"]}, indent=2, ensure_ascii=False))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return result


def attested_checks(outputs: dict[str, list[Any]], torch: Any) -> dict[str, bool]:
    """The attested run trains the same model as the task alone, in every repeat, and the plain loop
    the same weights (recorded, not required: the plain loop is the textbook one, not the task's)."""
    off: list[TrainOutput] = outputs[f"{ATTESTED_TASK}/off"]
    jobs: list[JobOutcome] = outputs[f"{ATTESTED_TASK}/run_job"]
    if any(not np.array_equal(v, off[0].visits) for v in outputs[f"{ATTESTED_TASK}/meter_replay"]):
        raise SystemExit("the replayed metering counted other visits than the task's")
    task_digest = sha256_hex(off[0].model_state)
    if any(job.model_digest != task_digest for job in jobs):
        raise SystemExit("run_job trained a different model from the task's train on the same rows")
    roots = {(job.receipt.records_root, job.receipt.valuation["digest"]) for job in jobs}
    if len(roots) != 1:
        raise SystemExit("run_job's records root or in-run valuation differ between repeats")
    state = torch.load(io.BytesIO(off[0].model_state), weights_only=True)
    plain = outputs[f"{ATTESTED_TASK}/plain_torch"][0]
    return {
        "run_job_model_equals_task_model": True,
        "meter_replay_visits_equal_task_visits": True,
        "receipt_records_root_identical_across_repeats": True,
        "plain_torch_weights_equal_task_weights": bool(state["weight"].numpy().tobytes() == plain),
    }


if __name__ == "__main__":
    main()
