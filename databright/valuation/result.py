"""``ValuationResult``: the one object a valuation method hands back, end to end.

It names the method, its parameters and seed, the digests of its inputs and the versions of the
libraries that computed it, and holds one value per training record in input order. Its ``digest``
binds all of that together with the exact float64 bytes of the values, so a receipt that quotes the
digest pins the numbers, not a rounding of them. Values become integers only in
:mod:`databright.valuation.quantize`.

**Determinism.** Every method is deterministic for its inputs and seed: the same arrays, parameters
and seed on the same library versions give bit-identical values and so the same digest (the tests
check this across processes and, for the Dask fan-out, across machines' worth of workers). The
versions are part of the digest because a new numpy or torch may round differently: a result
pins the stack it was computed on. ``library_versions()`` records Python and numpy; a method that
uses torch asks for ``library_versions("torch")``.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from databright.crypto import digest_json, sha256_hex
from databright.errors import ValuationError

if TYPE_CHECKING:
    import pandas as pd

    from databright.valuation.stopping import Convergence


def library_versions(*extra: str) -> dict[str, str]:
    """Versions of what a valuation's numbers depend on: Python and numpy, plus each of ``extra``
    (distribution names such as ``"torch"``), read from the installed metadata without importing."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"numpy": np.__version__, "python": platform.python_version()}
    for name in extra:
        if not isinstance(name, str) or not name:
            raise ValuationError(f"library name {name!r} is not a distribution name such as 'torch'")
        try:
            found[name] = version(name)
        except PackageNotFoundError as exc:
            raise ValuationError(
                f"library {name!r} is not installed, so a result cannot say it used it; install it or "
                "leave it out of library_versions(...)"
            ) from exc
    return dict(sorted(found.items()))


@dataclass(frozen=True, eq=False)
class ValuationResult:
    method: str
    params: dict[str, Any]
    seed: int | None
    input_digests: dict[str, str]
    values: np.ndarray
    record_ids: tuple[str, ...] = field(default=())
    # Empty means "this process's": filled with library_versions() when the result is made.
    library_versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64, copy=True)
        if values.ndim != 1:
            raise ValuationError(f"values must be 1-D (one per record), got shape {values.shape}")
        if not np.isfinite(values).all():
            bad = int(np.argwhere(~np.isfinite(values))[0][0])
            raise ValuationError(f"value of record {bad} is {values[bad]!r}; a valuation must be finite")
        values.setflags(write=False)
        ids = tuple(self.record_ids) if self.record_ids else tuple(str(i) for i in range(values.shape[0]))
        if len(ids) != values.shape[0]:
            raise ValuationError(f"{len(ids)} record ids for {values.shape[0]} values; give one id per value")
        if len(set(ids)) != len(ids):
            raise ValuationError("record ids repeat; each valued record needs its own id")
        # Frozen: the normalised copies are installed once, here, and never change afterwards.
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "record_ids", ids)
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "input_digests", dict(self.input_digests))
        versions = dict(self.library_versions) if self.library_versions else library_versions()
        for name, number in versions.items():
            if not isinstance(name, str) or not isinstance(number, str) or not name or not number:
                raise ValuationError(
                    f"library_versions has {name!r}: {number!r}; map library names to version strings, "
                    "e.g. library_versions('torch')"
                )
        object.__setattr__(self, "library_versions", dict(sorted(versions.items())))

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValuationResult):
            return NotImplemented
        return self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @cached_property
    def digest(self) -> str:
        """sha256 over the canonical JSON of method, parameters, seed, input digests, library
        versions, record ids and the sha256 of the values' little-endian float64 bytes."""
        return digest_json(
            {
                "method": self.method,
                "params": self.params,
                "seed": self.seed,
                "input_digests": self.input_digests,
                "library_versions": self.library_versions,
                "record_ids": list(self.record_ids),
                "values_sha256": sha256_hex(self.values.astype("<f8").tobytes()),
            }
        )

    @property
    def stderr(self) -> np.ndarray | None:
        """Per-record standard errors of a Monte Carlo estimate, NaN where a record has fewer than two
        samples; ``None`` for an exact method. Read from ``params["stderr"]``, so the digest covers it."""
        raw = self.params.get("stderr")
        if raw is None:
            return None
        if not isinstance(raw, list) or len(raw) != len(self):
            raise ValuationError(
                f"params['stderr'] is a {type(raw).__name__}, not a list of {len(self)} entries; a Monte "
                "Carlo result records one standard error (or null) per record"
            )
        return np.array([math.nan if s is None else float(s) for s in raw], dtype=np.float64)

    @property
    def convergence(self) -> Convergence | None:
        """How a Monte Carlo run ended (status ``converged`` or ``budget``); ``None`` for exact methods."""
        from databright.valuation.stopping import Convergence

        raw = self.params.get("convergence")
        if raw is None:
            return None
        try:
            return Convergence(**raw)
        except TypeError as exc:
            raise ValuationError(
                f"params['convergence'] is {raw!r}; it must be Convergence.to_dict() (status, stopped_by, "
                "updates, evaluations)"
            ) from exc

    def total(self) -> float:
        """Exactly rounded sum of all values (``math.fsum``, so order cannot change it)."""
        return math.fsum(self.values.tolist())

    def per_owner(self, owners: Sequence[str] | Mapping[str, str]) -> dict[str, float]:
        """Sum of values per owner, keys sorted.

        ``owners`` is either one owner per record, in record order, or a mapping from record id to
        owner that covers every record. Sums use ``math.fsum``: exact rounding, order independent.
        """
        if isinstance(owners, Mapping):
            missing = [rid for rid in self.record_ids if rid not in owners]
            if missing:
                raise ValuationError(
                    f"no owner for record {missing[0]!r} ({len(missing)} records unowned); "
                    "map every valued record id to its owner"
                )
            owner_of = [owners[rid] for rid in self.record_ids]
        else:
            owner_of = [str(o) for o in owners]
            if len(owner_of) != len(self):
                raise ValuationError(
                    f"{len(owner_of)} owners for {len(self)} records; give one owner per record, in order"
                )
        grouped: dict[str, list[float]] = {}
        for owner, value in zip(owner_of, self.values.tolist(), strict=True):
            grouped.setdefault(owner, []).append(value)
        return {owner: math.fsum(grouped[owner]) for owner in sorted(grouped)}

    def to_dataframe(self) -> pd.DataFrame:
        """One row per record: ``record_id`` and ``value``, in input order."""
        import pandas as pd

        return pd.DataFrame({"record_id": list(self.record_ids), "value": self.values.copy()})

    def summary(self) -> dict[str, Any]:
        """Plain JSON-able description (what a receipt's ``valuation`` field quotes)."""
        return {
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "input_digests": self.input_digests,
            "library_versions": self.library_versions,
            "records": len(self),
            "total": self.total(),
            "digest": self.digest,
        }

    def __repr__(self) -> str:
        spread = f"min={self.values.min():.4g}, max={self.values.max():.4g}, " if len(self) else ""
        return (
            f"ValuationResult(method={self.method!r}, params={self.params}, records={len(self)}, "
            f"total={self.total():.6g}, {spread}digest={self.digest[:12]}…)"
        )
