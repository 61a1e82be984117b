"""Per-owner values, with each near-duplicate group sharing ONE value.

Valuation measures records; the exchange pays owners. Two things sit between:

**Players.** ``RecordGroups`` reads a version manifest's ``near_duplicate_groups`` (connected
components of near-identical records, members listed in registration order; see
:mod:`databright.datasets.near_duplicates`) and turns the valued training rows into players: each
group of two or more *valued* records is one player, every other record is a player on its own.
Group members that are not among the valued records (a job trained on part of a version) are
ignored; a group left with one valued member is an ordinary record. A group's **representative**
is its first valued member in manifest order, the earliest registered: robust valuation
(:mod:`databright.valuation.robust`) values the representative in place of the whole group.

**Sharing a group's value.** A group has one value ``V``; the ``split`` rule says who gets it:

* ``"owners"`` (default): ``V`` is divided equally among the distinct owners in the group, and
  each owner's part equally among that owner's members. How many copies an owner holds in a group
  never changes their part, so adding copies of one's own records earns nothing.
* ``"first"``: ``V`` goes to the owner of the group's first member (the earliest registrant, the
  rule ingest applies to exact duplicates), divided equally among that owner's members; other
  owners' members get 0. Stricter: near-copying someone else's record earns nothing either, at the
  price of giving nothing to a later contributor whose near-identical record was independent.

**Exact division.** Equal parts of a float are not floats, so ``split_exactly`` makes parts that
differ by at most one unit in the last place and whose *exact* sum is ``V``. Then ``math.fsum``
over the parts gives back ``V`` bit for bit, and an owner's ``fsum`` over their records — which
is how receipts and ``ValuationResult.per_owner`` sum — is the correctly rounded sum of their
singleton values and group parts, however many members a group has. Owners are taken in order of
first appearance in the group and members in manifest order, so the one-unit differences fall
the same way every time (earlier first).

``owner_values`` applies all this to per-record values from any method: it pools each group's
values into one (their ``fsum``), shares it by the rule and sums per owner. Pooling is idempotent
on values that ``robust`` already shared. It makes a group *share* one value; it does not make a
valuation *robust* to copies — on plain values the copies have already changed the game.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from databright.crypto import digest_json
from databright.errors import ValuationError
from databright.valuation.quantize import DEFAULT_SCALE, quantize_weights
from databright.valuation.result import ValuationResult

if TYPE_CHECKING:
    import pandas as pd

SplitRule = Literal["owners", "first"]
SPLIT_RULES: tuple[str, ...] = ("owners", "first")


def split_exactly(total: float, parts: int) -> list[float]:
    """``parts`` floats, equal to within one unit in the last place, whose exact sum is ``total``.

    With ``u`` the unit in the last place of ``total / parts``, ``total`` is a whole multiple
    ``T·u`` (a power of two no larger than its own unit); each part is ``⌊T / parts⌋·u`` and the
    first ``T mod parts`` get one ``u`` more. ``⌊T / parts⌋ + 1 ≤ 2^53``, so every part is exact.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValuationError(
            f"parts={parts!r} is not a positive integer; a value splits into 1 or more parts"
        )
    total = float(total)
    if not math.isfinite(total):
        raise ValuationError(f"cannot split {total!r}; a value to share must be finite")
    if parts == 1 or total == 0.0:
        return [total] * parts
    unit = math.ulp(abs(total) / parts)
    # Dividing by a power of two only moves the exponent: exact, and an integer here.
    whole = int(abs(total) / unit)
    base, extra = divmod(whole, parts)
    sign = -1.0 if total < 0 else 1.0
    low, high = sign * (base * unit), sign * ((base + 1) * unit)
    return [high] * extra + [low] * (parts - extra)


def _check_split(split: object) -> SplitRule:
    if split not in SPLIT_RULES:
        raise ValuationError(f"split={split!r} is not a rule; use one of {', '.join(map(repr, SPLIT_RULES))}")
    return cast(SplitRule, split)


def _owner_list(owners: Sequence[str] | Mapping[str, str], record_ids: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(owners, Mapping):
        missing = [rid for rid in record_ids if rid not in owners]
        if missing:
            raise ValuationError(
                f"no owner for record {missing[0]!r} ({len(missing)} records unowned); "
                "map every valued record id to its owner"
            )
        listed = [owners[rid] for rid in record_ids]
    else:
        if isinstance(owners, str):
            raise ValuationError("owners is one string; give one owner per record, in record order")
        listed = list(owners)
        if len(listed) != len(record_ids):
            raise ValuationError(
                f"{len(listed)} owners for {len(record_ids)} records; give one owner per record, in order"
            )
    for index, owner in enumerate(listed):
        if not isinstance(owner, str) or not owner:
            raise ValuationError(
                f"owner of record {record_ids[index]!r} is {owner!r}; an owner is a non-empty string id"
            )
    return tuple(listed)


class RecordGroups:
    """The valued records as players: near-duplicate groups (by row index) and the split rule.

    ``record_ids`` and ``owners`` (one per record, or a mapping from record id) follow the training
    rows; ``near_duplicate_groups`` is the manifest's list of groups of record ids. See the module
    docstring for the rules. Read-only once built.
    """

    def __init__(
        self,
        record_ids: Sequence[str],
        owners: Sequence[str] | Mapping[str, str],
        near_duplicate_groups: Sequence[Sequence[str]] = (),
        *,
        split: SplitRule = "owners",
    ) -> None:
        if isinstance(record_ids, str):
            raise ValuationError("record_ids is one string; give one id per training row")
        ids = tuple(record_ids)
        for index, rid in enumerate(ids):
            if not isinstance(rid, str) or not rid:
                raise ValuationError(f"record_ids[{index}] is {rid!r}; a record id is a non-empty string")
        row_of = {rid: row for row, rid in enumerate(ids)}
        if len(row_of) != len(ids):
            repeated = next(rid for row, rid in enumerate(ids) if row_of[rid] != row)
            raise ValuationError(f"record id {repeated!r} repeats; each valued record needs its own id")
        if isinstance(near_duplicate_groups, str):
            raise ValuationError("near_duplicate_groups is one string; give a list of groups of record ids")
        seen: dict[str, int] = {}
        rows: list[tuple[int, ...]] = []
        ignored = 0
        for number, group in enumerate(near_duplicate_groups):
            if isinstance(group, str) or not isinstance(group, Sequence) or len(group) < 2:
                raise ValuationError(
                    f"near_duplicate_groups[{number}] is {group!r}; a group lists two or more record ids "
                    "(read it from the version manifest)"
                )
            for rid in group:
                if not isinstance(rid, str):
                    raise ValuationError(f"near_duplicate_groups[{number}] holds {rid!r}, not a record id")
                if rid in seen:
                    raise ValuationError(
                        f"record {rid!r} is in near_duplicate_groups[{seen[rid]}] and [{number}]; groups are "
                        "connected components, so merge them into one"
                    )
                seen[rid] = number
            present = tuple(row_of[rid] for rid in group if rid in row_of)
            ignored += len(group) - len(present)
            if len(present) >= 2:
                rows.append(present)
        self.record_ids: tuple[str, ...] = ids
        self.owners: tuple[str, ...] = _owner_list(owners, ids)
        self.split: SplitRule = _check_split(split)
        self.groups: tuple[tuple[int, ...], ...] = tuple(rows)
        # Members the manifest names that were not valued (a job trained on part of a version).
        self.ignored_members = ignored

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        record_ids: Sequence[str],
        owners: Sequence[str] | Mapping[str, str],
        *,
        split: SplitRule = "owners",
    ) -> RecordGroups:
        """Groups from a version manifest (``read_manifest``); a manifest without groups is fine."""
        groups = manifest.get("near_duplicate_groups", [])
        if not isinstance(groups, list):
            raise ValuationError(
                f"the manifest's near_duplicate_groups is {type(groups).__name__}, not a list; "
                "pass the manifest as read_manifest returns it"
            )
        return cls(record_ids, owners, groups, split=split)

    def __len__(self) -> int:
        return len(self.record_ids)

    def __repr__(self) -> str:
        in_groups = sum(len(g) for g in self.groups)
        return (
            f"RecordGroups({len(self)} records, {len(self.groups)} groups holding {in_groups}, "
            f"{len(set(self.owners))} owners, split={self.split!r})"
        )

    @cached_property
    def representatives(self) -> np.ndarray:
        """Row of each player, ascending: every record outside a group, and each group's first."""
        keep = np.ones(len(self), dtype=bool)
        for group in self.groups:
            keep[list(group[1:])] = False
        rows = np.flatnonzero(keep)
        rows.setflags(write=False)
        return rows

    @cached_property
    def digest(self) -> str:
        """sha256 of the players: ids, owners, groups (as ids) and the split rule."""
        return digest_json(
            {
                "record_ids": list(self.record_ids),
                "owners": list(self.owners),
                "groups": [[self.record_ids[row] for row in group] for group in self.groups],
                "split": self.split,
            }
        )

    def share(self, group: Sequence[int], value: float) -> list[float]:
        """One group's value shared among its rows by the split rule, in the group's order."""
        owners_in_order: list[str] = []
        members: dict[str, list[int]] = {}
        for position, row in enumerate(group):
            owner = self.owners[row]
            if owner not in members:
                owners_in_order.append(owner)
                members[owner] = []
            members[owner].append(position)
        if self.split == "first":
            owner_parts = [value] + [0.0] * (len(owners_in_order) - 1)
        else:
            owner_parts = split_exactly(value, len(owners_in_order))
        shares = [0.0] * len(group)
        for owner, part in zip(owners_in_order, owner_parts, strict=True):
            for position, member_part in zip(
                members[owner], split_exactly(part, len(members[owner])), strict=True
            ):
                shares[position] = member_part
        return shares

    def spread(self, player_values: Any) -> np.ndarray:
        """Per-record values from one value per player (in ``representatives`` order)."""
        values = np.asarray(player_values, dtype=np.float64)
        reps = self.representatives
        if values.shape != reps.shape:
            raise ValuationError(
                f"{values.shape} player values for {reps.shape[0]} players; value the representatives "
                "(RecordGroups.representatives), one value each"
            )
        out = np.zeros(len(self), dtype=np.float64)
        out[reps] = values
        for group in self.groups:
            out[list(group)] = self.share(group, float(out[group[0]]))
        return out

    def pool(self, values: Any) -> np.ndarray:
        """Per-record values with each group's values pooled (``fsum``) and shared by the rule."""
        arr = np.array(values, dtype=np.float64, copy=True)
        if arr.shape != (len(self),):
            raise ValuationError(
                f"values have shape {arr.shape} for {len(self)} records; give one value per record, in order"
            )
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise ValuationError(
                f"value of record {self.record_ids[bad]!r} is {float(arr[bad])!r}; a valuation must be "
                "finite — recompute it before sharing values per owner"
            )
        for group in self.groups:
            rows = list(group)
            arr[rows] = self.share(group, math.fsum(arr[rows].tolist()))
        return arr


@dataclass(frozen=True)
class OwnerValues:
    """What each owner earned from one valuation: exactly rounded sums, owners sorted."""

    values: dict[str, float]
    records: dict[str, int]
    split: str
    valuation_digest: str | None = None

    def total(self) -> float:
        return math.fsum(self.values.values())

    def weights(self, scale: int = DEFAULT_SCALE) -> dict[str, int]:
        """Integer weights for settlement, by the one quantization rule (``quantize_weights``)."""
        return quantize_weights(self.values, scale)

    @cached_property
    def digest(self) -> str:
        """sha256 of the owner values (as exact float hex), counts, rule and valuation digest."""
        return digest_json(
            {
                "values": {owner: value.hex() for owner, value in self.values.items()},
                "records": self.records,
                "split": self.split,
                "valuation_digest": self.valuation_digest,
            }
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per owner: ``owner``, ``records``, ``value`` and ``weight`` (default scale)."""
        import pandas as pd

        weights = self.weights()
        owners = list(self.values)
        return pd.DataFrame(
            {
                "owner": owners,
                "records": [self.records[o] for o in owners],
                "value": [self.values[o] for o in owners],
                "weight": [weights[o] for o in owners],
            }
        )

    def __repr__(self) -> str:
        return f"OwnerValues({len(self.values)} owners, total={self.total():.6g}, split={self.split!r})"


def owner_values(values: ValuationResult | Any, groups: RecordGroups) -> OwnerValues:
    """Per-owner values: each group's values pooled into one and shared by ``groups.split``.

    ``values`` is a ``ValuationResult`` (matched to ``groups`` by record id, in any order) or one
    float per record in ``groups.record_ids`` order.
    """
    digest: str | None = None
    if isinstance(values, ValuationResult):
        digest = values.digest
        if values.record_ids != groups.record_ids:
            if set(values.record_ids) != set(groups.record_ids):
                unknown = sorted(set(values.record_ids) ^ set(groups.record_ids))
                raise ValuationError(
                    f"the valuation and the groups name different records (e.g. {unknown[0]!r}); build "
                    "RecordGroups from the same record ids that were valued"
                )
            position = {rid: i for i, rid in enumerate(values.record_ids)}
            per_record = values.values[[position[rid] for rid in groups.record_ids]]
        else:
            per_record = values.values
    else:
        per_record = np.asarray(values)
    pooled = groups.pool(per_record)
    summed: dict[str, list[float]] = {}
    for owner, value in zip(groups.owners, pooled.tolist(), strict=True):
        summed.setdefault(owner, []).append(value)
    return OwnerValues(
        values={owner: math.fsum(summed[owner]) for owner in sorted(summed)},
        records={owner: len(summed[owner]) for owner in sorted(summed)},
        split=groups.split,
        valuation_digest=digest,
    )
