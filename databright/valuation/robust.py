"""Replication-robust valuation: a near-duplicate group is valued as ONE player.

Shapley values reward copies. With KNN-Shapley, an owner who adds ``k`` near-copies of a record
that sits close to the validation points fills more of the ``K`` nearest places with their own
rows and can earn more in total than with one copy (the tests show such a case); Agarwal, Dahleh
and Sarkar ("A marketplace for data", EC 2019) show that the Shapley value is not robust to
replication in general.
Exact copies are refused at ingest, but near-copies are kept and grouped in the manifest
(:mod:`databright.datasets.near_duplicates`), so valuation has to undo their effect itself.

**The rule.** ``ReplicationRobust(base, groups)`` values the training set with every
near-duplicate group collapsed to its representative — its first valued member in manifest
order, the earliest registered (``RecordGroups.representatives``) — using any ``base`` method
unchanged, on the representatives' rows in their original order. Each group's value is then
shared among its members by ``groups.split`` (:mod:`databright.valuation.owners`): equal parts
per owner by default, in parts whose exact sum is the group's value.

**The guarantee.** Let an owner add ``k ≥ 1`` copies (exact or near) of some of their records,
registered after the originals, and let the manifest group each copy with its original. The
collapsed training set is then *the same rows in the same order* as without the copies, so the
base method returns bit-identical values for every player; under either split rule an owner's
part of a group depends only on which owners the group holds and in which order they first
appear, which copies registered later do not change; and because the parts of a value sum
exactly to it, every owner's ``math.fsum`` over their records is bit-identical too. So the
copier receives exactly what they received with one copy — never more — and every other owner is
unaffected. The property test checks this with exact KNN-Shapley over random small datasets.

What the rule does not promise: a near-copy that the manifest does *not* group with its original
(the grouping's tolerance was not met) is an ordinary record; and a record that bridges two groups
merges them, as connected components do (one group, one value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from databright.errors import ValuationError
from databright.valuation.owners import RecordGroups
from databright.valuation.protocol import build_result, input_arrays
from databright.valuation.result import ValuationResult


class ReplicationRobust:
    """Any per-record method, with near-duplicate groups valued as single players.

    ``base`` offers ``values(x_train, y_train, x_test, y_test)`` (the ``Valuator`` protocol) and
    ideally ``method``, ``params`` and ``seed``; ``groups`` names the training rows, their owners,
    the manifest's groups and the split rule. Rows must be given in ``groups.record_ids`` order.
    """

    def __init__(self, base: Any, groups: RecordGroups) -> None:
        if not callable(getattr(base, "values", None)):
            raise ValuationError(
                f"{type(base).__name__} has no values(x_train, y_train, x_test, y_test); "
                "wrap a valuation method such as KNNShapley(k=5)"
            )
        if not isinstance(groups, RecordGroups):
            raise ValuationError(
                f"groups is a {type(groups).__name__}; build it with RecordGroups(record_ids, owners, "
                "manifest['near_duplicate_groups'])"
            )
        self.base = base
        self.groups = groups

    def __repr__(self) -> str:
        return f"ReplicationRobust({self.base!r}, {self.groups!r})"

    @property
    def method(self) -> str:
        return f"{getattr(self.base, 'method', type(self.base).__name__)}+replication-robust"

    @property
    def params(self) -> dict[str, Any]:
        base_params = dict(getattr(self.base, "params", {}))
        return {
            **base_params,
            "replication": {
                "players": "near-duplicate groups",
                "representative": "first valued member in manifest order",
                "split": self.groups.split,
                "groups": len(self.groups.groups),
            },
        }

    def _rows(self, name: str, data: Any) -> np.ndarray:
        arr = np.asarray(data)
        if arr.ndim == 0 or arr.shape[0] != len(self.groups):
            rows = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} rows"
            raise ValuationError(
                f"{name} has {rows} but the groups name {len(self.groups)} records; pass the training "
                "rows in RecordGroups.record_ids order"
            )
        return arr

    def values(self, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> np.ndarray:
        """Per-record values (float64, input order): the base method on the representatives,
        each group's value shared by the split rule."""
        xt = self._rows("x_train", x_train)
        yt = self._rows("y_train", y_train)
        reps = self.groups.representatives
        player_values = np.asarray(self.base.values(xt[reps], yt[reps], x_test, y_test), dtype=np.float64)
        return self.groups.spread(player_values)

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
        """``values`` wrapped in a ``ValuationResult`` over ``groups.record_ids``; its input digests
        name the four arrays and the players (``record_groups``), plus any ``input_digests``.
        ``record_ids``, if given, must be ``groups.record_ids`` (the protocol's argument)."""
        if record_ids is not None and tuple(str(r) for r in record_ids) != self.groups.record_ids:
            raise ValuationError(
                "record_ids differ from the ids the groups were built with; build RecordGroups from the "
                "same record ids, in training-row order, or leave record_ids out"
            )
        extra = dict(input_digests or {})
        if "record_groups" in extra:
            raise ValuationError(
                "input_digests names 'record_groups', which is the digest of the groups themselves; "
                "name other digests differently"
            )
        values = self.values(x_train, y_train, x_test, y_test)
        seed = getattr(self.base, "seed", None)
        return build_result(
            self,
            values,
            arrays=input_arrays(x_train, y_train, x_test, y_test),
            record_ids=self.groups.record_ids,
            input_digests={"record_groups": self.groups.digest, **extra},
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )
