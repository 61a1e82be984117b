"""Stopping rules, their composition, and the running moments they watch."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import DatabrightError, ValuationError
from databright.valuation import stopping
from databright.valuation.stopping import (
    AllOf,
    AnyOf,
    MaxTime,
    MaxUpdates,
    Progress,
    RankStable,
    RunningMoments,
    average_ranks,
    run_until,
    spearman,
)


class Recorder:
    """A fake Monte Carlo run: each update appends one row of estimates from a fixed script."""

    def __init__(self, script: np.ndarray) -> None:
        self.script = script
        self.updates = 0
        self.batches: list[int] = []

    def draw(self, size: int) -> int:
        self.batches.append(size)
        self.updates += size
        return 3 * size  # three utility evaluations per update, to tell the two counts apart

    def estimates(self) -> np.ndarray:
        return self.script[min(self.updates, len(self.script) - 1)]


def constant_script(updates: int = 10_000, n: int = 5) -> np.ndarray:
    return np.tile(np.arange(n, dtype=float), (updates + 1, 1))


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_max_updates_stops_after_exactly_n_whatever_the_batch(batch_size: int) -> None:
    run = Recorder(constant_script())
    status = run_until(MaxUpdates(250), batch_size, run.draw, run.estimates)
    assert run.updates == 250 and sum(run.batches) == 250
    assert max(run.batches) <= batch_size
    assert status.to_dict() == {
        "status": "budget",
        "stopped_by": "MaxUpdates(250)",
        "updates": 250,
        "evaluations": 750,
    }
    assert not status.converged


def test_max_time_stops_on_the_clock_and_is_a_budget() -> None:
    # A fake clock that advances one second per update: no test waits on the real one.
    clock = {"now": 100.0}
    run = Recorder(constant_script())

    def draw(size: int) -> int:
        clock["now"] += size
        return run.draw(size)

    status = run_until(MaxTime(30) | MaxUpdates(10_000), 4, draw, run.estimates, clock=lambda: clock["now"])
    assert status.stopped_by == "MaxTime(30)" and status.status == "budget"
    # Checked between batches of 4: the first check at or past 30 s is after 32 updates.
    assert run.updates == 32


def test_rank_stable_fires_once_the_ranking_settles() -> None:
    # The ranking flips every 50 updates until update 300, then holds still.
    script = constant_script(2_000, 6)
    t = np.arange(script.shape[0])
    flipped = (t // 50 % 2 == 1) & (t < 300)
    script[flipped] = script[flipped, ::-1]
    run = Recorder(script)
    rule = RankStable(rtol=1e-3, every=50, patience=2)
    status = run_until(rule | MaxUpdates(2_000), 16, run.draw, run.estimates)
    assert status.converged and status.status == "converged"
    assert status.stopped_by == "RankStable(rtol=0.001, every=50, patience=2)"
    # Comparisons at 350 (vs 300, first stable) and 400 (second): patience 2 stops at 400.
    assert status.updates == 400


def test_rank_stable_sees_the_same_snapshots_for_any_batch_size() -> None:
    rng = np.random.default_rng(3)
    # Estimates that drift less and less: noise scaled by 1/updates on top of a fixed ranking.
    base = np.linspace(0.0, 1.0, 20)
    script = np.array([base + rng.normal(scale=3.0 / (t + 1), size=20) for t in range(3_001)])
    outcomes = set()
    for batch_size in (1, 9, 50, 333, 5_000):
        run = Recorder(script)
        status = run_until(
            RankStable(rtol=1e-2, every=25) | MaxUpdates(3_000), batch_size, run.draw, run.estimates
        )
        outcomes.add((status.updates, status.stopped_by))
    assert len(outcomes) == 1
    ((updates, stopped_by),) = outcomes
    assert stopped_by.startswith("RankStable") and updates < 3_000


def test_rank_stable_does_not_fire_while_the_ranking_keeps_changing() -> None:
    n = 8
    rng = np.random.default_rng(0)
    script = np.array([rng.permutation(n).astype(float) for _ in range(1_001)])
    run = Recorder(script)
    status = run_until(RankStable(rtol=1e-3, every=10) | MaxUpdates(1_000), 10, run.draw, run.estimates)
    assert status.stopped_by == "MaxUpdates(1000)" and not status.converged


def test_a_rule_object_serves_several_runs_after_reset() -> None:
    rule = RankStable(every=10, patience=3) | MaxUpdates(500)
    first_run, second_run = Recorder(constant_script(500)), Recorder(constant_script(500))
    first = run_until(rule, 5, first_run.draw, first_run.estimates)
    second = run_until(rule, 5, second_run.draw, second_run.estimates)
    assert first == second and first.updates == 40  # comparisons at 20, 30, 40 are stable


def test_or_and_compose_flatly_and_report_every_rule_that_fired() -> None:
    a, b, c = MaxUpdates(10), MaxTime(60), RankStable()
    either = a | b | c
    assert isinstance(either, AnyOf) and either.rules == (a, b, c)
    assert repr(either) == "MaxUpdates(10) | MaxTime(60) | RankStable(rtol=0.001, every=100, patience=2)"
    both = (a & MaxUpdates(20)) | b
    assert repr(both) == "(MaxUpdates(10) & MaxUpdates(20)) | MaxTime(60)"
    values = np.zeros(3)
    assert both.check(Progress(15, 0, 0.0, values)) == ()
    assert both.check(Progress(20, 0, 0.0, values)) == (a, both.rules[0].rules[1])  # type: ignore[attr-defined]
    assert both.check(Progress(0, 0, 61.0, values)) == (b,)
    assert isinstance(a & b, AllOf) and (a & b).bounded


def test_all_of_waits_for_every_rule() -> None:
    run = Recorder(constant_script())
    status = run_until(MaxUpdates(30) & MaxUpdates(70), 8, run.draw, run.estimates)
    assert status.updates == 70 and status.stopped_by == "MaxUpdates(30) | MaxUpdates(70)"


@pytest.mark.parametrize(
    "rule",
    [RankStable(), RankStable() & MaxUpdates(100), AllOf(MaxTime(5), RankStable())],
)
def test_a_rule_that_may_never_fire_is_refused(rule: stopping.StoppingRule) -> None:
    with pytest.raises(ValuationError, match="may never fire; add a budget"):
        run_until(rule, 10, lambda k: k, lambda: np.zeros(2))


@pytest.mark.parametrize(
    "make",
    [
        lambda: MaxUpdates(0),
        lambda: MaxUpdates(2.5),
        lambda: MaxUpdates(True),
        lambda: MaxTime(0),
        lambda: MaxTime(-1.0),
        lambda: MaxTime(float("inf")),
        lambda: MaxTime("10"),
        lambda: RankStable(rtol=0.0),
        lambda: RankStable(rtol=1.5),
        lambda: RankStable(every=0),
        lambda: RankStable(patience=-1),
        lambda: MaxUpdates(5) | 5,
        lambda: run_until("MaxUpdates(5)", 10, lambda k: k, lambda: np.zeros(2)),  # type: ignore[arg-type]
        lambda: run_until(MaxUpdates(5), 0, lambda k: k, lambda: np.zeros(2)),
    ],
)
def test_bad_rules_raise_valuation_errors(make) -> None:
    with pytest.raises(ValuationError) as info:
        make()
    assert isinstance(info.value, DatabrightError) and str(info.value)


def naive_average_ranks(values: list[float]) -> np.ndarray:
    # Rank = 1 + #smaller + (#equal − 1)/2: the mean of the positions a tie group occupies.
    return np.array([1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=30))
def test_average_ranks_match_the_counting_definition(values: list[float]) -> None:
    np.testing.assert_array_equal(average_ranks(np.array(values)), naive_average_ranks(values))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), min_size=2, max_size=25).filter(
        lambda pairs: len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1
    )
)
def test_spearman_is_pearson_of_average_ranks(pairs: list[tuple[int, int]]) -> None:
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    expected = np.corrcoef(naive_average_ranks(a.tolist()), naive_average_ranks(b.tolist()))[0, 1]
    assert spearman(a, b) == pytest.approx(expected, abs=1e-12)


def test_spearman_extremes_and_constant_rankings() -> None:
    x = np.array([0.1, 5.0, 2.0, 3.0])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0, abs=1e-15)
    assert spearman(x, -x) == pytest.approx(-1.0, abs=1e-15)
    assert spearman(np.ones(4), np.full(4, 7.0)) == 1.0
    assert spearman(np.ones(4), x) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_running_moments_equal_one_pass_statistics(n: int, samples: int, seed: int, masked: bool) -> None:
    rng = np.random.default_rng(seed)
    # A large offset makes a naive sum-of-squares variance lose digits; the pairwise merge must not.
    data = 1e6 + rng.normal(size=(samples, n))
    mask = rng.random((samples, n)) < 0.6 if masked else np.ones((samples, n), dtype=bool)
    moments = RunningMoments(n)
    cuts = (
        np.sort(rng.choice(np.arange(1, samples), size=min(3, samples - 1), replace=False))
        if samples > 1
        else []
    )
    for part, part_mask in zip(np.split(data, cuts), np.split(mask, cuts), strict=True):
        moments.update(part, part_mask if masked else None)
    for i in range(n):
        column = data[mask[:, i], i]
        assert moments.count[i] == column.size
        if column.size:
            assert moments.mean[i] == pytest.approx(column.mean(), rel=1e-15, abs=1e-9)
        if column.size > 1:
            # Exact reference: numpy's two-pass variance itself loses ~1e-8 of a tiny spread at 1e6.
            exact = [Fraction(v) for v in column.tolist()]
            centre = sum(exact, Fraction(0)) / len(exact)
            var = float(sum(((v - centre) ** 2 for v in exact), Fraction(0)) / (len(exact) - 1))
            assert moments.variance()[i] == pytest.approx(var, rel=1e-8, abs=1e-12)
            # The stderr follows from the variance checked above (whose tolerance admits Welford's
            # rounding of a tiny spread at 1e6); a fixed rel=1e-8 on it failed on such data.
            derived = np.sqrt(moments.variance()[i] / column.size)
            assert moments.stderr()[i] == pytest.approx(derived, rel=1e-15)
        else:
            assert np.isnan(moments.variance()[i]) and np.isnan(moments.stderr()[i])


def test_running_moments_broadcast_one_score_over_the_points_it_was_drawn_for() -> None:
    # The Banzhaf-MSR use: each subset's score is a sample for exactly the points inside it.
    scores = np.array([[1.0], [3.0], [5.0]])
    inside = np.array([[True, False], [True, True], [False, True]])
    moments = RunningMoments(2)
    moments.update(scores, inside)
    np.testing.assert_array_equal(moments.count, [2, 2])
    np.testing.assert_allclose(moments.mean, [2.0, 4.0], rtol=0, atol=0)
    np.testing.assert_allclose(moments.variance(), [2.0, 2.0], rtol=0, atol=1e-15)
    assert stopping.stderr_list(np.array([0.5, np.nan, np.inf])) == [0.5, None, None]
