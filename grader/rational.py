"""Exact comparisons on rationals held as (numerator, denominator) int pairs.

Metric values and band edges are compared millions of times; doing it on
integer pairs by cross-multiplication is exact and far cheaper than Fraction.
Denominators are always positive.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

Ratio = tuple[int, int]

_CENT = Decimal("0.01")


def ratio(value: Fraction | int | Decimal) -> Ratio:
    """An exact number as a (numerator, denominator) pair."""
    frac = Fraction(value)
    return frac.numerator, frac.denominator


def to_fraction(value: Ratio) -> Fraction:
    """A pair back to a Fraction."""
    return Fraction(value[0], value[1])


def round2(value: Ratio | Fraction) -> Decimal:
    """Round to 2 decimals (half up) for display; decisions never use this."""
    num, den = (value.numerator, value.denominator) if isinstance(value, Fraction) else value
    return (Decimal(num) / Decimal(den)).quantize(_CENT, rounding=ROUND_HALF_UP) if den != 1 \
        else Decimal(num).quantize(_CENT)


def display(value: Ratio | Fraction) -> float | int:
    """A JSON-friendly display value: an int when whole, else rounded to 2 decimals."""
    num, den = (value.numerator, value.denominator) if isinstance(value, Fraction) else value
    if num % den == 0:
        return num // den
    return float(round2((num, den)))
