"""TMC-Shapley and Banzhaf-MSR against exact enumeration, closed forms, and their own invariants."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import ValuationError
from databright.valuation import KNNShapley, ValuationResult, Valuator
from databright.valuation.banzhaf import BanzhafMSR
from databright.valuation.enumeration import exact_banzhaf, exact_shapley
from databright.valuation.stopping import MaxUpdates, RankStable
from databright.valuation.tmc_shapley import TMCShapley
from databright.valuation.utility import FunctionUtility, LogisticUtility

WEIGHTS = np.array([-0.8, -0.2, 0.1, 0.4, 0.7, 1.0, 1.3, 2.0])


def softplus_of_sum(subset: tuple[int, ...]) -> float:
    """A smooth, non-additive utility: every coalition's worth interacts with every other's."""
    return math.log1p(math.exp(sum(WEIGHTS[i] for i in subset)))


def square_of_sum(subset: tuple[int, ...]) -> float:
    return sum(WEIGHTS[i] for i in subset) ** 2


def best_member(subset: tuple[int, ...]) -> float:
    """max over the subset of |w|: flat once the best point is in, so truncation there is exact."""
    return max((abs(WEIGHTS[i]) for i in subset), default=0.0)


def assert_within_3_stderr(result: ValuationResult, exact: np.ndarray) -> None:
    stderr = result.stderr
    assert stderr is not None
    assert np.isfinite(stderr).all() and (stderr > 0).all()
    z = np.abs(result.values - exact) / stderr
    assert z.max() <= 3.0, f"estimates off by {z.round(2)} standard errors"


def test_closed_form_of_the_quadratic_utility_matches_enumeration() -> None:
    # U(S) = (Σ_S w)²: each pair term 2·w_i·w_j is split evenly, so φ_i = w_i² + w_i·Σ_{j≠i} w_j for
    # both Shapley and Banzhaf. Checks the oracle before the oracle checks the estimators.
    closed = WEIGHTS**2 + WEIGHTS * (WEIGHTS.sum() - WEIGHTS)
    np.testing.assert_allclose(exact_shapley(8, square_of_sum), closed, rtol=0, atol=1e-12)
    np.testing.assert_allclose(exact_banzhaf(8, square_of_sum), closed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [softplus_of_sum, square_of_sum, best_member])
def test_tmc_shapley_agrees_with_enumeration(fn) -> None:
    result = TMCShapley(stop=MaxUpdates(3000), truncation_tol=None, seed=1).valuate_utility(
        FunctionUtility(fn, 8)
    )
    assert_within_3_stderr(result, exact_shapley(8, fn))
    # Without truncation each permutation's marginals telescope to U(N) − U(∅) (efficiency).
    assert result.total() == pytest.approx(fn(tuple(range(8))) - fn(()), abs=1e-12)


@pytest.mark.parametrize("fn", [softplus_of_sum, square_of_sum, best_member])
def test_banzhaf_msr_agrees_with_enumeration(fn) -> None:
    result = BanzhafMSR(stop=MaxUpdates(6000), seed=2).valuate_utility(FunctionUtility(fn, 8))
    assert_within_3_stderr(result, exact_banzhaf(8, fn))
    assert result.params["convergence"] == {
        "status": "budget",
        "stopped_by": "MaxUpdates(6000)",
        "updates": 6000,
        "evaluations": 6000,
    }


def test_tmc_is_exact_with_zero_error_on_an_additive_utility() -> None:
    result = TMCShapley(stop=MaxUpdates(50), truncation_tol=None).valuate_utility(
        FunctionUtility(lambda s: float(sum(WEIGHTS[i] for i in s)), 8)
    )
    np.testing.assert_allclose(result.values, WEIGHTS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.stderr, 0.0, rtol=0, atol=1e-12)


def test_exact_truncation_changes_no_value_and_saves_evaluations() -> None:
    utility = FunctionUtility(best_member, 8)
    full = TMCShapley(stop=MaxUpdates(400), truncation_tol=None, seed=5).valuate_utility(utility)
    cut = TMCShapley(stop=MaxUpdates(400), truncation_tol=0.0, truncation_patience=1, seed=5).valuate_utility(
        utility
    )
    # Past the best point every marginal is exactly 0, so truncating there drops only zeros.
    assert cut.values.tobytes() == full.values.tobytes()
    assert cut.params["convergence"]["evaluations"] < 0.8 * full.params["convergence"]["evaluations"]


@pytest.mark.parametrize("batch_size", [None, 1, 7])
def test_values_do_not_depend_on_prefixes_per_round_or_permutations_per_batch(batch_size: int | None) -> None:
    utility = FunctionUtility(softplus_of_sum, 8)
    runs = [
        TMCShapley(
            stop=MaxUpdates(300),
            truncation_tol=0.05,
            truncation_patience=2,
            block=block,
            seed=3,
            batch_size=batch_size,
        ).valuate_utility(utility)
        for block in (1, 3, 8)
    ]
    reference = TMCShapley(stop=MaxUpdates(300), truncation_tol=0.05, truncation_patience=2, seed=3)
    assert {run.values.tobytes() for run in runs} == {reference.valuate_utility(utility).values.tobytes()}
    evaluations = [run.params["convergence"]["evaluations"] for run in runs]
    assert evaluations == sorted(evaluations)  # a bigger block scores prefixes it then discards
    # Truncation credits the tail 0, so the values now sum to a little less than U(N) − U(∅).
    assert runs[0].total() != pytest.approx(softplus_of_sum(tuple(range(8))) - softplus_of_sum(()), abs=1e-9)


def logistic_fixture(score: str) -> tuple[LogisticUtility, dict[tuple[int, ...], float]]:
    """Eight points in two overlapping classes, and U of all 256 subsets scored in one batch."""
    rng = np.random.default_rng(12)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    x = np.column_stack([y * 1.2 + rng.normal(scale=1.0, size=8), rng.normal(size=8)])
    x[3] = [2.5, 0.0]  # a class-0 point deep in class-1 territory: it should be worth little
    yv = np.array([0, 1] * 15)
    xv = np.column_stack([yv * 1.2 + rng.normal(scale=1.0, size=30), rng.normal(size=30)])
    utility = LogisticUtility(x, y, xv, yv, score=score, l2=0.1)
    masks = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)
    scores = utility.evaluate(masks)
    table = {tuple(int(i) for i in np.flatnonzero(m)): float(s) for m, s in zip(masks, scores, strict=True)}
    return utility, table


@pytest.mark.parametrize("score", ["neg_log_loss", "accuracy"])
def test_both_methods_agree_with_enumeration_on_the_batched_torch_utility(score: str) -> None:
    utility, table = logistic_fixture(score)
    shapley, banzhaf = exact_shapley(8, table.__getitem__), exact_banzhaf(8, table.__getitem__)
    tmc = TMCShapley(stop=MaxUpdates(1500), truncation_tol=None, seed=4).valuate_utility(utility)
    msr = BanzhafMSR(stop=MaxUpdates(4000), seed=4).valuate_utility(utility)
    assert_within_3_stderr(tmc, shapley)
    assert_within_3_stderr(msr, banzhaf)
    assert tmc.total() == pytest.approx(table[tuple(range(8))] - table[()], abs=1e-9)
    assert int(np.argmin(shapley)) == 3 and int(np.argmin(tmc.values)) == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: TMCShapley(stop=MaxUpdates(40), seed=seed),
        lambda seed: TMCShapley(stop=MaxUpdates(40), truncation_tol=None, seed=seed, batch_size=7),
        lambda seed: BanzhafMSR(stop=MaxUpdates(700), seed=seed, batch_size=64),
    ],
)
def test_same_seed_gives_bit_identical_results(make) -> None:
    utility, _ = logistic_fixture("neg_log_loss")
    first, second = make(11).valuate_utility(utility), make(11).valuate_utility(utility)
    assert first.values.tobytes() == second.values.tobytes()
    assert first.digest == second.digest and first.seed == 11
    assert make(12).valuate_utility(utility).values.tobytes() != first.values.tobytes()


def test_banzhaf_values_do_not_depend_on_the_batch_size() -> None:
    utility = FunctionUtility(softplus_of_sum, 8)
    runs = {
        BanzhafMSR(stop=MaxUpdates(300), seed=9, batch_size=size).valuate_utility(utility).values.tobytes()
        for size in (1, 64, 500)
    }
    assert len(runs) == 1


def test_a_run_that_stops_on_rank_stability_says_it_converged() -> None:
    additive = FunctionUtility(lambda s: float(sum(WEIGHTS[i] for i in s)), 8)
    result = TMCShapley(
        stop=RankStable(rtol=1e-2, every=20) | MaxUpdates(5000), truncation_tol=None
    ).valuate_utility(additive)
    # Exact from the first permutation: comparisons at 40 and 60 updates are both stable.
    assert result.params["convergence"] == {
        "status": "converged",
        "stopped_by": "RankStable(rtol=0.01, every=20, patience=2)",
        "updates": 60,
        "evaluations": 60 * 7 + 2,
    }
    # The same, typed, from the result itself.
    assert result.convergence is not None and result.convergence.converged
    assert result.convergence.updates == 60


def test_msr_leaves_points_seen_on_one_side_only_at_zero_without_an_error() -> None:
    result = BanzhafMSR(stop=MaxUpdates(1)).valuate_utility(FunctionUtility(softplus_of_sum, 8))
    assert result.values.tolist() == [0.0] * 8
    assert result.params["stderr"] == [None] * 8
    assert result.stderr is not None and np.isnan(result.stderr).all()


def test_exact_methods_have_no_stderr_or_convergence() -> None:
    from databright.valuation import KNNShapley

    rng = np.random.default_rng(3)
    result = KNNShapley(k=3).valuate(
        rng.normal(size=(9, 2)), [0, 1] * 4 + [0], rng.normal(size=(4, 2)), [1, 0] * 2
    )
    assert result.stderr is None and result.convergence is None


def test_the_valuator_protocol_builds_the_logistic_utility_from_the_data() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 2)), np.array([0, 1] * 6)
    xv, yv = rng.normal(size=(6, 2)), np.array([1, 0] * 3)
    method = BanzhafMSR(functools.partial(LogisticUtility, score="neg_log_loss"), stop=MaxUpdates(200))
    assert isinstance(method, Valuator) and isinstance(TMCShapley(), Valuator)
    result = method.valuate(
        x, y, xv, yv, record_ids=[f"r{i}" for i in range(12)], input_digests={"file": "abc"}
    )
    assert result.method == "banzhaf-msr" and result.record_ids[0] == "r0"
    assert result.params["utility"]["score"] == "neg_log_loss"
    assert result.params["stop"] == "MaxUpdates(200)"
    knn_digests = KNNShapley(k=1).valuate(x, y, xv, yv).input_digests
    assert result.input_digests == {**knn_digests, "file": "abc"}
    assert method.values(x, y, xv, yv).tobytes() == result.values.tobytes()
    assert (
        TMCShapley(stop=MaxUpdates(3)).valuate(x, y, xv, yv).params["utility"]["utility"]
        == "logistic-regression"
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_tmc_property_efficiency_and_null_player(n: int, seed: int) -> None:
    # A random utility table over the other players; player 0 never changes U (a null player).
    table = np.random.default_rng(seed).normal(size=1 << n)

    def utility(subset: tuple[int, ...]) -> float:
        return float(table[sum(1 << i for i in subset if i != 0)])

    result = TMCShapley(stop=MaxUpdates(30), truncation_tol=None, seed=seed).valuate_utility(
        FunctionUtility(utility, n)
    )
    assert result.total() == pytest.approx(utility(tuple(range(n))) - utility(()), abs=1e-12)
    assert result.values[0] == 0.0 and result.params["stderr"][0] == 0.0


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-50, 50), st.floats(0.1, 10))
def test_msr_property_values_follow_affine_changes_of_the_utility(
    seed: int, shift: float, scale: float
) -> None:
    # Banzhaf values ignore a constant added to U and scale with U; so must the estimates.
    base = BanzhafMSR(stop=MaxUpdates(64), seed=seed).valuate_utility(FunctionUtility(softplus_of_sum, 8))
    moved = BanzhafMSR(stop=MaxUpdates(64), seed=seed).valuate_utility(
        FunctionUtility(lambda s: scale * softplus_of_sum(s) + shift, 8)
    )
    np.testing.assert_allclose(moved.values, scale * base.values, rtol=0, atol=1e-10 * (1 + abs(shift)))
    np.testing.assert_allclose(moved.stderr, scale * base.stderr, rtol=1e-6, atol=1e-10 * (1 + abs(shift)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TMCShapley(stop=RankStable()), "may never fire"),
        (lambda: TMCShapley(stop="MaxUpdates(5)"), "not a stopping rule"),
        (lambda: BanzhafMSR(seed=-1), "seed=-1"),
        (lambda: BanzhafMSR(seed=1.5), "seed=1.5"),
        (lambda: BanzhafMSR(batch_size=0), "batch_size=0"),
        (lambda: TMCShapley(truncation_tol=-0.1), "truncation_tol=-0.1"),
        (lambda: TMCShapley(truncation_patience=0), "truncation_patience=0"),
        (lambda: TMCShapley(block=0), "block=0"),
        (lambda: TMCShapley("logistic"), "not callable"),
        (lambda: BanzhafMSR(MaxUpdates(5)), r"pass stop=MaxUpdates\(5\)"),
        (lambda: TMCShapley(stop=MaxUpdates(2)).valuate_utility(softplus_of_sum), "wrap a set function"),
        (
            lambda: TMCShapley(stop=MaxUpdates(2)).valuate_utility(FunctionUtility(len, 3), record_ids=["a"]),
            "1 record ids for 3 training points",
        ),
        (
            lambda: BanzhafMSR(lambda *data: len, stop=MaxUpdates(2)).valuate(
                np.ones((3, 1)), [0, 1, 0], np.ones((2, 1)), [0, 1]
            ),
            "not a BatchUtility",
        ),
    ],
)
def test_bad_configuration_raises_valuation_errors(make, message: str) -> None:
    with pytest.raises(ValuationError, match=message):
        make()
