"""Two workers against one: a data-parallel job's samples per second on this machine.

``python -m benchmarks.data_parallel [--rows N] [--epochs E] [--repeats K]`` (and ``benchmarks.training``,
which adds the result under ``data_parallel``) runs the attested job runner — ``run_job``, what a
worker does for a job: record verification, training with metering and in-run credits, receipt —
on ``tabular_mlp`` (the manifest's model, and a wide one on large batches: ``PARALLEL_CASES``) over
the same version, once in one worker process and once as a two-worker
data-parallel job (two processes meeting over gloo on 127.0.0.1, each reading its shard), ``K``
times each, interleaved. Each process is started and imported before the clock; the clock runs from
a shared barrier to the last rank's receipt. ``samples_per_s`` = rows × epochs / seconds.

Each rank still recomputes every record id of the version (it verifies the Merkle root before
reading its shard), so that part does not shrink with more workers; ``speedup`` says what is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import queue
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = "tabular_mlp"
SEED = 0
#: The configurations compared: the task's defaults, and a wide MLP on large batches.
PARALLEL_CASES: dict[str, dict[str, Any]] = {
    "manifest_mlp": {},
    "wide_mlp_large_batches": {"hidden": 512, "batch_size": 1024, "model_cost": 512 * (8 + 2) + 1},
}


def _rank(
    spec_json: str, rank: int, world: int, rendezvous: str, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a spawned process
    import torch

    from databright.config import PROJECT_ROOT
    from databright.crypto import SigningKey
    from databright.training.runner import run_job
    from databright.training.spec import JobSpec
    from databright.trust.measurement import find_task, measure_task

    torch.set_num_threads(1)
    fields = json.loads(spec_json)
    spec = JobSpec(**{**fields, "data_files": tuple(fields["data_files"])})
    spec = dataclasses.replace(
        spec,
        shard_rank=rank,
        shard_count=world,
        rendezvous=rendezvous,
        output_dir=str(Path(spec.output_dir) / f"rank-{rank}"),
    )
    tasks = PROJECT_ROOT / "enclave_tasks"
    measurement = measure_task(find_task(tasks, spec.task))
    key = SigningKey.generate()
    barrier.wait()
    start = time.perf_counter()
    outcome = run_job(
        spec, key, sequence=0, previous_receipt_digest=None, measurement=measurement, enclave_tasks_dir=tasks
    )
    results.put((rank, time.perf_counter() - start, outcome.model_digest, outcome.work_units))


def one_run(spec_fields: dict[str, Any], world: int) -> dict[str, Any]:
    """Seconds from the barrier to the slowest rank's receipt, and the ranks' model digests."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(world), ctx.Queue()
    from databright.training.service import free_rendezvous

    rendezvous = free_rendezvous() if world > 1 else ""
    spec_json = json.dumps(spec_fields)
    procs = [
        ctx.Process(target=_rank, args=(spec_json, rank, world, rendezvous, barrier, results))
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    found: list[tuple[int, float, str, int]] = []
    deadline = time.monotonic() + 900
    while len(found) < world:
        try:
            found.append(results.get(timeout=1.0))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for proc in procs:
                    proc.kill()
                raise RuntimeError(
                    f"a rank failed (exit codes {failed}) or timed out; see its traceback above"
                ) from None
    for proc in procs:
        proc.join(60)
    return {
        "seconds": max(seconds for _, seconds, _, _ in found),
        "digests": sorted({digest for _, _, digest, _ in found}),
        "work_units": sum(units for _, _, _, units in found),
    }


def two_workers_vs_one(
    rows: int, epochs: int, repeats: int, folder: Path, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One worker against two on ``tabular_mlp`` with ``config`` (over the manifest's defaults)."""
    from benchmarks.training import job_spec, write_version

    version = write_version(folder / "version", rows, 500, SEED)
    overrides = {**(config or {}), "epochs": epochs}
    spec = job_spec(version, TASK, overrides, folder / "out")
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    fields = {k: v for k, v in fields.items() if k not in ("shards", "key_release", "withdrawn_files")}
    fields["data_files"] = list(fields["data_files"])
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(repeats):
        for world in (1, 2):  # interleaved: a busy neighbour slows both alike
            runs[world].append(one_run(fields, world))
    samples = rows * epochs
    seconds = {world: statistics.median(r["seconds"] for r in found) for world, found in runs.items()}
    two_models_agree = all(len(r["digests"]) == 1 for r in runs[2])
    return {
        "task": TASK,
        "config": overrides,
        "rows": rows,
        "epochs": epochs,
        "repeats": repeats,
        "what": "run_job end to end (verify every record, train with metering and in-run credits, sign)",
        "one_worker": {"median_s": seconds[1], "samples_per_s": samples / seconds[1]},
        "two_workers": {"median_s": seconds[2], "samples_per_s": samples / seconds[2]},
        "speedup": seconds[1] / seconds[2],
        "ranks_end_with_one_model": two_models_agree,
        "same_work_units": {r["work_units"] for r in runs[1]} == {r["work_units"] for r in runs[2]},
        "runs_s": {str(world): [r["seconds"] for r in found] for world, found in runs.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="databright-dp-bench-") as tmp:
        result = {
            name: two_workers_vs_one(args.rows, args.epochs, args.repeats, Path(tmp) / name, config)
            for name, config in PARALLEL_CASES.items()
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
