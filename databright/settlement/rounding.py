"""Largest-remainder apportionment in exact integer arithmetic.

Splitting ``total`` minor units by integer weights ``w_k`` (sum ``W``) gives each key its floor
``total * w_k // W``; the few units left over (fewer than the number of keys) go one each to the
keys with the largest remainders ``total * w_k % W``.

Tie-break: keys with equal remainders are taken in ascending key order (Python ``str`` order, i.e.
by code point: ``"contributor:B" < "contributor:a" < "contributor:b"``), never by dict order, so the
same weights always give the same parts however they were built. Settlement keys are ledger account
ids, so among equal remainders the holder whose id sorts first gets the extra unit:
``largest_remainder(2, {"contributor:c": 1, "contributor:a": 1, "contributor:b": 1})`` pays ``a``
and ``b`` one unit each and ``c`` nothing. The rule is public (statements can explain it) and
cannot be gamed by the order in which receipts arrive.

Guarantees, all tested as properties: the parts sum to ``total`` exactly; each part is the floor or
the ceiling of its exact share ``total * w_k / W``; a zero weight gets zero.
"""

from __future__ import annotations

from collections.abc import Mapping

from databright.errors import SettlementError


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettlementError(
            f"{what} {value!r} is a {type(value).__name__}; apportionment works on ints only "
            "(quantize values to integer weights first)"
        )
    if value < 0:
        raise SettlementError(f"{what} {value} is negative; weights and totals are >= 0")
    return value


def largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights``; the parts come back in the input's key order.

    Leftover units go to the largest remainders, equal remainders in ascending key order (see the
    module docstring); the parts do not depend on the order of ``weights``.
    """
    _check_int(total, "total")
    for key, weight in weights.items():
        if not isinstance(key, str):
            raise SettlementError(f"weight key {key!r} is not a string; name each part by a string id")
        _check_int(weight, f"weight of {key!r}")
    whole = sum(weights.values())
    if whole == 0:
        raise SettlementError(
            f"cannot split {total} by weights that are all zero ({dict(weights)!r}); "
            "give at least one part a positive weight or choose another basis"
        )
    parts: dict[str, int] = {}
    remainders: dict[str, int] = {}
    for key, weight in weights.items():
        parts[key], remainders[key] = divmod(total * weight, whole)
    left = total - sum(parts.values())
    # Only keys with a positive remainder can be in the first ``left`` places (their remainders sum
    # to left * whole and each is < whole), so a zero weight never receives a unit.
    for key in sorted(remainders, key=lambda k: (-remainders[k], k))[:left]:
        parts[key] += 1
    return parts
