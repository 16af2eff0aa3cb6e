"""Money as exact integer minor units (hundredths); never binary floats.

Amounts arrive as JSON strings or numbers with at most two decimals. A JSON
number is read by orjson as a float; for every value below 10**12 with at most
two decimals the shortest ``repr`` of that float is exactly the decimal text
that was written (such values have at most 14 significant digits, and doubles
round-trip 15), so ``repr`` recovers the exact amount.
"""

from __future__ import annotations

import re
from decimal import Decimal

MINOR_PER_MAJOR = 100
MAX_MAJOR = 10**12

_AMOUNT = re.compile(r"(\d+)(?:\.(\d{1,2}))?", re.ASCII)  # ASCII digits only


class MoneyError(ValueError):
    """An amount that is not a valid money value; the message says why."""


def parse_minor(value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` (a JSON string or number) as integer minor units."""
    if isinstance(value, str):
        minor = _text_minor(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MoneyError("must be a string or a number")
    elif isinstance(value, int):
        minor = value * MINOR_PER_MAJOR
    else:
        text = repr(value)
        minor = _text_minor(text[:-2] if text.endswith(".0") else text)
    if minor < 0 or (minor == 0 and not allow_zero):
        raise MoneyError("must be >= 0" if allow_zero else "must be > 0")
    if minor >= MAX_MAJOR * MINOR_PER_MAJOR:
        raise MoneyError("must be < 10^12")
    return minor


def _text_minor(text: str) -> int:
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise MoneyError("must be a plain decimal with at most 2 decimals")
    whole, cents = match.groups()
    whole = whole.lstrip("0") or "0"
    if len(whole) > 12:  # >= 10^12; and int() of thousands of digits is refused or slow
        raise MoneyError("must be < 10^12")
    minor = int(whole) * MINOR_PER_MAJOR
    return minor + int(cents.ljust(2, "0")) if cents else minor


def to_decimal(minor: int) -> Decimal:
    """Minor units as an exact Decimal in major units (for display)."""
    return Decimal(minor).scaleb(-2)
