"""score(policy, metrics) -> exact score and per-line points.

The score is scale * sum(weight * points) over the policy's lines, computed on
integer pairs and reduced once; nothing here is ever a binary float.

rescore() is score() for a customer graded again and again: it keeps each
line's points under the key of what its metric depends on
(MetricView.dependency) and recomputes only the lines whose key changed.
"""

from __future__ import annotations

from math import gcd
from typing import Protocol

from grader.core.metricref import MetricRef
from grader.core.metrics import MetricView
from grader.core.policy import Policy
from grader.core.policylines import Band, Line
from grader.core.policyread import Bound
from grader.core.rational import Ratio


class Metrics(Protocol):
    """What score() reads: a MetricView, or given values in tests."""

    def value(self, ref: MetricRef) -> Ratio | None:
        """The value of ``ref`` (None when missing)."""
        ...

_UNSET = object()  # a dependency key no key equals


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
    """The points of one line for its metric's ``value`` (None when missing)."""
    if value is None:
        return line.missing
    if line.bands:
        return band_points(line.bands, value)
    return value


def score(policy: Policy, view: Metrics) -> tuple[Ratio, dict[str, Ratio]]:
    """The exact score of a policy and the points of each of its lines."""
    value_of = view.value
    points = [line_points(line, value_of(line.metric)) for line in policy.lines]
    return total(policy, points), dict(zip(policy.line_keys, points, strict=True))


def total(policy: Policy, points: list[Ratio]) -> Ratio:
    """The score for the points of each line (in line order).

    score = scale * sum(weight * points); the weights (times scale) are
    integers over ``policy.weight_den``, so whole points sum as integers.
    """
    num, den = 0, 1  # the sum, in units of 1 / weight_den
    for weight, (pn, pd) in zip(policy.weights, points, strict=True):
        if pd == 1:
            num += weight * pn * den
        else:
            num, den = num * pd + weight * pn * den, den * pd
    den *= policy.weight_den
    common = gcd(num, den)
    return num // common, den // common


class ScoreMemo:
    """One customer's last scoring under one policy.

    ``values[i]`` and ``points[i]`` are line i's metric value and points;
    ``keys[g]`` is the dependency key they were computed under for the lines
    of ``policy.groups[g]``; ``score`` is ``total`` of those points and
    ``tier`` the tier it earns.
    """

    __slots__ = ("keys", "points", "policy", "score", "tier", "values")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        n = len(policy.lines)
        self.keys: list[object] = [_UNSET] * len(policy.groups)
        self.values: list[Ratio | None] = [None] * n
        self.points: list[Ratio] = [(0, 1)] * n
        self.score: Ratio | None = None
        self.tier = ""

    def breakdown(self) -> dict[str, Ratio]:
        """The points of each line, by metric key (as score() gives them)."""
        return dict(zip(self.policy.line_keys, self.points, strict=True))


def rescore(policy: Policy, view: MetricView, memo: ScoreMemo) -> Ratio:
    """score(policy, view)[0], recomputing only the lines whose dependency key changed.

    ``memo`` must belong to ``policy`` and to the customer of ``view``; it is
    updated: its ``values`` and ``points`` are then those of every line.
    """
    keys, values, points = memo.keys, memo.values, memo.points
    stale = False
    for g, (kind, members) in enumerate(policy.groups):
        key = view.dependency(kind)
        if key == keys[g]:
            continue
        keys[g] = key
        for i, line in members:
            value = values[i] = view.value(line.metric)
            new = line_points(line, value)
            if new != points[i]:
                points[i] = new
                stale = True
    if stale or memo.score is None:
        memo.score = total(policy, points)
        memo.tier = earned_tier(policy, memo.score)
    return memo.score


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
