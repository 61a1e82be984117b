"""Money at the edges: decimal text in, integer minor units inside, decimal text out.

DataBright keeps every amount as an integer number of minor units (1 DBX = 1 000 000 micro-DBX).
Decimals appear only where a person types or reads an amount; floats never touch money. This is
the one place amounts are parsed and formatted.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

CURRENCY = "DBX"
MINOR_UNITS = 1_000_000


def parse_amount(text: str, minor_units_per_unit: int = MINOR_UNITS) -> int:
    """``"12.5"`` → ``12_500_000`` minor units; refuses negatives and sub-minor-unit precision."""
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not an amount; write it like 12.5 ({CURRENCY})") from exc
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{text!r} must be a positive amount of {CURRENCY}")
    # Fraction is exact at any size; Decimal arithmetic would round past its 28-digit context.
    minor = Fraction(value) * minor_units_per_unit
    if minor.denominator != 1:
        decimals = len(str(minor_units_per_unit)) - 1
        raise ValueError(f"{text!r} has more than {decimals} decimals; {CURRENCY} counts in minor units")
    return minor.numerator


def format_amount(minor: int, currency: str = CURRENCY, minor_units_per_unit: int = MINOR_UNITS) -> str:
    """``1_234_567`` → ``"1.234567 DBX"``: decimal text made from the int by integer arithmetic."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"amount {minor!r} is not an int of minor units")
    decimals = len(str(minor_units_per_unit)) - 1
    sign = "-" if minor < 0 else ""
    units, fraction = divmod(abs(minor), minor_units_per_unit)
    text = f"{units}.{fraction:0{decimals}d}" if decimals else str(units)
    return f"{sign}{text} {currency}" if currency else f"{sign}{text}"


def format_minor(amount: int) -> str:
    """``1000000`` → ``"1 000 000"``: raw minor units grouped for reading in reports and errors."""
    return f"{amount:,}".replace(",", " ")
