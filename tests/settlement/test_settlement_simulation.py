"""The seeded settlement simulation (``settlement_sim``): 200 seeds by default, 1 000 more when slow.

Each seed is a random exchange (job streams, duplicate deliveries, a crash at a random settlement
step, retries, late jobs for posted periods) checked against an independent Fraction reference; see
``settlement_sim``'s docstring. Seeds run in a small pool of spawned processes (each seed has its
own in-memory database and folder, so they share nothing). A failure prints the seed, what differed,
the seed's events, and the command that reruns it: ``DATABRIGHT_SIM_SEED=17`` (or ``17,40``) runs
only those seeds, in this process, under a debugger if you like.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
from fractions import Fraction
from pathlib import Path

import pytest
import settlement_sim as sim
from hypothesis import given
from hypothesis import strategies as st

from databright.settlement import AllocationPolicy

DEFAULT_SEEDS = range(0, 200)
SLOW_SEEDS = range(200, 1200)


def chosen_seeds(default: range) -> list[int]:
    """The seeds named in DATABRIGHT_SIM_SEED (comma-separated), else ``default``."""
    named = os.environ.get(sim.SIM_SEED_ENV, "").strip()
    if named:
        return [int(s) for s in named.split(",") if s.strip()]
    return list(default)


def run_seeds(seeds: list[int], workdir: Path) -> dict[int, tuple[list[str], list[str]]]:
    """(problems, events) per seed; a pool of spawned processes when there are many seeds."""
    if len(seeds) < 20:
        return {seed: sim.run_and_check(seed, workdir / f"seed-{seed}") for seed in seeds}
    workers = max(1, min(4, os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")  # no DuckDB state forked from this process
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {seed: pool.submit(sim.run_and_check, seed, workdir / f"seed-{seed}") for seed in seeds}
        return {seed: future.result() for seed, future in futures.items()}


def assert_all_pass(outcomes: dict[int, tuple[list[str], list[str]]]) -> None:
    failing = [seed for seed, (problems, _) in outcomes.items() if problems]
    if failing:
        seed = failing[0]
        problems, events = outcomes[seed]
        raise AssertionError(
            f"{len(failing)} of {len(outcomes)} seeds failed: {failing[:20]}\n"
            + sim.failure_message(seed, problems, events)
        )


def test_simulation_default_seeds(tmp_path):
    seeds = chosen_seeds(DEFAULT_SEEDS)
    outcomes = run_seeds(seeds, tmp_path)
    assert_all_pass(outcomes)
    if len(seeds) == len(DEFAULT_SEEDS):
        # The faults really happen: most seeds crash mid-settlement, at every kind of step.
        crashed = sum(any(e.endswith(": struck") for e in events) for _, events in outcomes.values())
        assert crashed >= len(seeds) // 2, f"only {crashed} of {len(seeds)} seeds crashed"
        struck = {
            e.split(" of ", 1)[1].rsplit(":", 1)[0]
            for _, events in outcomes.values()
            for e in events
            if e.endswith(": struck")
        }
        assert struck == set(sim.CRASH_TARGETS), f"never struck: {set(sim.CRASH_TARGETS) - struck}"
        duplicates = sum(any("duplicate valuation" in e for e in events) for _, events in outcomes.values())
        assert duplicates >= len(seeds) // 5


@pytest.mark.slow
@pytest.mark.integration  # also out of the fast `-m "not integration"` run until `slow` is excluded there
def test_simulation_thousand_more_seeds(tmp_path):
    seeds = chosen_seeds(SLOW_SEEDS)
    assert_all_pass(run_seeds(seeds, tmp_path))


# --- the simulation's own checks are not vacuous ------------------------------------------------


def test_the_checks_catch_a_planted_rounding_bug(tmp_path, monkeypatch):
    """Give every leftover unit to the last holder instead of the largest remainders: the reference
    comparison must notice within a few seeds (a checker that passes everything proves nothing)."""
    import databright.settlement.allocation as allocation

    def last_takes_the_rest(total: int, weights: dict[str, int]) -> dict[str, int]:
        whole = sum(weights.values())
        parts = {k: total * w // whole for k, w in weights.items()}
        parts[sorted(parts)[-1]] += total - sum(parts.values())
        return parts

    monkeypatch.setattr(allocation, "largest_remainder", last_takes_the_rest)
    found = [seed for seed in range(8) if sim.run_and_check(seed, tmp_path / f"s{seed}")[0]]
    assert found, "a wrong rounding rule passed eight seeds"
    problems, _ = sim.run_and_check(found[0], tmp_path / "again")
    assert any(p.startswith(("allocation (", "holder ")) for p in problems), problems


def test_the_checks_catch_a_lost_payout(tmp_path, monkeypatch):
    """Drop the last payout of each posting: conservation and the reference both fail."""
    import databright.settlement.period as period

    original = period.settlement_transfers

    def short(p: str, allocations):  # type: ignore[no-untyped-def]
        return original(p, allocations)[:-1]

    monkeypatch.setattr(period, "settlement_transfers", short)
    problems, _ = sim.run_and_check(3, tmp_path)
    assert problems


def test_failure_message_names_the_seed_and_how_to_rerun_it():
    text = sim.failure_message(17, ["holder contributor:bob: ledger balance 1, reference 2"], ["x"])
    assert "seed 17" in text
    assert f"{sim.SIM_SEED_ENV}=17" in text
    assert "test_settlement_simulation.py" in text


def test_a_seed_is_a_replayable_scenario(tmp_path):
    first = sim.run_seed(5, tmp_path / "a")
    second = sim.run_seed(5, tmp_path / "b")
    assert first.events == second.events
    assert [s.allocation_root for s in first.settlements.values()] == [
        s.allocation_root for s in second.settlements.values()
    ]


# --- the reference's arithmetic, against closed forms --------------------------------------------


def test_reference_split_closed_forms():
    # 233 333 split 1:2 -> 77 777.67 / 155 555.33: the larger remainder (bob) takes the unit.
    assert sim.reference_split(233_333, {"bob": 1, "carol": 2}) == {"bob": 77_778, "carol": 155_555}
    # Equal remainders: ascending key order, so a and b get the two units.
    assert sim.reference_split(2, {"c": 1, "a": 1, "b": 1}) == {"c": 0, "a": 1, "b": 1}
    assert sim.reference_split(10, {"x": 0, "y": 3}) == {"x": 0, "y": 10}
    # 1 000 000 at 7000/2000/1000 bps.
    assert sim.reference_split(1_000_000, {"data": 7000, "compute": 2000, "fee": 1000}) == {
        "data": 700_000,
        "compute": 200_000,
        "fee": 100_000,
    }


def test_reference_weight_rounds_half_up_on_the_exact_float():
    assert sim.reference_weight(-1.0) == 0
    assert sim.reference_weight(0.0) == 0
    assert sim.reference_weight(2**-31) == 0  # 0.4657 of a quantum
    assert sim.reference_weight(2**-30) == 1  # 0.9313 of a quantum
    assert sim.reference_weight(0.5) == 500_000_000
    assert sim.reference_weight(1e3) == 10**12


@given(st.floats(-10.0, 1e6, allow_nan=False))
def test_reference_weight_agrees_with_quantize(value):
    from databright.valuation.quantize import quantize_value

    assert sim.reference_weight(value) == quantize_value(value)


@given(
    total=st.integers(0, 10**30),
    weights=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 10**12), min_size=1),
)
def test_reference_split_is_exact_and_within_one_unit(total, weights):
    if sum(weights.values()) == 0:
        weights = {**weights, "zz": 1}
    parts = sim.reference_split(total, weights)
    assert sum(parts.values()) == total
    whole = sum(weights.values())
    for key, part in parts.items():
        share = Fraction(total * weights[key], whole)
        assert share - 1 < part < share + 1
    shuffled = list(weights.items())
    random.Random(total).shuffle(shuffled)
    assert sim.reference_split(total, dict(shuffled)) == parts


# --- the usage floor ---------------------------------------------------------------------------------


def test_simulation_under_a_usage_floor_policy(tmp_path, monkeypatch):
    """Every seed under policies/allocation.v2.example.yaml's floor (two data rows per holder and
    job, one per basis), against the reference's own usage-floor split."""
    monkeypatch.setattr(sim, "POLICIES", (AllocationPolicy(name="sim", version=3, usage_floor_bps=1000),))
    for seed in range(6):
        problems, events = sim.run_and_check(seed, tmp_path / f"seed-{seed}")
        assert not problems, sim.failure_message(seed, problems, events)
