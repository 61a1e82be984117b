"""Truncated Monte Carlo Shapley (Ghorbani & Zou, ICML 2019, "Data Shapley: equitable valuation of
data for machine learning", Algorithm 1), and :class:`MonteCarloValuator`, the base it shares with
Banzhaf-MSR (:mod:`databright.valuation.banzhaf`).

The Shapley value of point ``i`` is its marginal contribution averaged over all orders in which the
points could arrive:

    φ_i = E_π[ U(P_i^π ∪ {i}) − U(P_i^π) ],   P_i^π = the points before ``i`` in the order π.

TMC samples orders (permutations) uniformly; walking one permutation, the utility of each prefix
minus that of the one before is one sample of the arriving point's marginal, so one permutation
updates every point once. Sample means are unbiased; the standard error of each point is its
sample standard deviation over permutations divided by the square root of their number.

Truncation: once ``truncation_patience`` consecutive prefixes score within
``truncation_tol · |U(N)|`` of the full set's score ``U(N)``, the remaining points of that
permutation are credited 0 and not evaluated: adding them to a prefix that already performs like
the full set changes little. This is the paper's performance tolerance (its code truncates after
more than five consecutive prefixes within 1 %, the defaults here); it trades a small bias for a
large saving. ``truncation_tol=None`` turns it off, and then the estimate is unbiased and each
permutation's marginals sum to ``U(N) − U(∅)`` (efficiency).

Batching: ``batch_size`` permutations advance together, ``block`` prefix lengths at a time; the
prefixes of a round are scored in one call of the batch utility, and truncation is then applied in
order along each permutation. Neither changes the values (a larger block only scores some prefixes
past a truncation point that are then discarded), as long as the utility scores a subset the same
in any batch: exactly for :class:`~databright.valuation.utility.FunctionUtility`, to rounding for
the logistic utility. ``U(∅)`` and ``U(N)`` are scored
once per run; the last prefix of every permutation is ``N`` itself and reuses ``U(N)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from databright.errors import ValuationError
from databright.valuation.result import ValuationResult, library_versions
from databright.valuation.stopping import (
    Convergence,
    MaxUpdates,
    RankStable,
    RunningMoments,
    StoppingRule,
    check_rule,
    positive_int,
    run_until,
    stderr_list,
)
from databright.valuation.utility import BatchUtility, evaluate_checked

if TYPE_CHECKING:
    import torch


UtilityFactory = Callable[[Any, Any, Any, Any], BatchUtility]


class MonteCarloValuator(ABC):
    """What TMC-Shapley and Banzhaf-MSR share: a utility, a stopping rule, a seed, one result.

    ``values``/``valuate`` build the utility from the data with ``utility`` (default
    :class:`~databright.valuation.utility.LogisticUtility`, called as ``utility(x_train, y_train,
    x_test, y_test)``); ``valuate_utility`` values any :class:`BatchUtility` directly (a closed form,
    a custom model). Samples come from a ``torch.Generator`` seeded with ``seed``.
    """

    method = ""

    def __init__(
        self,
        stop: StoppingRule,
        *,
        seed: int,
        batch_size: int | None,
        utility: UtilityFactory | None,
    ) -> None:
        check_rule(stop)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**63:
            raise ValuationError(
                f"seed={seed!r} must be an integer in [0, 2**63); it fixes every sample drawn"
            )
        if isinstance(utility, StoppingRule):
            raise ValuationError(
                f"{utility!r} is a stopping rule, passed where the utility goes; pass stop={utility!r}"
            )
        if utility is not None and not callable(utility):
            raise ValuationError(
                f"utility={utility!r} is not callable; "
                "pass a factory such as LogisticUtility or a functools.partial of it"
            )
        self.stop = stop
        self.seed = int(seed)
        self.batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
        self.utility = utility

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The method's own parameters (the stopping rule included); batch sizes are left out."""

    @abstractmethod
    def _estimate(
        self, utility: BatchUtility, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, Convergence]:
        """Values, their standard errors (NaN where undefined) and how the run ended."""

    def _make_utility(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> BatchUtility:
        if self.utility is None:
            from databright.valuation.utility import LogisticUtility

            return LogisticUtility(x_train, y_train, x_test, y_test)
        made = self.utility(x_train, y_train, x_test, y_test)
        if not isinstance(made, BatchUtility):
            raise ValuationError(
                f"utility factory returned {made!r}, not a BatchUtility (n, params, input_digests, evaluate)"
            )
        return made

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray:
        """Per-training-point values (float64, input order) against the validation set."""
        return self.valuate(x_train, y_train, x_test, y_test).values

    def valuate(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        record_ids: Sequence[str] | None = None,
        input_digests: Mapping[str, str] | None = None,
    ) -> ValuationResult:
        """Values of the training rows in a ``ValuationResult``; see :meth:`valuate_utility`."""
        utility = self._make_utility(x_train, y_train, x_test, y_test)
        return self.valuate_utility(utility, record_ids=record_ids, input_digests=input_digests)

    def valuate_utility(
        self,
        utility: BatchUtility,
        *,
        record_ids: Sequence[str] | None = None,
        input_digests: Mapping[str, str] | None = None,
    ) -> ValuationResult:
        """Values of the utility's ``n`` points.

        ``params`` holds the method's parameters, ``"utility"`` (the utility's parameters),
        ``"convergence"`` (:class:`Convergence` as a dict) and ``"stderr"`` (one standard error per
        point, ``None`` where fewer than two samples make it undefined).
        """
        import torch

        if not isinstance(utility, BatchUtility):
            raise ValuationError(
                f"{utility!r} is not a BatchUtility; wrap a set function with FunctionUtility(fn, n)"
            )
        ids = tuple(str(i) for i in range(utility.n)) if record_ids is None else tuple(map(str, record_ids))
        if len(ids) != utility.n:
            raise ValuationError(
                f"{len(ids)} record ids for {utility.n} training points; give one id per point"
            )
        digests = dict(utility.input_digests)
        extra = dict(input_digests or {})
        clash = sorted(set(extra) & set(digests))
        if clash:
            raise ValuationError(
                f"input_digests names {clash[0]!r}, which is already the digest of an input array; "
                "name file digests differently (e.g. 'x_train_file')"
            )
        generator = torch.Generator().manual_seed(self.seed)
        values, stderr, convergence = self._estimate(utility, generator)
        params = {
            **self.params,
            "utility": dict(utility.params),
            "convergence": convergence.to_dict(),
            "stderr": stderr_list(stderr),
        }
        return ValuationResult(
            method=self.method,
            params=params,
            seed=self.seed,
            input_digests={**digests, **extra},
            values=values,
            record_ids=ids,
            # Samples come from torch's generator (and the default utility trains with torch), so
            # the values are pinned to the torch version as well as numpy's.
            library_versions=library_versions("torch"),
        )


class TMCShapley(MonteCarloValuator):
    """Truncated Monte Carlo Shapley over a batch utility.

    An update is one permutation. The default rule stops after 500 permutations or once the
    ranking is stable. ``block`` (prefix lengths per round) defaults to the whole permutation
    without truncation and an eighth of it with it; ``batch_size`` (permutations per step) to about
    2048 prefixes per round.
    """

    method = "tmc-shapley"

    def __init__(
        self,
        utility: UtilityFactory | None = None,
        *,
        stop: StoppingRule | None = None,
        seed: int = 0,
        truncation_tol: float | None = 0.01,
        truncation_patience: int = 6,
        batch_size: int | None = None,
        block: int | None = None,
    ) -> None:
        rule = MaxUpdates(500) | RankStable(rtol=1e-3, every=50) if stop is None else stop
        super().__init__(rule, seed=seed, batch_size=batch_size, utility=utility)
        if truncation_tol is not None and (
            isinstance(truncation_tol, bool)
            or not isinstance(truncation_tol, int | float)
            or not (0 <= truncation_tol < math.inf)
        ):
            raise ValuationError(
                f"truncation_tol={truncation_tol!r} must be a non-negative number (e.g. 0.01), "
                "or None to never truncate"
            )
        for name, value in (("truncation_patience", truncation_patience), ("block", block)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValuationError(f"{name}={value!r} must be a positive integer")
        self.truncation_tol = None if truncation_tol is None else float(truncation_tol)
        self.truncation_patience = int(truncation_patience)
        self.block = block

    @property
    def params(self) -> dict[str, Any]:
        return {
            "stop": repr(self.stop),
            "truncation_tol": self.truncation_tol,
            "truncation_patience": self.truncation_patience if self.truncation_tol is not None else None,
        }

    def __repr__(self) -> str:
        return (
            f"TMCShapley(stop={self.stop!r}, seed={self.seed}, truncation_tol={self.truncation_tol}, "
            f"truncation_patience={self.truncation_patience})"
        )

    def _estimate(
        self, utility: BatchUtility, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, Convergence]:
        import torch

        n = utility.n
        empty, full = evaluate_checked(utility, np.stack([np.zeros(n, bool), np.ones(n, bool)])).tolist()
        block = self.block or (n if self.truncation_tol is None else -(-n // 8))
        # By default about 2048 prefixes are scored per call: large enough batches for the utility.
        batch = self.batch_size or max(1, 2048 // block)
        # Bound the boolean masks of one round (permutations × prefixes × n) to about 32 MiB; the
        # values do not depend on the block.
        block = min(block, max(1, (1 << 25) // (n * batch)))
        margin = None if self.truncation_tol is None else self.truncation_tol * abs(full)
        moments = RunningMoments(n)

        def draw(size: int) -> int:
            perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(size)]).numpy()
            marginals, evaluations = self._walk(utility, perms, empty, full, margin, block)
            moments.update(marginals)
            return evaluations

        convergence = run_until(self.stop, batch, draw, lambda: moments.mean.copy())
        convergence = Convergence(
            convergence.status, convergence.stopped_by, convergence.updates, convergence.evaluations + 2
        )
        return moments.mean.copy(), moments.stderr(), convergence

    def _walk(
        self,
        utility: BatchUtility,
        perms: np.ndarray,
        empty: float,
        full: float,
        margin: float | None,
        block: int,
    ) -> tuple[np.ndarray, int]:
        """Marginals ``(permutations, n)`` of every point along each permutation, and the number of
        utility evaluations spent."""
        count, n = perms.shape
        rows = np.arange(count)
        position = np.empty_like(perms)
        position[rows[:, None], perms] = np.arange(n)
        marginals = np.zeros((count, n), dtype=np.float64)
        previous = np.full(count, empty)
        streak = np.zeros(count, dtype=np.int64)
        live = np.ones(count, dtype=np.bool_)
        evaluations = 0
        for start in range(0, n, block):
            lengths = np.arange(start + 1, min(start + block, n) + 1)
            walking = np.flatnonzero(live)
            if walking.size == 0:
                break
            scored = lengths[lengths < n]
            scores = np.empty((walking.size, 0))
            if scored.size:
                masks = position[walking][:, None, :] < scored[None, :, None]
                scores = evaluate_checked(utility, masks.reshape(-1, n)).reshape(walking.size, scored.size)
                evaluations += int(walking.size * scored.size)
            if scored.size < lengths.size:
                scores = np.hstack([scores, np.full((walking.size, 1), full)])
            for column, length in enumerate(lengths):
                here = walking[live[walking]]
                score = scores[live[walking], column]
                marginals[here, perms[here, length - 1]] = score - previous[here]
                previous[here] = score
                if margin is not None:
                    near = np.abs(score - full) <= margin
                    streak[here] = np.where(near, streak[here] + 1, 0)
                    live[here[streak[here] >= self.truncation_patience]] = False
        return marginals, evaluations
