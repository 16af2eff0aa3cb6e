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
(grader.core.scoring on a MetricView of that day) and its tier decided by the
rules of grader.core.tiering.decide (_moved), carrying the tier (and the day it last changed)
along, so an upgrade on the way counts as a tick's would. The look-ahead ends
at the longest window of the policy plus one month (lookahead_end). Tested
equal to a day-by-day simulation with apply_tick (tests/unit/test_atrisk.py).

kept_drops_on() is drops_on() for a customer refreshed again and again (the
worker, once per batch): it keeps each answer in the customer's in-memory memo
with what it was computed from, and gives it again without walking while
nothing the walk reads changed since (see there).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from grader.core.clock import local_day, month_first_day, month_of_day, months_later
from grader.core.metricref import MetricRef
from grader.core.metrics import MetricView, Window, payment_days_slope
from grader.core.policy import Policy
from grader.core.policylines import Band, Line
from grader.core.rational import Ratio
from grader.core.scoring import ScoreMemo, admits, rescore
from grader.core.state import CustomerState, TierState

NO_RISK: tuple[date | None, str | None] = (None, None)
_ONE_A_DAY: Ratio = (1, 1)
_NEVER = 1 << 62  # later than every day


def lookahead_end(today: int, policy: Policy) -> int:
    """The last local day looked at from day ``today``: the longest window of the
    policy plus one month later (GRADING.md section 4)."""
    key = (today, policy.longest_window)
    last = _LAST.get(key)
    if last is None:
        if len(_LAST) > 4096:
            _LAST.clear()
        last = _LAST[key] = months_later(today, policy.longest_window + 1)
    return last


_LAST: dict[tuple[int, int], int] = {}  # lookahead_end's answers: few days are asked about


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
    today = local_day(state.as_of, policy.timezone)
    day, tier, _moves = _Walk(state, policy, current, today, {}).first_drop()
    return (None, None) if day is None else (date.fromordinal(day), tier)


#: The key in ``CustomerState.memo`` (in memory only, never stored) under which
#: kept_drops_on() keeps a policy's answer: a prefix no policy name has (names are
#: validated at load: no control characters).
_KEPT = "\x00drops_on\x00"


def kept_drops_on(state: CustomerState, policy: Policy,
                  windows: dict[int, dict[int, Window]] | None = None
                  ) -> tuple[date | None, str | None]:
    """drops_on(state, policy), given again without walking when nothing it reads changed.

    ``windows``: the window sums of the customer's month buckets by month, in the
    policy's timezone, shared by the walks of one refresh (the customer's buckets
    must not change meanwhile); a new dict when not given.

    The walk reads the customer's details through their revisions (the month
    buckets, invoices, interactions, assessments: every change bumps one,
    grader.core.state), the lifetime sales, first activity and last sale, the
    tier under the policy (tier, day of the last change, pinned), the pin and
    the local day of ``as_of``. The answer is kept with all but the last, the
    day it was computed on (``today``) and the first day after it on which the
    walk's tier moved (up, down, or from pinned to earned; ``moves``). It is
    exact again for a later local day ``d`` with ``today <= d < moves`` and
    everything else equal: ticking every day from ``today`` left the tier as
    it is through ``d``, so the days after ``d`` tick alike from either start,
    and the drop (at or after ``moves``) is the same. A walk that found no drop
    is given again only on its own day (from a later one the look-ahead reaches
    further). A customer who cannot drop (the lowest tier, pinned) is answered
    before any walk, and nothing is kept for it. A state loaded from bytes starts
    with an empty memo. What is kept costs memory for as long as the worker keeps
    the decoded state (docs/performance.md).
    """
    current = state.tiers.get(policy.name)
    if current is None or state.pinned_tier(policy.name) is not None or \
            current.tier not in policy.tier_names or \
            policy.rank(current.tier) == len(policy.tiers) - 1:
        return NO_RISK  # cannot drop (as in drops_on): nothing to walk, nothing kept
    plan = _plan(policy)
    key = (state.buckets_rev, state.invoices_rev, state.interactions_rev,
           state.assessments_rev, state.lifetime_sales, state.first_activity,
           state.last_sale, current.tier, current.changed_at, current.pinned)
    today = local_day(state.as_of, policy.timezone)
    memo = state.memo
    kept = memo.get(plan.kept)
    if kept is not None and kept[0] is policy and kept[2] <= today < kept[3] and \
            kept[1] == key:
        return NO_RISK if kept[4] is None else (date.fromordinal(kept[4]), kept[5])
    walk = _Walk(state, policy, current, today, {} if windows is None else windows)
    day, tier, moves = walk.first_drop()
    if day is None:
        moves = today + 1  # no drop within the look-ahead: only on this day
    # (the policy, what the walk read, its day, the day its tier moved, the answer)
    memo[plan.kept] = (policy, key, today, moves, day, tier)
    return NO_RISK if day is None else (date.fromordinal(day), tier)


class _Walk:
    """One customer's days ahead under one policy, candidate by candidate."""

    def __init__(self, state: CustomerState, policy: Policy, current: TierState, today: int,
                 windows: dict[int, dict[int, Window]]) -> None:
        self.state = state
        self.policy = policy
        self.tz = policy.timezone
        self.current = current
        self.rank = policy.rank(current.tier)
        self.today = today
        self.last = lookahead_end(today, policy)
        plan = _plan(policy)
        self.months = _leaving_months(state, self.tz, plan.sources, month_of_day(today),
                                      month_of_day(self.last))
        # avg_payment_days moves with the day only while an invoice is open (none is
        # opened or paid on the way): without one, its lines never cross a band
        open_invoice = any(inv.first_ts is not None and inv.paid_ts is None
                           for inv in state.invoices.values()) if plan.ages else False
        self.day_lines = [ln for ln in plan.day_lines
                          if open_invoice or ln.metric.name != "avg_payment_days"]
        self.memo = _copied_memo(state, policy)
        self.windows = windows  # window sums by month, shared by the views of the walk

    def view(self, day: int) -> MetricView:
        """The metrics on ``day``, with the window sums of its month shared."""
        view = MetricView(self.state, self.tz, day)
        month = view.month
        sums = self.windows.get(month)
        if sums is None:
            sums = self.windows[month] = {}
        view._windows = sums
        return view

    def first_drop(self) -> tuple[int | None, str | None, int]:
        """The first day the tier is worse than the current one, and that tier; and the
        first day the tier moved at all (up, down, or from pinned to earned), or
        _NEVER when it did not within the look-ahead."""
        policy, tier = self.policy, self.current
        changed = local_day(tier.changed_at, self.tz)
        view = self.view(self.today)
        day = self._next(self.today, view, tier, changed)
        moves = _NEVER
        while day <= self.last:
            view = self.view(day)
            score = rescore(policy, view, self.memo)
            moved = _moved(policy, tier, score, self.memo.tier, day - changed)
            if moved is not None:
                moves = min(moves, day)
                if policy.rank(moved) > self.rank:
                    return day, moved, moves
                tier, changed = TierState(moved, score, 0, 0, False), day
            elif tier.pinned:
                moves = min(moves, day)
                tier = TierState(tier.tier, score, 0, 0, False)
            day = self._next(day, view, tier, changed)
        return None, None, moves

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


def _moved(policy: Policy, tier: TierState, score: Ratio, earned: str, days: int) -> str | None:
    """The tier grader.core.tiering.decide(policy, tier, score, None, days) moves to, None when
    it stays; ``earned`` is the tier ``score`` earns (rescore's memo.tier). The same
    rules, without building a Decision at every candidate day."""
    rank = policy.rank(tier.tier)
    if tier.pinned or policy.rank(earned) <= rank:
        new = earned  # up, the same, or earned afresh after a pin was lifted
    else:
        minimum = policy.tiers[rank].minimum
        assert minimum is not None  # a worse tier exists, so the current one has a minimum
        if admits(minimum, score, policy.downgrade_margin) or days < policy.min_days_in_tier:
            return None
        new = earned
    return None if new == tier.tier else new


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


class _Plan:
    """What a walk needs of a policy, worked out once per policy object."""

    __slots__ = ("ages", "day_lines", "kept", "sources")

    def __init__(self, policy: Policy) -> None:
        self.kept = _KEPT + policy.name  # kept_drops_on's key in CustomerState.memo
        # the lines on a day count that count (a weight of 0 moves no score)
        self.day_lines = [ln for ln in policy.lines if ln.metric.name in _DAY_METRICS
                          and ln.weight[0] != 0]
        self.ages = any(ln.metric.name == "avg_payment_days" for ln in self.day_lines)
        # (window, interaction kind or None for the month buckets) of each windowed line
        sources: set[tuple[int, str | None]] = set()
        for line in policy.lines:
            window = line.metric.window
            if window is not None:
                sources.add((window, line.metric.arg or "" if line.metric.name ==
                             "interactions" else None))
        self.sources = sorted(sources, key=lambda s: (s[0], s[1] or ""))


_PLANS: dict[int, tuple[Policy, _Plan]] = {}


def _plan(policy: Policy) -> _Plan:
    known = _PLANS.get(id(policy))
    if known is not None and known[0] is policy:
        return known[1]
    if len(_PLANS) > 256:
        _PLANS.clear()
    plan = _Plan(policy)
    _PLANS[id(policy)] = (policy, plan)
    return plan


def _leaving_months(state: CustomerState, tz: str, sources: list[tuple[int, str | None]],
                    month: int, last: int) -> list[int]:
    """The months after ``month``, up to ``last``, whose first day sees a month holding
    data leave one of the windows of ``sources`` (_Plan.sources), in order."""
    buckets = state.months.get(tz, {})
    kinds = state.interactions.get(tz, {})
    leaving: set[int] = set()
    for window, kind in sources:
        held: Iterable[int] = buckets.keys() if kind is None else kinds.get(kind, {}).keys()
        low, high = month - window, last - window  # month < data_month + window <= last
        for data_month in held:
            if low < data_month <= high:
                leaving.add(data_month + window)
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
