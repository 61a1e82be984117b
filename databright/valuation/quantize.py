"""The one place where valuation numbers become integers.

Settlement splits money in exact integer units, so it needs integer weights; floats stop here.
``quantize_weights`` maps each value ``v`` to ``round_half_up(max(v, 0) · scale)`` computed in exact
decimal arithmetic on the float's binary value (``Decimal(v)`` is exact), so the result does not
depend on float rounding in ``v · scale``, on the platform, or on the order of the keys.

The rules, each tested:

* **Negative values are clipped to zero**: a record (or owner) that hurt the model earns nothing,
  and is not charged either (a dividend is never negative). Clipping happens here, once, on what
  is weighted — settlement weights owner sums, so an owner's good and bad records net out first.
* **Ties**: each value is quantized on its own, never relative to the others, so equal values get
  equal weights and the weights do not depend on the order or number of keys. Nothing is broken
  here; the one place ties are broken is when money is apportioned
  (:func:`databright.settlement.rounding.largest_remainder`, by key).
* **Values below half a unit** (``v · scale < 1/2``) get weight 0, the same as negatives.
* **All zero**: when every weight is 0 (no value, all negative, or all below half a unit) the
  weights are all 0 as they are; this function never invents a split. The caller chooses the
  fallback: settlement then pays the data share by rows used, and refuses when that is zero too.

``DEFAULT_SCALE = 10**9`` resolves values to 1e-9 (a KNN-Shapley value is at most 1/K per record).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, localcontext

from databright.errors import ValuationError

DEFAULT_SCALE = 10**9


def quantize_value(value: float, scale: int = DEFAULT_SCALE) -> int:
    """One value as an integer weight: clip below at 0, multiply by ``scale``, round half up."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError) as exc:
            raise ValuationError(
                f"value {value!r} is not a number; weights come from numeric values"
            ) from exc
    if not math.isfinite(value):
        raise ValuationError(f"value {value!r} is not finite; recompute the valuation before quantizing")
    if value <= 0:
        return 0
    with localcontext() as ctx:
        # Enough digits that the product of an exact float and the scale is itself exact.
        ctx.prec = 1100
        scaled = Decimal(value) * Decimal(scale)
        return int(scaled.to_integral_value(rounding=ROUND_HALF_UP))


def quantize_weights(values: Mapping[str, float], scale: int = DEFAULT_SCALE) -> dict[str, int]:
    """Integer weights per key, keys sorted; see the module docstring for the rules."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValuationError(f"scale={scale!r} is not a positive integer; use e.g. 10**9 (the default)")
    weights: dict[str, int] = {}
    for key in sorted(values, key=str):
        name = str(key)
        if name in weights:
            raise ValuationError(
                f"keys {key!r} and another both read {name!r}; name each weighted party by one string id"
            )
        weights[name] = quantize_value(values[key], scale)
    return weights
