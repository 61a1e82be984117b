"""Exact semivalues by enumerating every subset: the reference every fast method is checked against.

For ``n`` players and a utility ``U`` over subsets, a semivalue is

    φ_i = Σ_{S ⊆ N∖{i}} w(|S|) · (U(S ∪ {i}) − U(S)),

with ``w(s) = s!·(n−s−1)!/n! = 1/(n·C(n−1, s))`` for Shapley and ``w(s) = 1/2^(n−1)`` for Banzhaf.
Both functions call ``utility`` exactly once per subset (``2^n`` calls, the empty set included), each
time with the subset's members as a sorted tuple of ints, then form every marginal from that one
table. Each player's sum is taken with ``math.fsum`` (exactly rounded), so the result does not depend
on the order in which subsets are visited and is as accurate as float64 allows: a reference should
not carry error of its own.

``n`` is capped at :data:`MAX_PLAYERS`: ``2^n`` utility calls is the whole cost, and past that size an
enumeration is no longer a quick test oracle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from databright.errors import ValuationError

MAX_PLAYERS = 16

Utility = Callable[[tuple[int, ...]], float]


def _check_players(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValuationError(f"n={n!r} is not an integer; pass the number of players (training points)")
    if not 1 <= int(n) <= MAX_PLAYERS:
        raise ValuationError(
            f"n={n} players cannot be enumerated: exact enumeration takes 2^n utility calls and is "
            f"limited to 1 ≤ n ≤ {MAX_PLAYERS}; use a Monte Carlo method for larger sets"
        )
    return int(n)


def subset_utilities(n: int, utility: Utility) -> np.ndarray:
    """``U`` of every subset, indexed by bit mask (bit ``i`` set ⇔ player ``i`` in the subset).

    ``utility`` receives the members as a sorted tuple; it must return a finite real number.
    """
    n = _check_players(n)
    if not callable(utility):
        raise ValuationError(f"utility={utility!r} is not callable; pass a function of a tuple of indices")
    table = np.empty(1 << n, dtype=np.float64)
    for mask in range(1 << n):
        members = tuple(i for i in range(n) if mask >> i & 1)
        raw = utility(members)
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise ValuationError(
                f"utility{members} returned {raw!r}, not a number; the utility must return a float"
            ) from exc
        if not math.isfinite(value):
            raise ValuationError(
                f"utility{members} returned {value!r}; the utility must be finite on every subset, "
                "the empty set included"
            )
        table[mask] = value
    return table


def _semivalue(n: int, table: np.ndarray, denominator_by_size: np.ndarray) -> np.ndarray:
    masks = np.arange(1 << n, dtype=np.int64)
    sizes = np.zeros(1 << n, dtype=np.int64)
    for i in range(n):
        sizes += (masks >> i) & 1
    values = np.empty(n, dtype=np.float64)
    for i in range(n):
        bit = 1 << i
        without = masks[(masks & bit) == 0]
        # Dividing by the exact integer denominator rounds once; multiplying by a rounded
        # reciprocal would round twice.
        terms = (table[without | bit] - table[without]) / denominator_by_size[sizes[without]]
        values[i] = math.fsum(terms.tolist())
    return values


def exact_shapley(n: int, utility: Utility) -> np.ndarray:
    """Shapley value of each of ``n`` players (float64, player order) by full enumeration.

    ``utility(subset)`` gets a sorted tuple of player indices; ``utility(())`` is the empty set.
    The values sum to ``U(N) − U(∅)`` (efficiency) up to float rounding.
    """
    table = subset_utilities(n, utility)
    n = int(n)
    # w(s) = 1/(n·C(n−1, s)); the denominator is an integer below 2^53, so it is exact as a float.
    denominators = np.array([n * math.comb(n - 1, s) for s in range(n)], dtype=np.float64)
    return _semivalue(n, table, denominators)


def exact_banzhaf(n: int, utility: Utility) -> np.ndarray:
    """Banzhaf value of each of ``n`` players (float64, player order) by full enumeration:
    the plain mean of the player's marginal contribution over all ``2^(n−1)`` subsets of the others.
    """
    table = subset_utilities(n, utility)
    n = int(n)
    return _semivalue(n, table, np.full(n, math.ldexp(1.0, n - 1), dtype=np.float64))
