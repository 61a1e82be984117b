"""Ingest benchmark: ``register_file`` on a 1M-row × 10-column CSV against DuckDB's plain COPY.

``python -m benchmarks.ingest [--rows N] [--repeats K]`` (``make bench`` runs it with the defaults)
generates, from a fixed seed, a CSV of 8 float features, an int label and a string column, with a
matching contract (``bench-tabular-v1``: not-null everywhere, features in [-50, 50], label in
{0, 1}, source 1-64 characters) in a temporary project folder. One in a thousand rows has a feature
out of range (quarantined) and one in a thousand repeats an earlier row (refused as a duplicate),
so every path of the ingest runs. Then, in one run and ``--repeats`` times each (medians):

* **DataBright**: ``databright.datasets.register_file`` into a fresh home — read, validate, record
  ids, dedup, near-duplicate groups, version folder, DVC add + push, registry — in a child
  process, so that its peak RSS is its own (``ru_maxrss`` of the child, cross-checked by polling
  it with psutil). The child imports Great Expectations and DVC before the clock starts, as a flow
  worker that has already served one submission has; the child's whole wall time, imports
  included, is recorded too.
* **DuckDB**: ``COPY (SELECT * FROM read_csv('f.csv')) TO 'x.parquet' (FORMAT parquet)`` on a
  fresh in-memory connection.
* **Stages**: the library pieces called one after another on the same file (read, validate,
  record ids, dedup, Merkle root, near-duplicate groups, version folder, DVC add + push), to show
  where the time goes; plus one ``cProfile`` run of ``register_file`` in a child, summarised by
  what ``ingest.py`` calls, which follows the ingest whatever shape it takes.

The result, ``benchmarks/results/ingest.json``, holds ``ratio_to_duckdb_copy`` (median
``register_file`` time / median COPY time) and ``peak_rss_mb`` at the top, every run, the stage
timings, versions and the machine, and a note that says whether the targets (≤ 3× COPY, ≤ 1 GiB
peak RSS) were met, by how much they were missed and which stages cost most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
KIND = "bench-tabular-v1"
DATASET = "bench"
FEATURES = tuple(f"f{i}" for i in range(8))
SOURCES = (
    "berlin", "zürich", "são-paulo", "kraków", "osaka", "lagos", "montréal", "reykjavík",
    "seattle", "nairobi", "lima", "oslo", "dublin", "québec", "málaga", "tromsø",
)  # fmt: skip
TARGET_RATIO = 3.0
TARGET_RSS_MB = 1024.0
MB = 1024 * 1024


# --- inputs -----------------------------------------------------------------------------------


def write_contract(project: Path) -> None:
    """``<project>/data_contracts/bench-tabular-v1/{schema,suite}.json``, shaped like tabular-v1."""
    folder = project / "data_contracts" / KIND
    folder.mkdir(parents=True, exist_ok=True)
    columns = [{"name": f, "dtype": "float", "nullable": False} for f in FEATURES]
    columns += [{"name": "label", "dtype": "int", "nullable": False}]
    columns += [{"name": "source", "dtype": "string", "nullable": False}]
    schema = {"columns": columns, "features": list(FEATURES), "label": "label"}
    expectations: list[dict[str, Any]] = []
    for col in columns:
        expectations.append(
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col["name"]}}
        )
    for f in FEATURES:
        expectations.append(
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": f, "min_value": -50.0, "max_value": 50.0},
            }
        )
    expectations.append(
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}}
    )
    expectations.append(
        {
            "type": "expect_column_value_lengths_to_be_between",
            "kwargs": {"column": "source", "min_value": 1, "max_value": 64},
        }
    )
    suite = {"name": KIND, "expectations": expectations, "meta": {"description": "ingest benchmark"}}
    (folder / "schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    (folder / "suite.json").write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")


def write_csv(path: Path, rows: int, seed: int = 4) -> dict[str, int]:
    """The seeded CSV; returns how many rows were planted out of range and as duplicates."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 5.0, size=(rows, len(FEATURES))).round(4)
    label = rng.integers(0, 2, size=rows)
    source = np.array(SOURCES, dtype=object)[rng.integers(0, len(SOURCES), size=rows)]
    bad = rng.choice(rows, size=rows // 1000, replace=False)
    features[bad, 3] = 75.0
    # Copies of earlier clean rows at later positions: the ingest keeps the first, refuses the rest.
    originals = rng.choice(np.setdiff1d(np.arange(rows // 2), bad), size=rows // 1000, replace=False)
    copies = rng.choice(np.setdiff1d(np.arange(rows // 2, rows), bad), size=rows // 1000, replace=False)
    features[copies], label[copies], source[copies] = features[originals], label[originals], source[originals]
    frame = pd.DataFrame(features, columns=list(FEATURES))
    frame["label"] = label
    frame["source"] = source
    frame.to_csv(path, index=False, float_format="%.4f", lineterminator="\n")
    return {"out_of_range": int(bad.size), "duplicates": int(copies.size)}


# --- measurements -------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def duckdb_copy(csv: Path, out_dir: Path) -> float:
    import duckdb

    target = out_dir / "x.parquet"
    target.unlink(missing_ok=True)
    con = duckdb.connect(":memory:")
    try:
        seconds, _ = timed(
            lambda: con.execute(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{target}' (FORMAT parquet)")
        )
    finally:
        con.close()
    return seconds


def _poll_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Largest RSS of the process and its own children, sampled every 10 ms."""
    import psutil

    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                return
            peak[0] = max(peak[0], rss)
            stop.wait(0.01)
    except psutil.NoSuchProcess:
        return


def run_child(mode: str, csv: Path, project: Path, home: Path, out: Path) -> dict[str, Any]:
    """``register_file`` (``mode`` "time" or "profile") in a fresh interpreter; its report as a dict."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.ingest",
        "--child",
        mode,
        str(csv),
        str(project),
        str(home),
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
    stop, peak = threading.Event(), [0]
    poller = threading.Thread(target=_poll_rss, args=(child.pid, stop, peak), daemon=True)
    poller.start()
    code = child.wait()
    wall = time.perf_counter() - started
    stop.set()
    poller.join()
    if code != 0:
        raise SystemExit(f"the register_file child ({mode}) failed with exit code {code}")
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    report["process_wall_s"] = wall
    report["peak_rss_polled_mb"] = peak[0] / MB
    return report


def child(mode: str, csv: Path, project: Path, home: Path, out: Path) -> None:
    """The child's side: warm the imports, then one timed (or profiled) ``register_file``."""
    import psutil

    started = time.perf_counter()
    import dvc.repo  # noqa: F401 - warmed like a worker that has ingested before
    import great_expectations  # noqa: F401

    from databright.config import Settings
    from databright.datasets import register_file

    settings = Settings(home=home, project_root=project).ensure_dirs()
    db = settings.exchange_db()
    import_s = time.perf_counter() - started
    rss_ready = psutil.Process().memory_info().rss

    def register() -> Any:
        return register_file(settings, db, dataset=DATASET, contract_kind=KIND, owner="alice", path=csv)

    report: dict[str, Any] = {"import_s": import_s, "rss_after_imports_mb": rss_ready / MB}
    if mode == "profile":
        import cProfile

        profiler = cProfile.Profile()
        seconds, result = timed(lambda: profiler.runcall(register))
        report["profile"] = summarise_profile(profiler)
    else:
        seconds, result = timed(register)
    report["register_file_s"] = seconds
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report["result"] = result.to_dict()
    out.write_text(json.dumps(report, default=str), encoding="utf-8")


def summarise_profile(profiler: Any) -> dict[str, Any]:
    """What ``ingest.py`` calls, by cumulative time, and the costliest functions by own time."""
    import pstats

    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        short = file.split("site-packages/")[-1].split(str(PROJECT_ROOT) + "/")[-1]
        return f"{short}:{line}({func})"

    from_ingest: dict[str, float] = {}
    for key, (_, _, _, _, callers) in raw.items():
        for caller, timing in callers.items():
            if caller[0].endswith("datasets/ingest.py") and not key[0].endswith("datasets/ingest.py"):
                from_ingest[name(key)] = from_ingest.get(name(key), 0.0) + timing[3]
    own = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    return {
        "total_s": stats.total_tt,  # type: ignore[attr-defined]
        "called_from_ingest_cumulative_s": dict(sorted(from_ingest.items(), key=lambda kv: -kv[1])[:20]),
        "top_own_time_s": {name(k): v[2] for k, v in own},
    }


def stage_timings(csv: Path, project: Path, work: Path) -> dict[str, float]:
    """The ingest's library pieces, called one after another on the file's chunks, in seconds.

    The chunks are kept between stages so that each stage is timed on its own; the ingest itself
    streams them and holds one at a time.
    """
    from databright.config import Settings
    from databright.crypto import merkle_root_digests
    from databright.datasets import Registry, load_contract, record_ids
    from databright.datasets.contracts import ContractReport
    from databright.datasets.formats import open_table
    from databright.datasets.near_duplicates import NearDuplicateFinder
    from databright.datasets.validation import Validator
    from databright.datasets.versions import write_version_folder
    from databright.storage import dvc_versions

    settings = Settings(home=work / f"stages-{time.monotonic_ns()}", project_root=project).ensure_dirs()
    contract = load_contract(settings.contracts_dir, KIND)
    stages: dict[str, float] = {}

    def read() -> list[Any]:
        with open_table(csv) as source:
            return list(source.chunks())

    stages["read"], chunks = timed(read)

    def check() -> list[Any]:
        validator = Validator(contract)
        return [validator.validate(c.frame, c.first_row_number) for c in chunks]

    stages["validate"], validated = timed(check)
    goods = [v.good for v in validated]
    stages["record_ids"], id_lists = timed(lambda: [record_ids(g, contract.schema) for g in goods])
    ids = [rid for chunk_ids in id_lists for rid in chunk_ids]
    db = settings.exchange_db()
    db.query("SELECT 1")  # creates the schema, which is not the dedup's cost
    registry = Registry(db)

    def dedup() -> list[bool]:
        seen = set(registry.existing_ids(DATASET, ids))
        keep = []
        for rid in ids:  # first wins, as the ingest does
            keep.append(rid not in seen)
            seen.add(rid)
        return keep

    stages["dedup"], keep = timed(dedup)
    accepted = pd.concat(goods, ignore_index=True)[keep]
    accepted["record_id"] = [rid for rid, k in zip(ids, keep, strict=True) if k]
    accepted["owner"] = "alice"
    new_ids = accepted["record_id"].tolist()
    stages["merkle_root"], merkle = timed(lambda: merkle_root_digests(bytes.fromhex("".join(new_ids))).hex())
    stages["near_duplicates"], groups = timed(
        lambda: NearDuplicateFinder(contract.schema).groups(new_ids, accepted[list(contract.schema.names)])
    )
    report = ContractReport.merge([v.report for v in validated])
    workspace = settings.workspace_dir
    dvc_versions.init_workspace(workspace, settings.dvc_remote)
    stages["write_version"], _ = timed(
        lambda: write_version_folder(
            workspace,
            dataset=DATASET,
            version=1,
            parent=None,
            contract=contract,
            records=accepted,
            report=report,
            merkle_root=merkle,
            owner_counts={"alice": len(accepted)},
            near_duplicate_groups=groups,
        )
    )
    stages["dvc_add_push"], _ = timed(
        lambda: dvc_versions.track_and_push(workspace, f"datasets/{DATASET}/v1")
    )
    shutil.rmtree(settings.home, ignore_errors=True)
    return stages


# --- the run ------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    names = ("duckdb", "pyarrow", "pandas", "numpy", "great_expectations", "dvc")
    return {"python": sys.version.split()[0], **{n: metadata.version(n.replace("_", "-")) for n in names}}


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
    }


def note(
    ratio: float, peak_mb: float, stages: dict[str, float], copy_s: float, profile: dict[str, Any]
) -> str:
    order = sorted(stages.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{k} {v:.2f} s ({v / copy_s:.1f}× COPY)" for k, v in order[:3])
    called = list(profile["called_from_ingest_cumulative_s"].items())[:3]
    profiled = ", ".join(f"{k.rsplit('(', 1)[-1].rstrip(')')} {v:.2f} s" for k, v in called)
    parts = []
    if ratio <= TARGET_RATIO:
        parts.append(f"time target met: {ratio:.2f}× DuckDB COPY (target ≤ {TARGET_RATIO:g}×)")
    else:
        parts.append(
            f"time target missed: {ratio:.2f}× DuckDB COPY against ≤ {TARGET_RATIO:g}×, "
            f"{ratio / TARGET_RATIO:.1f}× too slow"
        )
    if peak_mb <= TARGET_RSS_MB:
        parts.append(f"memory target met: peak RSS {peak_mb:.0f} MB (target ≤ {TARGET_RSS_MB:.0f} MB)")
    else:
        parts.append(
            f"memory target missed: peak RSS {peak_mb:.0f} MB against ≤ {TARGET_RSS_MB:.0f} MB "
            f"(+{peak_mb - TARGET_RSS_MB:.0f} MB)"
        )
    parts.append(f"costliest stages when called directly: {top}")
    parts.append(f"costliest calls inside one profiled register_file (cProfile inflates them): {profiled}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description="register_file against DuckDB COPY"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest.json")
    parser.add_argument(
        "--child", nargs=5, metavar=("MODE", "CSV", "PROJECT", "HOME", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        mode, *paths = args.child
        child(mode, *(Path(p) for p in paths))
        return {}

    import great_expectations  # noqa: F401 - the stages below time work, not this import

    with tempfile.TemporaryDirectory(prefix="databright-bench-ingest-") as tmp:
        root = Path(tmp)
        project = root / "project"
        write_contract(project)
        csv = root / "contribution.csv"
        planted = write_csv(csv, args.rows)
        print(f"generated {csv.stat().st_size / MB:.1f} MB CSV, {args.rows:,} rows", flush=True)

        copy_runs = [duckdb_copy(csv, root) for _ in range(args.repeats)]
        print(f"duckdb COPY: {statistics.median(copy_runs):.3f} s median", flush=True)

        children = []
        for i in range(args.repeats):
            home = root / f"home-{i}"
            children.append(run_child("time", csv, project, home, root / f"child-{i}.json"))
            shutil.rmtree(home, ignore_errors=True)
            print(f"register_file run {i + 1}: {children[-1]['register_file_s']:.2f} s", flush=True)
        profiled = run_child("profile", csv, project, root / "home-profile", root / "child-profile.json")

        stage_runs = [stage_timings(csv, project, root) for _ in range(args.repeats)]
        stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
        csv_bytes = csv.stat().st_size

    register_runs = [c["register_file_s"] for c in children]
    copy_s = statistics.median(copy_runs)
    ratio = statistics.median(register_runs) / copy_s
    peak_mb = max(max(c["peak_rss_mb"], c["peak_rss_polled_mb"]) for c in children)
    results = {
        "case": f"ingest {args.rows:,} rows x 10 columns CSV: register_file vs DuckDB COPY to Parquet",
        "ratio_to_duckdb_copy": ratio,
        "peak_rss_mb": peak_mb,
        "targets": {
            "ratio_to_duckdb_copy_max": TARGET_RATIO,
            "peak_rss_mb_max": TARGET_RSS_MB,
            "ratio_met": ratio <= TARGET_RATIO,
            "peak_rss_met": peak_mb <= TARGET_RSS_MB,
        },
        "note": note(ratio, peak_mb, stages, copy_s, profiled["profile"]),
        "rows": args.rows,
        "columns": len(FEATURES) + 2,
        "csv_bytes": csv_bytes,
        "planted_rows": planted,
        "repeats": args.repeats,
        "databright_register_file": {
            "median_s": statistics.median(register_runs),
            "runs_s": register_runs,
            "rows_per_s": args.rows / statistics.median(register_runs),
            "process_wall_s": [c["process_wall_s"] for c in children],
            "import_s": [c["import_s"] for c in children],
            "peak_rss_mb": [c["peak_rss_mb"] for c in children],
            "peak_rss_polled_mb": [c["peak_rss_polled_mb"] for c in children],
            "rss_after_imports_mb": [c["rss_after_imports_mb"] for c in children],
            "result": children[-1]["result"],
        },
        "duckdb_copy": {"median_s": copy_s, "runs_s": copy_runs, "rows_per_s": args.rows / copy_s},
        "stages_median_s": stages,
        "stages_runs_s": stage_runs,
        "stages_rows_per_s": {k: args.rows / v for k, v in stages.items() if v > 0},
        "profile_of_one_register_file": profiled["profile"]
        | {"register_file_s": profiled["register_file_s"]},
        "versions": versions(),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {k: results[k] for k in ("ratio_to_duckdb_copy", "peak_rss_mb", "note")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
