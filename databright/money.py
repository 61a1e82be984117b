"""Money at the edges: decimal text in, integer minor units inside, decimal text out.

DataBright keeps every amount as an integer number of minor units (1 DBX = 1 000 000 micro-DBX).
Decimals appear only where a person types or reads an amount; floats never touch money.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

CURRENCY = "DBX"
MINOR_UNITS = 1_000_000
_DECIMALS = 6


def parse_amount(text: str) -> int:
    """``"12.5"`` → ``12_500_000`` minor units; refuses negatives and sub-micro precision."""
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not an amount; write it like 12.5 ({CURRENCY})") from exc
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{text!r} must be a positive amount of {CURRENCY}")
    minor = value * MINOR_UNITS
    if minor != minor.to_integral_value():
        raise ValueError(f"{text!r} has more than {_DECIMALS} decimals; {CURRENCY} counts in micro-units")
    return int(minor)


def format_amount(minor: int, *, currency: bool = True) -> str:
    """``12_500_000`` → ``"12.500000 DBX"``, by integer arithmetic only."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"money is an int of minor units, got {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), MINOR_UNITS)
    text = f"{sign}{whole:,}.{frac:0{_DECIMALS}d}"
    return f"{text} {CURRENCY}" if currency else text
