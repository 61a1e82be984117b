"""``benchmarks.training --quick``: the pipeline runs end to end and writes a consistent result.

A benchmark is not a test: no wall-clock time is asserted here, only the result's shape, that its
fractions are finite, and the relations between them that hold by construction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import training

pytestmark = pytest.mark.slow


def test_quick_run_writes_finite_consistent_fractions(tmp_path: Path) -> None:
    out = tmp_path / "results" / "training.json"
    returned = training.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["note"] == returned["note"]

    fractions = ("attested_overhead", "attested_overhead_metering_only", "inrun_overhead")
    for key in fractions:
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert set(result["target_met"]) == set(fractions)
    assert result["targets"] == {"attested_overhead": 0.03, "inrun_overhead": 0.25}

    attested = result["attested"]
    assert attested["task"] == "tabular_logreg"
    assert result["attested_overhead"] == attested["overhead"]["full_run_job"]
    assert result["attested_overhead_metering_only"] == attested["overhead"]["metering_only"]
    for value in [*attested["overhead"].values(), *attested["overhead_parts"].values()]:
        assert math.isfinite(value)
    groups = set(attested["breakdown_s"]["groups"])
    assert groups == {"record_verification", "training", "receipt_and_digests"}
    assert all(attested["checks"].values()), attested["checks"]
    # One repeat: the parts add up to run_job's stages (the unattributed rest included) over the
    # plain loop, by construction.
    assert result["parameters"]["repeats"] == 1
    (stages,) = result["stage_runs_s"]
    plain = attested["median_s"]["plain_torch"]
    assert math.fsum(attested["overhead_parts"].values()) == pytest.approx(
        (math.fsum(stages.values()) - plain) / plain, rel=1e-9
    )

    tasks = result["tasks"]
    assert set(tasks) == {"tabular_logreg", "tabular_mlp"}
    for task in tasks.values():
        assert math.isfinite(task["inrun_overhead"]) and math.isfinite(task["inrun_overhead_cpu"])
        assert task["model_bytes_identical_on_off"] and task["contributions_bit_identical_across_repeats"]
    worst = max(tasks, key=lambda name: tasks[name]["inrun_overhead"])
    assert result["inrun_overhead_task"] == worst
    assert result["inrun_overhead"] == tasks[worst]["inrun_overhead"]

    # Two workers vs one: both ran the same work, and the two ranks ended with one model.
    assert set(result["data_parallel"]) == {"manifest_mlp", "wide_mlp_large_batches"}
    for parallel in result["data_parallel"].values():
        assert parallel["ranks_end_with_one_model"] and parallel["same_work_units"]
        for side in ("one_worker", "two_workers"):
            assert math.isfinite(parallel[side]["samples_per_s"]) and parallel[side]["samples_per_s"] > 0
        assert parallel["speedup"] == pytest.approx(
            parallel["one_worker"]["median_s"] / parallel["two_workers"]["median_s"]
        )
    assert {"parameters", "machine", "versions"} <= set(result)
    assert result["parameters"]["quick"] is True
