"""Exact Shapley and Banzhaf by enumeration, against closed forms and an independent permutation sum."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from databright.errors import DatabrightError, ValuationError
from databright.valuation.enumeration import MAX_PLAYERS, exact_banzhaf, exact_shapley, subset_utilities


def shapley_by_permutations(n: int, utility) -> list[Fraction]:
    """The definition itself: mean marginal contribution over all n! arrival orders, in exact rationals."""
    totals = [Fraction(0)] * n
    for order in itertools.permutations(range(n)):
        coalition: list[int] = []
        for player in order:
            before = Fraction(utility(tuple(sorted(coalition))))
            coalition.append(player)
            totals[player] += Fraction(utility(tuple(sorted(coalition)))) - before
    return [t / math.factorial(n) for t in totals]


def test_additive_game_gives_each_player_its_own_weight() -> None:
    a = np.array([0.5, -1.25, 3.0, 0.0, 2.5])
    shapley = exact_shapley(5, lambda s: float(sum(a[i] for i in s)))
    banzhaf = exact_banzhaf(5, lambda s: float(sum(a[i] for i in s)))
    # The marginals are differences of rounded sums, so agreement is to rounding, not bit-exact.
    np.testing.assert_allclose(shapley, a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(banzhaf, a, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_unanimity_game(n: int) -> None:
    # U(S) = 1 iff the carrier T ⊆ S: Shapley splits 1 equally over T; Banzhaf gives 1/2^(|T|−1).
    carrier = set(range(0, n, 2))
    game = lambda s: 1.0 if carrier <= set(s) else 0.0  # noqa: E731
    t = len(carrier)
    expected_shapley = [1 / t if i in carrier else 0.0 for i in range(n)]
    expected_banzhaf = [2.0 ** -(t - 1) if i in carrier else 0.0 for i in range(n)]
    np.testing.assert_allclose(exact_shapley(n, game), expected_shapley, rtol=0, atol=1e-15)
    np.testing.assert_allclose(exact_banzhaf(n, game), expected_banzhaf, rtol=0, atol=1e-15)


def test_weighted_majority_game_by_hand() -> None:
    # Weights (3, 2, 1, 1), quota 4. Shapley–Shubik: player 0 is pivotal in 12 of 24 orders (1/2),
    # each other player in 4 (1/6). Banzhaf: player 0 swings when the others hold 1..3 (6 of 8
    # subsets), player 1 when they hold 2 or 3 ({0}, {2, 3}), players 2 and 3 when they hold exactly 3.
    w = (3, 2, 1, 1)
    game = lambda s: 1.0 if sum(w[i] for i in s) >= 4 else 0.0  # noqa: E731
    np.testing.assert_allclose(exact_shapley(4, game), [1 / 2, 1 / 6, 1 / 6, 1 / 6], rtol=0, atol=1e-15)
    np.testing.assert_allclose(exact_banzhaf(4, game), [6 / 8, 2 / 8, 2 / 8, 2 / 8], rtol=0, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_shapley_equals_permutation_definition(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = {s: float(rng.normal()) for size in range(n + 1) for s in itertools.combinations(range(n), size)}
    expected = shapley_by_permutations(n, table.__getitem__)
    got = exact_shapley(n, table.__getitem__)
    np.testing.assert_allclose(got, [float(v) for v in expected], rtol=0, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_axioms_on_random_games(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = {s: float(rng.normal()) for size in range(n + 1) for s in itertools.combinations(range(n), size)}
    shapley = exact_shapley(n, table.__getitem__)
    # Efficiency: Shapley values add up to U(N) − U(∅).
    full = table[tuple(range(n))] - table[()]
    assert abs(math.fsum(shapley.tolist()) - full) <= 1e-12
    # Banzhaf is the mean marginal over subsets: Σ_i φ_i = 2^(1−n)·Σ_S Σ_{i∉S}(U(S∪i) − U(S)).
    banzhaf = exact_banzhaf(n, table.__getitem__)
    swings = math.fsum(
        table[tuple(sorted((*s, i)))] - table[s] for s in table for i in range(n) if i not in s
    )
    assert abs(math.fsum(banzhaf.tolist()) - swings / 2 ** (n - 1)) <= 1e-12


def test_null_player_and_symmetry() -> None:
    # Player 3 never changes U; players 0 and 1 are interchangeable.
    def game(s: tuple[int, ...]) -> float:
        core = set(s) - {3}
        return float(len(core & {0, 1}) ** 2 + 2 * (2 in core) * len(core))

    for method in (exact_shapley, exact_banzhaf):
        values = method(4, game)
        assert values[3] == 0.0
        assert values[0] == values[1]


def test_utility_called_once_per_subset_with_sorted_tuples() -> None:
    seen: list[tuple[int, ...]] = []

    def game(s: tuple[int, ...]) -> float:
        seen.append(s)
        return float(len(s))

    table = subset_utilities(4, game)
    assert len(seen) == 16 == len(set(seen))
    assert all(list(s) == sorted(s) and isinstance(s, tuple) for s in seen)
    assert table[0b1011] == 3.0 and table[0] == 0.0


def test_accepts_numpy_scalars_and_integers() -> None:
    values = exact_shapley(np.int64(3), lambda s: np.float32(len(s)))
    np.testing.assert_array_equal(values, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(exact_banzhaf(3, lambda s: len(s)), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("n", [0, -2, MAX_PLAYERS + 1, 2.0, True, "3"])
def test_bad_player_counts_are_refused(n) -> None:
    with pytest.raises(ValuationError, match="n=") as info:
        exact_shapley(n, lambda s: 0.0)
    assert isinstance(info.value, DatabrightError)


@pytest.mark.parametrize(
    ("result", "fragment"), [(float("nan"), "finite"), (math.inf, "finite"), ("high", "not a number")]
)
def test_bad_utilities_are_refused(result, fragment: str) -> None:
    with pytest.raises(ValuationError, match=fragment):
        exact_banzhaf(2, lambda s: result if len(s) == 2 else 0.0)


def test_non_callable_utility_is_refused() -> None:
    with pytest.raises(ValuationError, match="not callable"):
        exact_shapley(2, 3.0)  # type: ignore[arg-type]
