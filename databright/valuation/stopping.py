"""When a Monte Carlo valuation stops, the running estimates it watches, and the sampling loop.

A Monte Carlo semivalue draws samples (a permutation for TMC-Shapley, a subset for Banzhaf-MSR);
each sample is one *update* of every point's running estimate (:class:`RunningMoments`). Between
batches the method asks its stopping rule whether to go on. Rules are small specs that compose::

    stop = MaxUpdates(5_000) | MaxTime(60) | RankStable(rtol=1e-3, every=100)

``a | b`` stops as soon as either holds, ``a & b`` once both do. ``MaxUpdates`` and ``MaxTime`` are
budgets; ``RankStable`` is a convergence test (the ranking of the estimates has stopped moving). A
rule that might never fire (``RankStable`` alone) is refused.

Batches are cut so that each rule sees the estimates at exactly the update counts it asks for
(``next_check``): ``MaxUpdates(n)`` stops after exactly ``n`` updates and ``RankStable`` compares the
same snapshots whatever the batch size, so a run they stop is deterministic for a seed. ``MaxTime``
is checked between batches (it may overrun by one), and a run it stops is not reproducible.

The result records how the run ended (:class:`Convergence`): ``"converged"`` when a convergence test
fired, ``"budget"`` when only a budget did. Elapsed time is left out, so that the record, like the
values, is identical across reruns. Rules keep state (``RankStable`` remembers the last ranking) and
are ``reset()`` before each run: one rule object serves many runs, one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from databright.errors import ValuationError


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a rule sees: samples drawn so far, utility evaluations, seconds, current estimates."""

    updates: int
    evaluations: int
    elapsed: float
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Convergence:
    """How a Monte Carlo run ended; ``to_dict()`` is what a result's ``params`` record."""

    status: str
    stopped_by: str
    updates: int
    evaluations: int

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StoppingRule(ABC):
    """A condition on a run's :class:`Progress`; compose with ``|`` (either) and ``&`` (both)."""

    #: True for a convergence test, False for a budget.
    converges: bool = False

    @property
    @abstractmethod
    def bounded(self) -> bool:
        """Whether the rule is certain to fire eventually (it contains a budget that must hold)."""

    @abstractmethod
    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        """The simple rules that hold now, or ``()`` to go on."""

    def next_check(self, progress: Progress) -> int | None:
        """Updates until this rule next needs to look at the estimates; ``None``: any time."""
        return None

    def reset(self) -> None:  # noqa: B027 - a hook: only stateful rules need to override it
        """Forget what earlier runs left behind; called before every run."""

    def __or__(self, other: StoppingRule) -> StoppingRule:
        return AnyOf(self, _as_rule(other))

    def __and__(self, other: StoppingRule) -> StoppingRule:
        return AllOf(self, _as_rule(other))


def _as_rule(other: object) -> StoppingRule:
    if not isinstance(other, StoppingRule):
        raise ValuationError(
            f"cannot compose a stopping rule with {other!r}; "
            "combine rules such as MaxUpdates(1000) | MaxTime(60)"
        )
    return other


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValuationError(f"{name}={value!r} is not a positive integer; pass a whole number ≥ 1")
    return int(value)


class MaxUpdates(StoppingRule):
    """Stop after exactly ``n`` updates (permutations for TMC-Shapley, subsets for Banzhaf-MSR)."""

    def __init__(self, n: int) -> None:
        self.n = positive_int("MaxUpdates n", n)

    @property
    def bounded(self) -> bool:
        return True

    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        return (self,) if progress.updates >= self.n else ()

    def next_check(self, progress: Progress) -> int | None:
        # Once reached it keeps holding; asking for batches of one would only slow an `&`.
        return self.n - progress.updates if progress.updates < self.n else None

    def __repr__(self) -> str:
        return f"MaxUpdates({self.n})"


class MaxTime(StoppingRule):
    """Stop once ``seconds`` of wall time have passed since the run began (checked between batches)."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise ValuationError(f"MaxTime seconds={seconds!r} must be a positive number of seconds")
        if not math.isfinite(seconds):
            raise ValuationError("MaxTime(inf) never fires; leave MaxTime out instead")
        self.seconds = float(seconds)

    @property
    def bounded(self) -> bool:
        return True

    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        return (self,) if progress.elapsed >= self.seconds else ()

    def __repr__(self) -> str:
        return f"MaxTime({self.seconds:g})"


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1…n with tied values sharing the mean of their ranks (as Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Boundaries of runs of equal values in sorted order; each run gets the mean of its positions.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.shape[0]]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; two constant rankings agree (1.0), one constant one does not (0.0)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    na, nb = float(np.sqrt(ra @ ra)), float(np.sqrt(rb @ rb))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(ra @ rb) / (na * nb)


class RankStable(StoppingRule):
    """Stop when the ranking of the estimates stops moving.

    Every ``every`` updates the current estimates are compared with those of the previous
    comparison; the rule holds once ``patience`` comparisons in a row have Spearman correlation
    ``≥ 1 − rtol``. Ranking is what a dividend split is most sensitive to, so it is the ranking,
    not the raw values, that must settle.
    """

    converges = True

    def __init__(self, rtol: float = 1e-3, every: int = 100, patience: int = 2) -> None:
        if isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0 < rtol < 1:
            raise ValuationError(f"RankStable rtol={rtol!r} must lie strictly between 0 and 1 (e.g. 1e-3)")
        self.rtol = float(rtol)
        self.every = positive_int("RankStable every", every)
        self.patience = positive_int("RankStable patience", patience)
        self.reset()

    def reset(self) -> None:
        self._previous: np.ndarray | None = None
        self._seen_at = 0
        self._streak = 0

    @property
    def bounded(self) -> bool:
        return False

    def next_check(self, progress: Progress) -> int | None:
        return self.every - progress.updates % self.every

    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        # Only snapshots on the `every` grid count, so the outcome does not depend on batch sizes.
        if progress.updates == 0 or progress.updates % self.every or progress.updates == self._seen_at:
            return (self,) if self._streak >= self.patience else ()
        self._seen_at = progress.updates
        current = np.array(progress.values, dtype=np.float64, copy=True)
        if self._previous is not None:
            stable = spearman(self._previous, current) >= 1.0 - self.rtol
            self._streak = self._streak + 1 if stable else 0
        self._previous = current
        return (self,) if self._streak >= self.patience else ()

    def __repr__(self) -> str:
        return f"RankStable(rtol={self.rtol:g}, every={self.every}, patience={self.patience})"


class _Composite(StoppingRule):
    symbol = ""
    rules: tuple[StoppingRule, ...]

    def __init__(self, *rules: StoppingRule) -> None:
        flat: list[StoppingRule] = []
        for rule in rules:
            # (a | b) | c is kept as one AnyOf(a, b, c): the repr and the checks stay flat.
            if isinstance(rule, _Composite) and type(rule) is type(self):
                flat.extend(rule.rules)
            else:
                flat.append(_as_rule(rule))
        self.rules = tuple(flat)

    def reset(self) -> None:
        for rule in self.rules:
            rule.reset()

    def _each(self, progress: Progress) -> list[tuple[StoppingRule, ...]]:
        # Every child is asked, never short-circuited: a stateful rule must see each snapshot.
        return [rule.check(progress) for rule in self.rules]

    def next_check(self, progress: Progress) -> int | None:
        steps = [s for s in (rule.next_check(progress) for rule in self.rules) if s is not None]
        return min(steps) if steps else None

    def __repr__(self) -> str:
        return f" {self.symbol} ".join(
            f"({rule!r})" if isinstance(rule, _Composite) else repr(rule) for rule in self.rules
        )


class AnyOf(_Composite):
    """Holds when any of its rules holds (``a | b``)."""

    symbol = "|"

    @property
    def bounded(self) -> bool:
        return any(rule.bounded for rule in self.rules)

    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        return tuple(fired for result in self._each(progress) for fired in result)


class AllOf(_Composite):
    """Holds when all of its rules hold (``a & b``)."""

    symbol = "&"

    @property
    def bounded(self) -> bool:
        return all(rule.bounded for rule in self.rules)

    def check(self, progress: Progress) -> tuple[StoppingRule, ...]:
        results = self._each(progress)
        return tuple(fired for result in results for fired in result) if all(results) else ()


class RunningMoments:
    """Per-point running count, mean and sum of squared deviations (Welford's update).

    ``update(samples, mask)`` folds in a batch: ``samples`` broadcasts to ``(batch, n)`` and ``mask``
    (same shape, optional) says which entries are samples of which point. Rows are folded in one at
    a time, in order, so the estimates depend only on the sequence of samples, never on how it was
    cut into batches: a method's values are the same for any batch size.
    """

    def __init__(self, n: int) -> None:
        self.count = np.zeros(n, dtype=np.int64)
        self.mean = np.zeros(n, dtype=np.float64)
        self.m2 = np.zeros(n, dtype=np.float64)

    def update(self, samples: np.ndarray, mask: np.ndarray | None = None) -> None:
        shape = (np.shape(samples)[0], self.mean.shape[0])
        values = np.broadcast_to(np.asarray(samples, dtype=np.float64), shape)
        seen_rows = np.ones(shape, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
        for row, seen in zip(values, seen_rows, strict=True):
            self.count += seen
            delta = np.where(seen, row - self.mean, 0.0)
            self.mean += delta / np.maximum(self.count, 1)
            self.m2 += delta * np.where(seen, row - self.mean, 0.0)

    def variance(self) -> np.ndarray:
        """Sample variance (ddof 1); NaN where a point has fewer than two samples."""
        out = np.full(self.mean.shape, np.nan)
        np.divide(self.m2, self.count - 1, out=out, where=self.count > 1)
        return out

    def stderr(self) -> np.ndarray:
        """Standard error of each mean; NaN where a point has fewer than two samples."""
        out = np.full(self.mean.shape, np.nan)
        np.divide(self.variance(), self.count, out=out, where=self.count > 1)
        return np.sqrt(out)


def stderr_list(stderr: np.ndarray) -> list[float | None]:
    """Standard errors as JSON-able floats for a result's ``params``; ``None`` where undefined."""
    return [float(s) if math.isfinite(s) else None for s in np.asarray(stderr, dtype=np.float64).tolist()]


def check_rule(stop: object) -> None:
    if not isinstance(stop, StoppingRule):
        raise ValuationError(
            f"stop={stop!r} is not a stopping rule; pass e.g. MaxUpdates(1000) | RankStable(rtol=1e-3)"
        )
    if not stop.bounded:
        raise ValuationError(
            f"stopping rule {stop!r} may never fire; add a budget, e.g. {stop!r} | MaxUpdates(10_000)"
        )


def run_until(
    stop: StoppingRule,
    batch_size: int,
    draw: Callable[[int], int],
    estimates: Callable[[], np.ndarray],
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Convergence:
    """Drive a Monte Carlo loop: ``draw(k)`` makes ``k`` updates and returns the utility
    evaluations it spent; ``estimates()`` gives the current values for the rules to watch;
    ``clock`` measures the seconds ``MaxTime`` sees.

    Batches never cross an update count a rule asked to see (``next_check``).
    """
    check_rule(stop)
    batch_size = positive_int("batch_size", batch_size)
    stop.reset()
    started = clock()
    updates = evaluations = 0
    while True:
        progress = Progress(updates, evaluations, clock() - started, estimates())
        fired = stop.check(progress)
        if fired:
            converged = any(rule.converges for rule in fired)
            return Convergence(
                status="converged" if converged else "budget",
                stopped_by=" | ".join(repr(rule) for rule in fired),
                updates=updates,
                evaluations=evaluations,
            )
        step = stop.next_check(progress)
        size = batch_size if step is None else min(batch_size, step)
        evaluations += draw(size)
        updates += size
