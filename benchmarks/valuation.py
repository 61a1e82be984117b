"""Valuation benchmark: DataBright's valuation engine beside pyDVL 0.10, on the same arrays, in one run.

``python -m benchmarks.valuation [--quick] [--n-large N] [--repeats K]`` writes
``benchmarks/results/valuation.json`` and ``benchmarks/results/valuation_removal.png``. pyDVL needs
numpy < 2, so it runs in its own virtual environment (``.venv-peers``, see ``benchmarks/README.md``)
through ``benchmarks/peers/pydvl_runner.py``: each case saves its arrays once with ``np.save`` and
both sides read those files. Cases:

* **knn_50k**: exact KNN-Shapley, 50k train × 1k test, d=20, k=5: ``KNNShapley`` against pyDVL's
  ``KNNShapleyValuation``; speedup and the largest absolute difference of the values.
* **knn_large**: N × 1k (default N = 1M): ``KNNShapley`` in a child process (its peak RSS is its
  own ``ru_maxrss``) against the floor of any exact method, ``np.argsort`` of every test point's
  distance row, chunked and threaded as ``KNNShapley`` does (distances computed outside the clock).
* **msr_1000**: Banzhaf-MSR at n=1000 with the same number of subset evaluations on both sides:
  ``BanzhafMSR`` over the batched ``LogisticUtility`` against pyDVL's ``MSRBanzhafValuation`` over
  sklearn's ``LogisticRegression``.
* **incremental**: a version adds 1 % of N records; ``KnnIndex.add`` + values through the index
  against a full recompute of the new version (values must be bit-identical).
* **noisy**: 10 % of n=500 labels flipped; recall of flipped points among the lowest-valued 10 % for
  every method on both sides, and point-removal curves (highest / random / lowest first, logistic
  regression retrained on what remains, accuracy on a held-out set) as a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import timed

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
PEERS_PYTHON = PROJECT_ROOT / ".venv-peers" / "bin" / "python"
RUNNER = Path(__file__).parent / "peers" / "pydvl_runner.py"
# Class means 2 × 1.5 standard deviations apart: a clean-label Bayes accuracy of Φ(1.5) ≈ 0.93.
NOISY_SEPARATION = 1.5
TARGETS = {
    "knn_50k_speedup_vs_pydvl": ">= 50",
    "knn_50k_max_abs_diff": "<= 1e-12",
    "knn_1m_ratio_to_argsort_floor": "<= 1.5",
    "knn_1m_peak_rss_mb": "<= 4096",
    "msr_1000_speedup_vs_pydvl": ">= 20",
    "incremental_speedup": ">= 5",
    "noisy_recall_at_10pct_knn": ">= 0.6",
}


# --- helpers ----------------------------------------------------------------------------------


def save_arrays(folder: Path, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        np.save(folder / f"{name}.npy", np.ascontiguousarray(arr))
    return folder


def load_arrays(folder: Path) -> tuple[np.ndarray, ...]:
    return tuple(np.load(folder / f"{name}.npy") for name in ("x_train", "y_train", "x_test", "y_test"))


def run_pydvl(task: str, folder: Path, *extra: str) -> tuple[list[float], np.ndarray]:
    """Run one pyDVL task in the peers' venv on the arrays under ``folder``."""
    if not PEERS_PYTHON.exists():
        raise SystemExit(
            f"{PEERS_PYTHON} is missing; create it: .tools/bin/uv venv .venv-peers --python python3.11 && "
            '.tools/bin/uv pip install --python .venv-peers/bin/python "pydvl==0.10.0" "numpy<2" scikit-learn'
        )
    cmd = [str(PEERS_PYTHON), "-W", "ignore", str(RUNNER), task, str(folder), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pyDVL {task} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((folder / f"pydvl_{task}.json").read_text())
    return report["seconds"], np.load(folder / f"pydvl_{task}_values.npy")


def classification(n: int, n_test: int, d: int, seed: int, sep: float = 1.0) -> tuple[np.ndarray, ...]:
    """Two Gaussian classes (unit variance) whose means lie ``2·sep`` standard deviations apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n + n_test)
    x = rng.normal(size=(n + n_test, d)) + sep * y[:, None] / np.sqrt(d) * 2.0
    return x[:n], y[:n], x[n:], y[n:]


def median(runs: list[float]) -> float:
    return float(statistics.median(runs))


# --- cases ------------------------------------------------------------------------------------


def bench_knn_50k(tmp: Path, n_train: int, n_test: int, repeats: int) -> dict[str, Any]:
    from databright.valuation.knn_shapley import KNNShapley

    rng = np.random.default_rng(50)
    arrays = (
        rng.normal(size=(n_train, 20)),
        rng.integers(0, 2, n_train),
        rng.normal(size=(n_test, 20)),
        rng.integers(0, 2, n_test),
    )
    folder = save_arrays(tmp / "knn_50k", *arrays)
    saved = load_arrays(folder)
    ours_runs, ours = timed(lambda: KNNShapley(k=5).values(*saved), repeats)
    peer_runs, peer = run_pydvl("knn", folder, "--k", "5")
    return {
        "case": f"exact KNN-Shapley n_train={n_train} n_test={n_test} d=20 k=5",
        "databright_s": ours_runs,
        "pydvl_s": peer_runs,
        "speedup": median(peer_runs) / median(ours_runs),
        "max_abs_diff": float(np.max(np.abs(ours - peer))),
    }


def _large_child(n_train: int, n_test: int, repeats: int) -> None:
    """In a fresh process: our time on N × n_test, then this process's peak RSS."""
    from databright.valuation.knn_shapley import KNNShapley

    x_train, y_train, x_test, y_test = large_arrays(n_train, n_test)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs, _ = timed(lambda: KNNShapley(k=5).values(x_train, y_train, x_test, y_test), repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": runs, "peak_rss_mb": peak, "rss_after_inputs_mb": base_rss}))


def large_arrays(n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1_000)
    return (
        rng.normal(size=(n_train, 20)),
        rng.integers(0, 2, n_train),
        rng.normal(size=(n_test, 20)),
        rng.integers(0, 2, n_test),
    )


def argsort_floor(n_train: int, n_test: int, repeats: int) -> list[float]:
    """Seconds to argsort every test point's distance row, in KNNShapley's step size and thread count.

    Distances are computed per step outside the clock; only the argsorts, spread over the same
    number of threads as KNNShapley uses, are timed.
    """
    from databright.valuation.knn_shapley import available_cores, rows_per_step, squared_distances

    x_train, _, x_test, _ = large_arrays(n_train, n_test)
    x_train_t = np.ascontiguousarray(x_train.T)
    jobs = available_cores()
    step = max(jobs, min(16, rows_per_step(n_train)) * jobs)
    runs = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in range(repeats):
            total = 0.0
            for start in range(0, n_test, step):
                dist = squared_distances(x_test[start : start + step], x_train_t)
                parts = np.array_split(np.arange(dist.shape[0]), jobs)
                started = time.perf_counter()
                list(pool.map(lambda rows, dist=dist: np.argsort(dist[rows], axis=1), parts))
                total += time.perf_counter() - started
            runs.append(total)
    return runs


def bench_knn_large(n_train: int, n_test: int, repeats: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.valuation",
        "--child-large",
        str(n_train),
        str(n_test),
        str(repeats),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"large KNN-Shapley child failed:\n{done.stderr[-3000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    floor = argsort_floor(n_train, n_test, repeats)
    return {
        "case": f"exact KNN-Shapley n_train={n_train} n_test={n_test} d=20 k=5 (child process)",
        "databright_s": child["seconds"],
        "argsort_floor_s": floor,
        "ratio_to_argsort_floor": median(child["seconds"]) / median(floor),
        "peak_rss_mb": child["peak_rss_mb"],
        "rss_after_inputs_mb": child["rss_after_inputs_mb"],
    }


def bench_msr(tmp: Path, n: int, samples: int, peer_samples: int, repeats: int) -> dict[str, Any]:
    from databright.valuation.banzhaf import BanzhafMSR
    from databright.valuation.stopping import MaxUpdates

    folder = save_arrays(tmp / "msr", *classification(n, 200, 10, seed=1000))
    arrays = load_arrays(folder)
    ours_same_runs, _ = timed(
        lambda: BanzhafMSR(stop=MaxUpdates(peer_samples), seed=0).values(*arrays), repeats
    )
    ours_runs, _ = timed(lambda: BanzhafMSR(stop=MaxUpdates(samples), seed=0).values(*arrays), repeats)
    # sklearn's C multiplies the summed loss: C = 1/(2·l2·|S|) matches our mean-loss penalty at |S| ≈ n/2.
    peer_runs, _ = run_pydvl(
        "msr", folder, "--samples", str(peer_samples), "--c", str(1 / (2 * 1e-2 * n / 2))
    )
    return {
        "case": f"Banzhaf-MSR n={n} d=10 n_test=200, logistic regression utility",
        "subset_evaluations_compared": peer_samples,
        "databright_s": ours_same_runs,
        "pydvl_s": peer_runs,
        "speedup": median(peer_runs) / median(ours_same_runs),
        "databright_s_at_samples": {str(samples): ours_runs},
        "pydvl_s_extrapolated_linearly": {str(samples): median(peer_runs) * samples / peer_samples},
    }


def bench_incremental(n_train: int, n_test: int, repeats: int) -> dict[str, Any]:
    from databright.valuation.incremental import KnnIndex
    from databright.valuation.knn_shapley import KNNShapley

    x_train, y_train, x_test, y_test = large_arrays(n_train, n_test)
    m = n_train // 100
    rng = np.random.default_rng(7)
    x_new, y_new = rng.normal(size=(m, 20)), rng.integers(0, 2, m)
    x_v2, y_v2 = np.concatenate([x_train, x_new]), np.concatenate([y_train, y_new])
    index_v1 = KnnIndex.build(x_train, x_test)
    full_runs, full = timed(lambda: KNNShapley(k=5).values(x_v2, y_v2, x_test, y_test), repeats)
    incr_runs, incr = timed(
        lambda: KNNShapley(k=5).values(x_v2, y_v2, x_test, y_test, index=index_v1.add(x_new)), repeats
    )
    build_runs, _ = timed(lambda: KnnIndex.build(x_train, x_test), 1)
    # The value pass alone (neighbour order already merged): what any incremental update still pays.
    merged = index_v1.add(x_new).materialize()
    value_pass_runs, _ = timed(
        lambda: KNNShapley(k=5).values(x_v2, y_v2, x_test, y_test, index=merged), repeats
    )
    return {
        "case": f"incremental KNN-Shapley N={n_train} + m={m} (1 %), n_test={n_test}",
        "full_recompute_s": full_runs,
        "incremental_s": incr_runs,
        "index_build_v1_s": build_runs,
        "value_pass_only_s": value_pass_runs,
        "speedup_bound_if_merge_were_free": median(full_runs) / median(value_pass_runs),
        "speedup": median(full_runs) / median(incr_runs),
        "identical_values": bool(np.array_equal(full, incr)),
    }


def recall_lowest(values: np.ndarray, flipped: np.ndarray, fraction: float = 0.1) -> float:
    lowest = np.argsort(values, kind="stable")[: round(fraction * values.shape[0])]
    return float(np.isin(lowest, np.flatnonzero(flipped)).sum() / flipped.sum())


def bench_noisy(
    tmp: Path, n: int, msr_samples: int, peer_msr_samples: int, tmc_perms: int, tmc_peer_seconds: float
) -> dict[str, Any]:
    from databright.valuation.banzhaf import BanzhafMSR
    from databright.valuation.knn_shapley import KNNShapley
    from databright.valuation.stopping import MaxUpdates
    from databright.valuation.tmc_shapley import TMCShapley

    x_train, y_clean, x_rest, y_rest = classification(n, 1200, 10, seed=500, sep=NOISY_SEPARATION)
    x_val, y_val, x_hold, y_hold = x_rest[:200], y_rest[:200], x_rest[200:], y_rest[200:]
    rng = np.random.default_rng(501)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, n // 10, replace=False)] = True
    y_train = np.where(flipped, 1 - y_clean, y_clean)
    folder = save_arrays(tmp / "noisy", x_train, y_train, x_val, y_val)
    arrays = load_arrays(folder)
    values: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    ours = {
        "knn_shapley": lambda: KNNShapley(k=5).values(*arrays),
        "tmc_shapley": lambda: TMCShapley(stop=MaxUpdates(tmc_perms), seed=0).values(*arrays),
        "banzhaf_msr": lambda: BanzhafMSR(stop=MaxUpdates(msr_samples), seed=0).values(*arrays),
    }
    for name, fn in ours.items():
        runs, values[name] = timed(fn, 1)
        seconds[name] = runs[0]
    c = str(1 / (2 * 1e-2 * n / 2))
    peers = {
        "pydvl_knn_shapley": ("knn", ["--k", "5"]),
        "pydvl_msr_banzhaf": ("msr", ["--samples", str(peer_msr_samples), "--c", c]),
        "pydvl_tmc_shapley": (
            "tmc",
            ["--samples", str(tmc_perms), "--max-seconds", str(tmc_peer_seconds), "--c", c],
        ),
    }
    for name, (task, extra) in peers.items():
        runs, values[name] = run_pydvl(task, folder, *extra)
        seconds[name] = runs[0]
    recall = {name: recall_lowest(np.nan_to_num(v), flipped) for name, v in values.items()}
    # The same flips on harder data (class means closer): how much the recall depends on the data.
    hard_x, hard_y, hard_rest_x, hard_rest_y = classification(n, 1200, 10, seed=500, sep=1.0)
    hard_values = KNNShapley(k=5).values(
        hard_x, np.where(flipped, 1 - hard_y, hard_y), hard_rest_x[:200], hard_rest_y[:200]
    )
    curves = removal_curves(x_train, y_train, x_hold, y_hold, values, seed=502)
    return {
        "case": f"noisy labels n={n} d=10, 10 % flipped, validation 200, held-out {x_hold.shape[0]}",
        "budgets": {
            "msr_samples": msr_samples,
            "pydvl_msr_samples": peer_msr_samples,
            "tmc_permutations": tmc_perms,
            "pydvl_tmc_max_s": tmc_peer_seconds,
        },
        "class_separation": NOISY_SEPARATION,
        "recall_at_10pct": recall,
        "knn_recall_at_10pct_separation_1": recall_lowest(hard_values, flipped),
        "seconds": seconds,
        "removal_curves": curves,
    }


def removal_curves(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_hold: np.ndarray,
    y_hold: np.ndarray,
    values: dict[str, np.ndarray],
    seed: int,
) -> dict[str, Any]:
    """Held-out accuracy of a logistic regression retrained after removing a growing fraction."""
    from databright.valuation.utility import LogisticUtility

    n = x_train.shape[0]
    fractions = np.round(np.arange(0.0, 0.51, 0.05), 2)
    utility = LogisticUtility(x_train, y_train, x_hold, y_hold)
    rng = np.random.default_rng(seed)
    random_orders = [rng.permutation(n) for _ in range(5)]

    def curve(order: np.ndarray) -> list[float]:
        masks = np.ones((fractions.shape[0], n), dtype=bool)
        for row, fraction in enumerate(fractions):
            masks[row, order[: round(fraction * n)]] = False
        return [float(a) for a in utility.evaluate(masks)]

    out: dict[str, Any] = {"fractions_removed": fractions.tolist()}
    out["random"] = np.mean([curve(o) for o in random_orders], axis=0).tolist()
    for name, v in values.items():
        order = np.argsort(-np.nan_to_num(v), kind="stable")
        out[name] = {"highest_first": curve(order), "lowest_first": curve(order[::-1])}
    return out


def plot_removal(curves: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = curves["fractions_removed"]
    methods = [k for k in curves if k not in ("fractions_removed", "random")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, which, title in (
        (axes[0], "highest_first", "remove highest-valued first"),
        (axes[1], "lowest_first", "remove lowest-valued first"),
    ):
        for name in methods:
            ax.plot(
                fractions,
                curves[name][which],
                marker="o",
                ms=3,
                label=name,
                ls="--" if "pydvl" in name else "-",
            )
        ax.plot(fractions, curves["random"], color="black", lw=2, label="random (mean of 5)")
        ax.set_title(title)
        ax.set_xlabel("fraction of training points removed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (logistic regression)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Point removal, n=500, 10 % labels flipped")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load_before = os.getloadavg()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "available_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load_before],
    }


def versions() -> dict[str, Any]:
    ours = {name: metadata.version(name) for name in ("numpy", "torch")}
    peers: dict[str, Any] = {}
    if PEERS_PYTHON.exists():
        code = (
            "import json, importlib.metadata as m; "
            "print(json.dumps({n: m.version(n) for n in ('pydvl', 'numpy', 'scikit-learn')}))"
        )
        done = subprocess.run([str(PEERS_PYTHON), "-c", code], capture_output=True, text=True, check=False)
        peers = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}
    return {"databright_venv": ours, "peers_venv": peers}


def verdicts(top: dict[str, Any]) -> dict[str, bool]:
    return {
        "knn_50k_speedup_vs_pydvl": top["knn_50k_speedup_vs_pydvl"] >= 50,
        "knn_50k_max_abs_diff": top["knn_50k_max_abs_diff"] <= 1e-12,
        "knn_1m_ratio_to_argsort_floor": top["knn_1m_ratio_to_argsort_floor"] <= 1.5,
        "knn_1m_peak_rss_mb": top["knn_1m_peak_rss_mb"] <= 4096,
        "msr_1000_speedup_vs_pydvl": top["msr_1000_speedup_vs_pydvl"] >= 20,
        "incremental_speedup": top["incremental_speedup"] >= 5,
        "noisy_recall_at_10pct_knn": top["noisy_recall_at_10pct_knn"] >= 0.6,
    }


def compose_note(
    top: dict[str, Any], met: dict[str, bool], cases: dict[str, Any], info: dict[str, Any]
) -> str:
    """Plain sentences: the conditions of the run, then one explanation per missed target."""
    large, msr, inc, noisy = cases["knn_large"], cases["msr_1000"], cases["incremental"], cases["noisy"]
    load = (info["load_average_at_start"][0], info["load_average_at_end"][0])
    per_eval = median(msr["pydvl_s"]) / msr["subset_evaluations_compared"]
    extrapolated = next(iter(msr["pydvl_s_extrapolated_linearly"].values()))
    parts = [
        f"Shared {info['cpus']}-core machine, load average {load[0]} at start and {load[1]} at end "
        "(other engineers' jobs): timings are medians but noisy.",
        f"Large KNN case: {large['case']}.",
        f"Banzhaf-MSR compared at {msr['subset_evaluations_compared']} subset evaluations on both sides "
        f"(pyDVL costs ~{per_eval:.2f} s per evaluation here, mostly its per-point Python result "
        f"update; 2000 would take it ~{extrapolated:.0f} s, extrapolated, not measured). Utilities are "
        "comparable, not identical: our batched torch Newton logistic regression (l2=1e-2 on the mean "
        "loss, warm-started) vs sklearn LogisticRegression(C=1/(2·l2·n/2)).",
        f"Noisy labels: classes 2×{noisy['class_separation']} SD apart; on harder data (1 SD each side) "
        f"KNN-Shapley recall is {noisy['knn_recall_at_10pct_separation_1']:.2f}. Budgets differ where "
        f"pyDVL is slow: {noisy['budgets']}.",
    ]
    if not met["knn_50k_speedup_vs_pydvl"] or not met["knn_50k_max_abs_diff"]:
        speedup, diff = top["knn_50k_speedup_vs_pydvl"], top["knn_50k_max_abs_diff"]
        parts.append(f"MISS KNN 50k: speedup {speedup:.1f}×, max abs diff {diff:.3g}.")
    if not met["knn_1m_ratio_to_argsort_floor"]:
        floor, ours = large["argsort_floor_s"], median(large["databright_s"])
        parts.append(
            f"MISS large-KNN ratio {top['knn_1m_ratio_to_argsort_floor']:.2f} > 1.5: ours {ours:.1f} s vs "
            f"argsort-only floor {median(floor):.1f} s (its runs {min(floor):.1f}-{max(floor):.1f} s under "
            "load). The floor leaves out what an exact method must also do: the d=20 distance pass per "
            "test point, the rank recursion and the scatter-add of each row into the totals; our sort "
            "itself (a uint64 key sort) is cheaper than argsort."
        )
    if not met["knn_1m_peak_rss_mb"]:
        parts.append(f"MISS peak RSS {top['knn_1m_peak_rss_mb']:.0f} MB > 4096 MB.")
    if not met["msr_1000_speedup_vs_pydvl"]:
        parts.append(f"MISS Banzhaf-MSR speedup {top['msr_1000_speedup_vs_pydvl']:.1f}× < 20×.")
    if not met["incremental_speedup"]:
        full, incr = median(inc["full_recompute_s"]), median(inc["incremental_s"])
        value_pass, bound = median(inc["value_pass_only_s"]), inc["speedup_bound_if_merge_were_free"]
        parts.append(
            f"MISS incremental {top['incremental_speedup']:.2f}× < 5×: full recompute {full:.2f} s, add + "
            f"values {incr:.2f} s, of which the value pass alone (through an already merged index) is "
            f"{value_pass:.2f} s, so even a free merge caps the speedup at {bound:.1f}×: every record's rank "
            "moves with a new version, so the O(n_test·N) value pass is redone; the rest is the per-row "
            "searchsorted + masked-copy merge (a Python loop over test points)."
        )
    if not met["noisy_recall_at_10pct_knn"]:
        parts.append(f"MISS KNN-Shapley noisy-label recall {top['noisy_recall_at_10pct_knn']:.2f} < 0.6.")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="valuation benchmark (DataBright vs pyDVL 0.10)")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the pipeline, not the targets"
    )
    parser.add_argument(
        "--n-large", type=int, default=1_000_000, help="training points of the large KNN case"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large-repeats", type=int, default=3)
    parser.add_argument("--msr-peer-samples", type=int, default=300)
    parser.add_argument(
        "--child-large", nargs=3, type=int, metavar=("N", "N_TEST", "REPEATS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "valuation.json")
    args = parser.parse_args(argv)
    if args.child_large:
        _large_child(*args.child_large)
        return
    quick = args.quick
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="databright-bench-valuation-") as tmp_name:
        tmp = Path(tmp_name)
        cases: dict[str, Any] = {}
        cases["knn_50k"] = bench_knn_50k(
            tmp, 5_000 if quick else 50_000, 100 if quick else 1_000, args.repeats
        )
        print(json.dumps({k: v for k, v in cases["knn_50k"].items()}), flush=True)
        cases["knn_large"] = bench_knn_large(
            20_000 if quick else args.n_large, 100 if quick else 1_000, args.large_repeats
        )
        print(json.dumps(cases["knn_large"]), flush=True)
        msr_peer = 20 if quick else args.msr_peer_samples
        cases["msr_1000"] = bench_msr(
            tmp, 200 if quick else 1_000, 200 if quick else 2_000, msr_peer, args.repeats
        )
        print(json.dumps(cases["msr_1000"]), flush=True)
        cases["incremental"] = bench_incremental(
            5_000 if quick else 50_000, 100 if quick else 1_000, args.repeats
        )
        print(json.dumps(cases["incremental"]), flush=True)
        cases["noisy"] = bench_noisy(
            tmp,
            500,
            200 if quick else 2_000,
            20 if quick else 500,
            20 if quick else 200,
            5.0 if quick else 45.0,
        )
        print(json.dumps(cases["noisy"]["recall_at_10pct"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    png = args.out.with_name("valuation_removal.png")
    plot_removal(cases["noisy"]["removal_curves"], png)
    top: dict[str, Any] = {
        "knn_50k_speedup_vs_pydvl": cases["knn_50k"]["speedup"],
        "knn_50k_max_abs_diff": cases["knn_50k"]["max_abs_diff"],
        "knn_1m_ratio_to_argsort_floor": cases["knn_large"]["ratio_to_argsort_floor"],
        "knn_1m_peak_rss_mb": cases["knn_large"]["peak_rss_mb"],
        "msr_1000_speedup_vs_pydvl": cases["msr_1000"]["speedup"],
        "incremental_speedup": cases["incremental"]["speedup"],
        "noisy_recall_at_10pct_knn": cases["noisy"]["recall_at_10pct"]["knn_shapley"],
    }
    met = verdicts(top)
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {
        **top,
        "targets": TARGETS,
        "targets_met": met,
        "note": compose_note(top, met, cases, info),
        "quick": quick,
        "total_seconds": time.perf_counter() - started,
        "versions": versions(),
        "machine": info,
        "cases": cases,
        "removal_plot": png.name,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({**top, "targets_met": met}, indent=2))
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
