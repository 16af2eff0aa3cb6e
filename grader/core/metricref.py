"""Metric references as written in policies: ``sales(12)``, ``interactions(referral, 12)``.

The metric functions themselves live in grader.core.metrics; this module only
names them, parses references and knows each metric's domain (used to check
that a line's bands cover every possible value exactly once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grader.core.rational import Ratio

MAX_WINDOW = 120  # months


@dataclass(frozen=True, slots=True)
class Domain:
    """The values a metric can take: integer or not, and its bounds (None = unbounded)."""

    integer: bool
    low: Ratio | None
    high: Ratio | None


_ANY_MONEY = Domain(False, None, None)
_NONNEG = Domain(False, (0, 1), None)
_COUNT = Domain(True, (0, 1), None)

# name -> (argument kinds, domain); "N" is a window in months, "kind"/"indicator" a name.
METRICS: dict[str, tuple[tuple[str, ...], Domain]] = {
    "sales": (("N",), _ANY_MONEY),
    "monthly_avg_sales": (("N",), _ANY_MONEY),
    "gross_profit": (("N",), _NONNEG),
    "margin": (("N",), _NONNEG),
    "purchase_count": (("N",), _COUNT),
    "active_months": (("N",), _COUNT),
    "avg_payment_days": (("N",), _NONNEG),
    "interactions": (("kind", "N"), _COUNT),
    "sales_lifetime": ((), _ANY_MONEY),
    "tenure_days": ((), _COUNT),
    "days_since_last_sale": ((), _COUNT),
    "assessment": (("indicator",), Domain(False, (0, 1), (10, 1))),
}

# What each metric's value depends on besides its reference, by kind (the key
# of a kind is grader.core.metrics.MetricView.dependency); lines of a policy that
# depend on the same kind are rescored together (grader.core.scoring.rescore).
DEPENDS_ON: dict[str, str] = {
    "sales": "buckets",
    "monthly_avg_sales": "buckets",
    "gross_profit": "buckets",
    "margin": "buckets",
    "purchase_count": "buckets",
    "active_months": "buckets",
    "avg_payment_days": "invoices",
    "interactions": "interactions",
    "sales_lifetime": "lifetime",
    "tenure_days": "first_activity",
    "days_since_last_sale": "last_sale",
    "assessment": "assessments",
}

_REF = re.compile(r"([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?")
_NAME_ARG = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class MetricRef:
    """A parsed metric reference; ``key`` is its canonical text."""

    name: str
    window: int | None
    arg: str | None
    key: str

    @property
    def domain(self) -> Domain:
        """The values this metric can take."""
        return METRICS[self.name][1]


def parse_metric(text: object) -> MetricRef:
    """Parse a metric reference; raises ValueError with a readable message."""
    if not isinstance(text, str):
        raise ValueError("metric must be a string like 'sales(12)'")
    match = _REF.fullmatch(text.strip())
    if match is None or match.group(1) not in METRICS:
        known = ", ".join(sorted(METRICS))
        raise ValueError(f"unknown metric {text!r} (known: {known})")
    name, rawargs = match.group(1), match.group(2)
    kinds = METRICS[name][0]
    args = [a.strip() for a in rawargs.split(",")] if rawargs else []
    if len(args) != len(kinds):
        signature = f"{name}({', '.join(kinds)})" if kinds else name
        raise ValueError(f"metric {text!r} must be written {signature}")
    window, arg = None, None
    for kind, value in zip(kinds, args, strict=True):
        if kind == "N":
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_WINDOW:
                raise ValueError(f"metric {text!r}: window must be 1..{MAX_WINDOW} months")
            window = int(value)
        else:
            if not _NAME_ARG.fullmatch(value):
                raise ValueError(f"metric {text!r}: {kind} must be an identifier")
            arg = value
    key = f"{name}({', '.join(args)})" if args else name
    return MetricRef(name, window, arg, key)
