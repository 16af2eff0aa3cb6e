"""Human-readable text of a policy, for `grader policy check`."""

from __future__ import annotations

from grader.core.policy import Policy
from grader.core.policylines import Line
from grader.core.policyread import Bound
from grader.core.rational import Ratio, to_fraction


def _num(value: Ratio) -> str:
    frac = to_fraction(value)
    if frac.denominator == 1:
        return str(frac.numerator)
    return (
        format(frac.numerator / frac.denominator, "g")
        if len(str(frac)) > 12
        else str(float(frac)).rstrip("0").rstrip(".")
    )


def _bound(bound: Bound, lower: bool) -> str:
    op = (">=" if bound.inclusive else ">") if lower else ("<=" if bound.inclusive else "<")
    return f"{op} {_num(bound.value)}"


def _line(line: Line, kind: str) -> list[str]:
    if kind == "linear":
        return [f"  {line.metric.key} x {_num(line.weight)} (missing: {_num(line.missing)})"]
    weight = "" if line.weight == (1, 1) else f" weight {_num(line.weight)}"
    head = f"  {line.metric.key}{weight} (missing: {_num(line.missing)})"
    if not line.bands:
        return [head, "    points = the value itself"]
    rows = [head]
    for band in line.bands:
        if band.lo and band.hi and band.lo.value == band.hi.value:
            parts = [f"== {_num(band.lo.value)}"]
        else:
            parts = [_bound(b, lower) for b, lower in ((band.lo, True), (band.hi, False)) if b]
        rows.append(f"    {' and '.join(parts) or 'any value':<28} {_num(band.points)}")
    return rows


def describe(policy: Policy) -> str:
    """Tiers, rules and lines of a valid policy, as text."""
    out = [
        f"policy {policy.name} version {policy.version} ({policy.source}): OK",
        f"kind {policy.kind}, currency {policy.currency}, timezone {policy.timezone}, "
        f"scale {_num(policy.scale)}",
        f"rules: downgrade_margin {_num(policy.downgrade_margin)}, "
        f"min_days_in_tier {policy.min_days_in_tier}",
        "tiers (best first):",
    ]
    for tier in policy.tiers:
        out.append(
            f"  {tier.name:<12} {_bound(tier.minimum, True) if tier.minimum else 'otherwise'}"
        )
    out.append(f"support priority: {', '.join(policy.support_priority)}")
    out.append("lines:" if policy.kind == "scorecard" else "terms:")
    for line in policy.lines:
        out.extend(_line(line, policy.kind))
    return "\n".join(out)
