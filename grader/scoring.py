"""score(policy, metrics) -> exact score and per-line points.

The score is scale * sum(weight * points) over the policy's lines, computed on
integer pairs and reduced once; nothing here is ever a binary float.
"""

from __future__ import annotations

from math import gcd

from grader.metrics import MetricView
from grader.policy import Band, Bound, Policy
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


def score(policy: Policy, view: MetricView) -> tuple[Ratio, dict[str, Ratio]]:
    """The exact score of a policy and the points of each of its lines.

    score = scale * sum(weight * points); the weights (times scale) are
    integers over ``policy.weight_den``, so whole points sum as integers.
    """
    num, den = 0, 1  # the sum, in units of 1 / weight_den
    breakdown: dict[str, Ratio] = {}
    value_of = view.value
    for line, weight in policy.plan:
        value = value_of(line.metric)
        if value is None:
            points = line.missing
        elif line.bands:
            points = band_points(line.bands, value)
        else:
            points = value
        breakdown[line.metric.key] = points
        if points[1] == 1:
            num += weight * points[0] * den
        else:
            num, den = num * points[1] + weight * points[0] * den, den * points[1]
    den *= policy.weight_den
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
    num, den = value
    for tier in policy.tiers:
        minimum = tier.minimum
        if minimum is None:
            return tier.name
        left, right = num * minimum.value[1], minimum.value[0] * den
        if left > right or (left == right and minimum.inclusive):
            return tier.name
    raise AssertionError("the last tier has no minimum")
