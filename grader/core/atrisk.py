"""Tier at risk (GRADING.md section 4): when the tier would drop if nothing more happened.

drops_on() answers, for one customer under one policy, as a clock ticking
every local day after the customer's ``as_of`` with no new event would: the
first local date on which the tier would be worse than now, and that tier.
It does not tick every day. With no new event, what a policy reads changes
only on these days, the candidates:

- the first day of a month in which a month holding data (sales, or the
  interactions of a kind) leaves one of the policy's windows;
- the day a line on a day count (``avg_payment_days`` while an invoice in
  its window is open, ``tenure_days``, ``days_since_last_sale``) enters
  another band; a term without bands on one changes every day, so there
  every day is a candidate (no preset has one);
- the day ``min_days_in_tier`` runs out since the last change.

Between two candidates no metric and no rule moves, so the decision stays.
At each candidate the customer is scored by the same code as a tick
(grader.core.scoring on a MetricView of that day) and its tier decided by
grader.core.tiering.decide, carrying the tier (and the day it last changed)
along, so an upgrade on the way counts as a tick's would. The look-ahead ends
at the longest window of the policy plus one month (lookahead_end). Tested
equal to a day-by-day simulation with apply_tick (tests/unit/test_atrisk.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from grader.core.clock import local_day, month_first_day, month_of_day, months_later
from grader.core.metricref import MetricRef
from grader.core.metrics import MetricView, payment_days_slope
from grader.core.policy import Policy
from grader.core.policylines import Band, Line
from grader.core.rational import Ratio
from grader.core.scoring import ScoreMemo, rescore
from grader.core.state import CustomerState, TierState
from grader.core.tiering import decide

NO_RISK: tuple[date | None, str | None] = (None, None)
_ONE_A_DAY: Ratio = (1, 1)
_NEVER = 1 << 62  # later than every day


def lookahead_end(today: int, policy: Policy) -> int:
    """The last local day looked at from day ``today``: the longest window of the
    policy plus one month later (GRADING.md section 4)."""
    return months_later(today, policy.longest_window + 1)


def drops_on(state: CustomerState, policy: Policy) -> tuple[date | None, str | None]:
    """The first local date after the customer's ``as_of`` date on which its tier
    under ``policy`` would drop with no new event, and the tier then; both None
    when it would not drop within the look-ahead, or cannot (the lowest tier, a
    pinned tier, a customer not graded)."""
    current = state.tiers.get(policy.name)
    if current is None or state.pinned_tier(policy.name) is not None:
        return NO_RISK
    if current.tier not in policy.tier_names:
        return NO_RISK  # not graded under this version yet
    if policy.rank(current.tier) == len(policy.tiers) - 1:
        return NO_RISK
    day, tier = _Walk(state, policy, current).first_drop()
    return (None, None) if day is None else (date.fromordinal(day), tier)


class _Walk:
    """One customer's days ahead under one policy, candidate by candidate."""

    def __init__(self, state: CustomerState, policy: Policy, current: TierState) -> None:
        self.state = state
        self.policy = policy
        self.tz = policy.timezone
        self.current = current
        self.rank = policy.rank(current.tier)
        self.today = local_day(state.as_of, self.tz)
        self.last = lookahead_end(self.today, policy)
        self.months = _leaving_months(state, policy, month_of_day(self.today),
                                      month_of_day(self.last))
        self.day_lines = [ln for ln in policy.lines if ln.metric.name in _DAY_METRICS
                          and ln.weight[0] != 0]
        self.memo = _copied_memo(state, policy)

    def first_drop(self) -> tuple[int | None, str | None]:
        """The first day the tier is worse than the current one, and that tier."""
        policy, tier = self.policy, self.current
        changed = local_day(tier.changed_at, self.tz)
        view = MetricView(self.state, self.tz, self.today)
        day = self._next(self.today, view, tier, changed)
        while day <= self.last:
            view = MetricView(self.state, self.tz, day)
            score = rescore(policy, view, self.memo)
            days = day - changed if policy.min_days_in_tier else 0
            decision = decide(policy, tier, score, None, days)
            if decision.direction is not None:
                if policy.rank(decision.tier) > self.rank:
                    return day, decision.tier
                tier, changed = TierState(decision.tier, score, 0, 0, False), day
            elif tier.pinned:
                tier = TierState(tier.tier, score, 0, 0, False)
            day = self._next(day, view, tier, changed)
        return None, None

    def _next(self, day: int, view: MetricView, tier: TierState, changed: int) -> int:
        """The next candidate day after ``day`` (``view`` is that day's)."""
        nxt = _NEVER
        month = month_of_day(day)
        for leaving in self.months:
            if leaving > month:
                nxt = month_first_day(leaving)
                break
        if tier.pinned:
            nxt = day + 1  # a pin was lifted: the next tick grades afresh
        if self.policy.min_days_in_tier:
            ends = changed + self.policy.min_days_in_tier
            if day < ends < nxt:
                nxt = ends
        for line in self.day_lines:
            crossing = _crossing(line, view, day)
            if crossing < nxt:
                nxt = crossing
        return nxt


_DAY_METRICS = frozenset(("avg_payment_days", "tenure_days", "days_since_last_sale"))


def _crossing(line: Line, view: MetricView, day: int) -> int:
    """The first day after ``day`` on which ``line``'s points may change with the day
    alone (its metric's months staying in the window); _NEVER if none."""
    value = view.value(line.metric)
    if value is None:
        return _NEVER
    slope = _slope(view, line.metric)
    if slope[0] == 0:
        return _NEVER
    if not line.bands:
        return day + 1  # the points are the value itself: they change every day
    return day + _days_to_leave(line.bands, value, slope)


def _slope(view: MetricView, ref: MetricRef) -> Ratio:
    if ref.name == "avg_payment_days":
        return payment_days_slope(view, ref)
    return _ONE_A_DAY  # tenure_days, days_since_last_sale


def _days_to_leave(bands: tuple[Band, ...], value: Ratio, slope: Ratio) -> int:
    """The fewest days (>= 1) after which ``value`` growing by ``slope`` a day leaves
    its band; _NEVER when its band has no upper edge. Denominators are positive."""
    a, b = value
    c, e = slope
    for band in bands:
        hi = band.hi
        if hi is None:
            return _NEVER
        p, q = hi.value
        # value + k * slope vs hi  <=>  k * (b * q * c) vs (p * b - a * q) * e
        room, step = (p * b - a * q) * e, b * q * c
        if room > 0 or (room == 0 and hi.inclusive):  # the value is in this band
            days = room // step + 1 if hi.inclusive else -(-room // step)
            return max(days, 1)
    raise AssertionError("bands validated at load cover every value")


def _leaving_months(state: CustomerState, policy: Policy, month: int, last: int) -> list[int]:
    """The months after ``month``, up to ``last``, whose first day sees a month holding
    data leave one of the policy's windows, in order."""
    tz = policy.timezone
    buckets = state.months.get(tz, {})
    kinds = state.interactions.get(tz, {})
    leaving: set[int] = set()
    for line in policy.lines:
        window = line.metric.window
        if window is None:
            continue
        held: Iterable[int] = (kinds.get(line.metric.arg or "", {}).keys()
                               if line.metric.name == "interactions" else buckets.keys())
        for data_month in held:
            gone = data_month + window
            if month < gone <= last:
                leaving.add(gone)
    return sorted(leaving)


def _copied_memo(state: CustomerState, policy: Policy) -> ScoreMemo:
    """A scoring memo to walk with: a copy of the customer's (so the lines whose
    metrics do not move with the day are not scored again), or a new one."""
    memo = ScoreMemo(policy)
    known = state.memo.get(policy.name)
    if isinstance(known, ScoreMemo) and known.policy is policy:
        memo.keys = list(known.keys)
        memo.values = list(known.values)
        memo.points = list(known.points)
        memo.score = known.score
        memo.tier = known.tier
    return memo
