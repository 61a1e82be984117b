"""The one place where valuation numbers become integers.

Settlement splits money in exact integer units, so it needs integer weights; floats stop here.
``quantize_weights`` maps each value ``v`` to ``round_half_up(max(v, 0) · scale)`` computed in exact
decimal arithmetic on the float's binary value (``Decimal(v)`` is exact), so the result does not
depend on float rounding in ``v · scale``, on the platform, or on the order of the keys.

Negative values are clipped to zero: a record that hurt the model earns nothing, and it is not
charged either (a dividend is never negative).
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
    """Integer weights per key, keys sorted; see the module docstring for the rounding rule."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValuationError(f"scale={scale!r} is not a positive integer; use e.g. 10**9 (the default)")
    return {str(key): quantize_value(values[key], scale) for key in sorted(values, key=str)}
