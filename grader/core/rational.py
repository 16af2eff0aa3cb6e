"""Exact comparisons on rationals held as (numerator, denominator) int pairs.

Metric values and band edges are compared millions of times; doing it on
integer pairs by cross-multiplication is exact and far cheaper than Fraction.
Denominators are always positive.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

Ratio = tuple[int, int]


def ratio(value: Fraction | int | Decimal) -> Ratio:
    """An exact number as a (numerator, denominator) pair."""
    frac = Fraction(value)
    return frac.numerator, frac.denominator


def to_fraction(value: Ratio) -> Fraction:
    """A pair back to a Fraction."""
    return Fraction(value[0], value[1])


def cents(num: int, den: int) -> int:
    """num/den in hundredths, rounded half away from zero (commercial rounding)."""
    q, r = divmod(abs(num) * 100, den)
    q += 2 * r >= den
    return q if num >= 0 else -q


def round2(value: Ratio | Fraction) -> Decimal:
    """Round to 2 decimals (half away from zero) for display; decisions never use this."""
    num, den = value if isinstance(value, tuple) else (value.numerator, value.denominator)
    return Decimal(cents(num, den)).scaleb(-2)


def display(value: Ratio | Fraction) -> float | int:
    """A JSON-friendly display value: an int when whole, else rounded to 2 decimals.

    cents / 100 is the double nearest the 2-decimal value, whose shortest repr
    (what JSON encoders write) is exactly that value.
    """
    num, den = value if isinstance(value, tuple) else (value.numerator, value.denominator)
    if num % den == 0:
        return num // den
    return cents(num, den) / 100
