"""score(policy, metrics) -> exact score and per-line points.

The score is scale * sum(weight * points) over the policy's lines, computed on
integer pairs and reduced once; nothing here is ever a binary float.
"""

from __future__ import annotations

from collections.abc import Callable
from math import gcd

from grader.metricref import MetricRef
from grader.policy import Band, Bound, Line, Policy
from grader.rational import Ratio


def band_points(bands: tuple[Band, ...], value: Ratio) -> Ratio:
    """The points of the band holding ``value``; bands are sorted and contiguous."""
    num, den = value
    for band in bands:
        hi = band.hi
        if hi is None:
            return band.points
        left, right = num * hi.value[1], hi.value[0] * den
        if left < right or (left == right and hi.inclusive):
            return band.points
    raise AssertionError("bands validated at load cover every value")


def line_points(line: Line, value: Ratio | None) -> Ratio:
    """A line's points for a metric value (its ``missing`` points when None)."""
    if value is None:
        return line.missing
    return band_points(line.bands, value) if line.bands else value


def score(policy: Policy, value_of: Callable[[MetricRef], Ratio | None]
          ) -> tuple[Ratio, dict[str, Ratio]]:
    """The exact score of a policy and the points of each of its lines."""
    num, den = 0, 1
    breakdown: dict[str, Ratio] = {}
    for line in policy.lines:
        pn, pd = breakdown[line.metric.key] = line_points(line, value_of(line.metric))
        wn, wd = line.weight
        tn, td = wn * pn, wd * pd
        num, den = num * td + tn * den, den * td
    num, den = num * policy.scale[0], den * policy.scale[1]
    common = gcd(num, den)
    return (num // common, den // common), breakdown


def admits(bound: Bound, value: Ratio, shift: Ratio = (0, 1)) -> bool:
    """Whether ``value`` meets a minimum ``bound`` lowered by ``shift``."""
    (bn, bd), (sn, sd) = bound.value, shift
    edge_n, edge_d = bn * sd - sn * bd, bd * sd
    left, right = value[0] * edge_d, edge_n * value[1]
    return left > right or (left == right and bound.inclusive)


def earned_tier(policy: Policy, value: Ratio) -> str:
    """The best tier whose minimum the score meets."""
    for tier in policy.tiers:
        if tier.minimum is None or admits(tier.minimum, value):
            return tier.name
    raise AssertionError("the last tier has no minimum")
