"""Data Banzhaf by Maximum Sample Reuse (Wang & Jia, AISTATS 2023, "Data Banzhaf: a robust data
valuation framework for machine learning", Algorithm 1).

The Banzhaf value of point ``i`` is the mean of its marginal contribution over all subsets of the
others, each equally likely:

    φ_i = 2^{−(n−1)} · Σ_{S ⊆ N∖{i}} (U(S ∪ {i}) − U(S)) = E[U(S) | i ∈ S] − E[U(S) | i ∉ S]

for ``S`` drawn uniformly from all ``2^n`` subsets (each point in with probability 1/2). MSR draws
such subsets and lets *every* sample update *every* point: ``U(S)`` joins the "in" mean of the
points in ``S`` and the "out" mean of the rest, so one utility evaluation informs ``n`` estimates
instead of two. The estimate is the difference of the two means; its standard error is
``sqrt(var_in/count_in + var_out/count_out)`` (the two sides come from disjoint samples). A point not
yet seen on both sides has value 0 and no standard error.

Subsets are drawn a batch at a time (one ``torch.rand`` of shape ``(batch, n)``) and scored with one
call of the batch utility, so the cost of a run is a few large tensor operations per batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from databright.valuation.stopping import (
    Convergence,
    MaxUpdates,
    RankStable,
    RunningMoments,
    StoppingRule,
    run_until,
)
from databright.valuation.tmc_shapley import MonteCarloValuator, UtilityFactory
from databright.valuation.utility import BatchUtility, evaluate_checked

if TYPE_CHECKING:
    import torch


class BanzhafMSR(MonteCarloValuator):
    """Monte Carlo Data Banzhaf with Maximum Sample Reuse.

    An update is one sampled subset; ``batch_size`` subsets are drawn and scored per step. The
    default rule stops after 5000 subsets or once the ranking is stable, whichever comes first.
    """

    method = "banzhaf-msr"

    def __init__(
        self,
        utility: UtilityFactory | None = None,
        *,
        stop: StoppingRule | None = None,
        seed: int = 0,
        batch_size: int = 500,
    ) -> None:
        rule = MaxUpdates(5000) | RankStable(rtol=1e-3, every=500) if stop is None else stop
        super().__init__(rule, seed=seed, batch_size=batch_size, utility=utility)

    @property
    def params(self) -> dict[str, Any]:
        return {"stop": repr(self.stop), "sampler": "uniform-subsets"}

    def __repr__(self) -> str:
        return f"BanzhafMSR(stop={self.stop!r}, seed={self.seed}, batch_size={self.batch_size})"

    def _estimate(
        self, utility: BatchUtility, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, Convergence]:
        import torch

        n = utility.n
        inside, outside = RunningMoments(n), RunningMoments(n)

        def draw(size: int) -> int:
            masks = (torch.rand((size, n), generator=generator, dtype=torch.float64) < 0.5).numpy()
            scores = evaluate_checked(utility, masks)[:, None]
            inside.update(scores, masks)
            outside.update(scores, ~masks)
            return size

        def estimates() -> np.ndarray:
            both = (inside.count > 0) & (outside.count > 0)
            return np.where(both, inside.mean - outside.mean, 0.0)

        convergence = run_until(self.stop, self.batch_size or 500, draw, estimates)
        stderr = np.hypot(inside.stderr(), outside.stderr())
        return estimates(), stderr, convergence
