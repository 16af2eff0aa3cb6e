"""Reading numbers and conditions of a policy document, with located errors.

:class:`DocReader` holds the parsed TOML document and its Locator: each
error names the file, the line and the key (grader.core.tomlpos). Every
number is an exact Decimal (never a float) of at most MAX_DIGITS digits
before and after the point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from grader.core.rational import Ratio, ratio
from grader.core.tomlpos import Locator

MAX_DIGITS = 30  # before, and after, the decimal point of any number


@dataclass(frozen=True, slots=True)
class Bound:
    """One edge: a value and whether the value itself is included."""

    value: Ratio
    inclusive: bool



class DocReader:
    """A policy document and how to fail on one of its keys."""

    def __init__(self, doc: dict[str, Any], loc: Locator) -> None:
        self.doc, self.loc = doc, loc
        self.fail = loc.error  # fail(key, message, table=, index=, needle=) -> PolicyError

    def _number(
        self,
        value: object,
        key: str,
        *,
        positive: bool = False,
        nonnegative: bool = False,
        **where: Any,
    ) -> Ratio:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise self.fail(key, "must be a number", **where)
        if not value.is_finite() if isinstance(value, Decimal) else False:
            raise self.fail(key, "must be a finite number", **where)
        if not _within_digits(value):
            raise self.fail(key, f"at most {MAX_DIGITS} digits before and after the point",
                            **where)
        if positive and value <= 0:
            raise self.fail(key, "must be > 0", **where)
        if nonnegative and value < 0:
            raise self.fail(key, "must be >= 0", **where)
        return ratio(value)

    def _condition(self, text: object, key: str, **where: Any) -> tuple[Bound | None, Bound | None]:
        try:
            return parse_condition(text)
        except ValueError as exc:
            raise self.fail(key, str(exc), **where) from None


def parse_condition(text: object) -> tuple[Bound | None, Bound | None]:
    """Parse ``">= 10"``, ``"> 5 and <= 10"``, ``"== 0"`` into (low, high) bounds."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a condition is a string like '>= 80' or '> 5 and <= 10'")
    lo: Bound | None = None
    hi: Bound | None = None
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _COMPARISON.fullmatch(part)
        if match is None:
            raise ValueError(f"bad condition {text!r}: write e.g. '>= 80' or '> 5 and <= 10'")
        op, num = match.groups()
        if not _within_digits(Decimal(num)):
            raise ValueError(f"bad condition {text!r}: at most {MAX_DIGITS} digits before and "
                             "after the point")
        value = ratio(Decimal(num))
        if op in (">", ">=", "=="):
            if lo is not None:
                raise ValueError(f"bad condition {text!r}: two lower bounds")
            lo = Bound(value, op != ">")
        if op in ("<", "<=", "=="):
            if hi is not None:
                raise ValueError(f"bad condition {text!r}: two upper bounds")
            hi = Bound(value, op != "<")
    return lo, hi


def _within_digits(value: int | Decimal) -> bool:
    """Whether a finite number has at most MAX_DIGITS digits before and after the point."""
    if isinstance(value, int):
        limit: int = 10**MAX_DIGITS
        return abs(value) < limit
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -MAX_DIGITS and (
        not value or value.adjusted() < MAX_DIGITS)


_COMPARISON = re.compile(r"(>=|<=|==|>|<)\s*([-+]?\d+(?:\.\d+)?)", re.ASCII)
