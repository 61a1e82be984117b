"""``make bench``: measure DataBright's hot paths beside a reference implementation, in one run.

Each case runs ``REPEATS`` times; the JSON result records every run, the median and the ratio of
medians. Wall-clock numbers belong here, never in tests.

* KNN-Shapley: ``databright.valuation.KNNShapley`` (vectorised over test points) against the
  recursion of Jia et al. 2019 written as the paper's per-test-point loop. Their values must agree to
  1e-12 or the benchmark fails. pyDVL, the library peer, joins this table with the valuation issue.
* Record identity: canonical row hashing and the RFC 6962 Merkle root, rows per second.
* Ingest (``benchmarks/ingest.py``, its own ``results/ingest.json``): ``register_file`` on a
  1M-row CSV against DuckDB's ``COPY ... TO parquet``, with peak RSS and per-stage timings.
* Trust (``benchmarks/trust.py``, its own ``results/trust.json``): usage receipts verified per
  second on one and two cores and through ``ReceiptIntake.admit_many``, attestation appraisal
  latency (simulated, and the real SGX/TDX quotes beside ``dcap_qvl.verify``), key release and
  sealed-file throughput.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.timing import timed

REPEATS = 5
RESULTS = Path(__file__).parent / "results"


def knn_shapley_loop(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int
):
    """The recursion as written in the paper: one test point at a time, one rank at a time."""
    n = len(x_train)
    values = np.zeros(n)
    for x, y in zip(x_test, y_test, strict=True):
        order = np.argsort(((x_train - x) ** 2).sum(axis=1), kind="stable")
        match = (y_train[order] == y).astype(float)
        s = np.zeros(n)
        s[n - 1] = match[n - 1] * min(k, n) / (k * n)
        for i in range(n - 2, -1, -1):
            rank = i + 1
            s[i] = s[i + 1] + (match[i] - match[i + 1]) / k * min(k, rank) / rank
        values[order] += s
    return values / len(x_test)


def bench_knn_shapley(n_train: int, n_test: int, k: int = 5) -> dict[str, Any]:
    from databright.valuation import KNNShapley

    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(n_train, 8)), rng.normal(size=(n_test, 8))
    y_train, y_test = rng.integers(0, 2, n_train), rng.integers(0, 2, n_test)
    ours_runs, ours = timed(lambda: KNNShapley(k=k).values(x_train, y_train, x_test, y_test), REPEATS)
    ref_runs, ref = timed(lambda: knn_shapley_loop(x_train, y_train, x_test, y_test, k), repeats=3)
    max_diff = float(np.max(np.abs(ours - ref)))
    if max_diff > 1e-12:
        raise SystemExit(f"KNN-Shapley disagrees with the reference by {max_diff}")
    return {
        "case": f"knn-shapley n_train={n_train} n_test={n_test} k={k}",
        "databright_s": ours_runs,
        "reference_loop_s": ref_runs,
        "median_databright_s": statistics.median(ours_runs),
        "median_reference_s": statistics.median(ref_runs),
        "speedup": statistics.median(ref_runs) / statistics.median(ours_runs),
        "max_abs_difference": max_diff,
    }


def bench_record_identity(rows: int) -> dict[str, Any]:
    from databright.crypto import merkle_root_hex
    from databright.datasets import Column, Schema, record_ids

    rng = np.random.default_rng(1)
    schema = Schema(
        columns=(*(Column(f"f{i}", "float", False) for i in range(8)), Column("label", "int", False)),
        features=tuple(f"f{i}" for i in range(8)),
        label="label",
    )
    frame = pd.DataFrame(rng.normal(size=(rows, 8)).round(4), columns=[f"f{i}" for i in range(8)])
    frame["label"] = rng.integers(0, 2, rows)
    hash_runs, ids = timed(lambda: record_ids(frame, schema), REPEATS)
    leaves = [bytes.fromhex(i) for i in ids]
    merkle_runs, _ = timed(lambda: merkle_root_hex(leaves), REPEATS)
    return {
        "case": f"record identity rows={rows}",
        "hash_s": hash_runs,
        "merkle_s": merkle_runs,
        "rows_per_s_hash": rows / statistics.median(hash_runs),
        "rows_per_s_merkle": rows / statistics.median(merkle_runs),
    }


def main() -> None:
    results = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "cases": [
            bench_knn_shapley(2_000, 100),
            bench_knn_shapley(10_000, 200),
            bench_record_identity(100_000),
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for case in results["cases"]:
        summary = {k: v for k, v in case.items() if not isinstance(v, list)}
        print(json.dumps(summary))
    print(f"wrote {out}")

    from benchmarks import ingest, trust

    ingest.main([])
    trust.main([])


if __name__ == "__main__":
    main()
