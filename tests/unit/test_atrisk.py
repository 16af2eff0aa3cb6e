"""Tier at risk (grader.core.atrisk): the candidate-day look-ahead against ticking every day.

The reference is what GRADING.md section 4 says: copy the customer, tick it
(grader.core.grading.apply_tick, the stream's own step) at every local day after its
as_of date up to the look-ahead's end, and take the first day its tier is
worse than now. drops_on() must give exactly that, for the three presets and
for variants with other windows, downgrade margins and minimum days.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.core.atrisk import _KEPT, drops_on, kept_drops_on, lookahead_end
from grader.core.clock import US_PER_SECOND, local_day, zone
from grader.core.codec import dump_state, load_state
from grader.core.events import Event
from grader.core.grading import Grading, apply_event, apply_tick, new_state
from grader.core.policy import Policy
from tests.conftest import PRESETS, at, event, policy_text

AS_OF = at("2026-11-22T18:00:00+08:00")


def noon(day: int, tz: str) -> int:
    """The instant of local noon on day ordinal ``day`` in ``tz``."""
    moment = datetime.combine(date.fromordinal(day), time(12), tzinfo=zone(tz))
    return int(moment.timestamp()) * US_PER_SECOND


def last_day(today: int, policy: Policy) -> int:
    """The look-ahead's last day, computed apart from grader.core.atrisk: the as_of date
    moved on by the longest window plus one month, the day clipped to the month."""
    d = date.fromordinal(today)
    year, month0 = divmod(d.year * 12 + d.month - 1 + policy.longest_window + 1, 12)
    length = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(d.day, length)).toordinal()


def day_by_day(state: Any, grading: Grading, policy: Policy) -> tuple[date | None, str | None]:
    """The slow reference: a copy of the customer ticked once every local day."""
    current = state.tiers.get(policy.name)
    if current is None:
        return None, None
    copy = load_state(dump_state(state))
    start = policy.rank(current.tier)
    today = local_day(state.as_of, policy.timezone)
    for day in range(today + 1, last_day(today, policy) + 1):
        apply_tick(copy, noon(day, policy.timezone), grading, 0)
        tier = copy.tiers[policy.name].tier
        if policy.rank(tier) > start:
            return date.fromordinal(day), tier
    return None, None


def graded(events: list[Event], grading: Grading, tick: int | None = AS_OF) -> Any:
    state = new_state("C1")
    for e in sorted(events, key=lambda e: (e.ts, e.event_id)):
        apply_event(state, e, grading, 0)
    if tick is not None:
        apply_tick(state, tick, grading, 0)
    return state


# --- policies: the presets and variants of them -------------------------------------------

def _text(name: str) -> str:
    return (PRESETS / f"{name}.toml").read_text()


def _rules(text: str, margin: str, days: int) -> str:
    text = re.sub(r"\[rules\][^\[]*", "", text)
    return text + f"\n[rules]\ndowngrade_margin = {margin}\nmin_days_in_tier = {days}\n"


TENURE_TERMS = """
name = "days"
kind = "linear"
[[tiers]]
name = "high"
min = ">= 400"
[[tiers]]
name = "mid"
min = "> 0"
[[tiers]]
name = "low"
[[terms]]
metric = "sales(3)"
coefficient = 0.01
[[terms]]
metric = "tenure_days"
coefficient = 0.5
[[terms]]
metric = "days_since_last_sale"
coefficient = -1
missing = 30
[[terms]]
metric = "avg_payment_days(6)"
coefficient = -2
"""


@st.composite
def policies(draw: Any) -> Policy:
    name = draw(st.sampled_from(["abc-100", "sabcd-weighted", "stars", "days"]))
    if name == "days":
        text = TENURE_TERMS
    else:
        text = _text(name)
        if draw(st.booleans()):  # the preset itself half of the time
            windows = iter(draw(st.lists(st.sampled_from([1, 2, 3, 6, 12, 13]), min_size=4,
                                         max_size=4)))
            text = re.sub(r"\((12)\)", lambda _m: f"({next(windows, 12)})", text)
            margin = draw(st.sampled_from(["0", "2", "5", "12.5", "1000"]))
            text = _rules(text, margin, draw(st.sampled_from([0, 1, 7, 30, 45, 200])))
    return policy_text(text, name)


# --- customers: random histories --------------------------------------------------------

money = st.sampled_from(["30", "900", "5000", "25000", "120000", "400000", "2500000"])


@st.composite
def histories(draw: Any, grading: Grading) -> list[Event]:
    policy = grading.policies[0]
    invoices = ["I0", "I1", "I2"]
    out: list[Event] = []
    recent = st.integers(min_value=0, max_value=420)  # days before as_of
    back = st.one_of(recent, recent, st.integers(min_value=0, max_value=1150))
    # sabcd-weighted needs many events (and good assessments) to rise above D.
    many = policy.name == "sabcd-weighted"
    kinds = ["sale", "sale", "credit", "credit", "refund", "payment", "referral", "assess",
             "assess", "override"] + ["assess", "sale", "referral"] * many
    for i in range(draw(st.integers(min_value=1 + 7 * many, max_value=12 + 10 * many))):
        kind = draw(st.sampled_from(kinds))
        if kind == "override":  # a pin is rare (a pinned tier never drops)
            kind = draw(st.sampled_from(["pin", "unpin", "unpin", "blacklist"]))
        when = datetime.fromtimestamp(AS_OF / US_PER_SECOND, zone("Asia/Shanghai"))
        when = when.replace(hour=draw(st.integers(0, 23)))
        moment = (when.toordinal() - draw(back))
        stamp = datetime.combine(date.fromordinal(moment), when.timetz()).isoformat()
        fields: dict[str, Any] = {"event_id": f"e{i:02d}", "grading_": grading}
        if kind in ("sale", "credit"):
            if kind == "credit":
                fields["invoice_id"] = draw(st.sampled_from(invoices))
            if draw(st.booleans()):
                fields["gross_profit"] = draw(st.sampled_from(["0", "10", "800"]))
            out.append(event("sale", stamp, amount=draw(money), **fields))
        elif kind == "refund":
            out.append(event("refund", stamp, amount=draw(money), **fields))
        elif kind == "payment":
            out.append(event("payment", stamp, amount=draw(money),
                             invoice_id=draw(st.sampled_from(invoices)), **fields))
        elif kind == "referral":
            out.append(event("interaction", stamp, kind="referral", **fields))
        elif kind == "assess":
            indicator = draw(st.sampled_from(["C1", "C2", "C3", "D1"]))
            out.append(event("assessment", stamp, indicator=indicator, assessor="k",
                             score=draw(st.sampled_from([0, 6, 9, 10])), **fields))
        elif kind in ("pin", "unpin"):
            extra = {"tier": draw(st.sampled_from(policy.tier_names))} if kind == "pin" else {}
            out.append(event("override", stamp, action=kind, policy=policy.name, reason="r",
                             actor="a", **extra, **fields))
        else:
            out.append(event("override", stamp, action="blacklist", reason="r", actor="a",
                             **fields))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_drops_on_equals_ticking_every_day(data: Any) -> None:
    policy = data.draw(policies())
    grading = Grading((policy,))
    evs = data.draw(histories(grading))
    tick = data.draw(st.sampled_from([AS_OF, AS_OF, None]))  # as_of: a tick, or the last event
    state = graded(evs, grading, tick)
    expected = day_by_day(state, grading, policy)
    assert drops_on(state, policy) == expected
    assert drops_on(load_state(dump_state(state)), policy) == expected  # no scoring memo


# --- the kept answer (kept_drops_on): given again only while it is exact -----------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_kept_answer_equals_a_fresh_walk_after_ticks_and_events(data: Any) -> None:
    """The worker refreshes the same state object again and again: after ticks on later
    days (the kept answer may be given again) and new events (it may not), each answer
    equals drops_on of a copy (no memo, so a walk); on the first state also ticking
    every day."""
    policy = data.draw(policies())
    grading = Grading((policy,))
    state = graded(data.draw(histories(grading)), grading, AS_OF)
    expected = day_by_day(state, grading, policy)
    assert kept_drops_on(state, policy) == expected
    assert kept_drops_on(state, policy) == expected  # given again, unchanged
    tz = policy.timezone
    day = local_day(state.as_of, tz)
    for n, step in enumerate(data.draw(st.lists(st.integers(0, 45), min_size=1, max_size=6))):
        day += step
        if data.draw(st.integers(0, 3)) == 0:  # now and then a sale on that day
            when = datetime.fromtimestamp(noon(day, tz) // US_PER_SECOND, zone(tz))
            apply_event(state, event("sale", when.isoformat(), grading_=grading,
                                     event_id=f"k{n}", amount=data.draw(money)), grading, 0)
        apply_tick(state, noon(day, tz), grading, 0)
        assert kept_drops_on(state, policy) == drops_on(load_state(dump_state(state)), policy)


def _abc_a_customer() -> tuple[Any, Grading]:
    grading = Grading((ABC,))
    # A until 2026-12-01, when the 2025-12 sale leaves the 12-month window (see CASES)
    evs = [event("sale", "2025-12-10", grading_=grading, amount="240000", event_id="e1"),
           event("sale", "2026-11-10", grading_=grading, amount="100", event_id="e2")]
    return graded(evs, grading), grading


def test_a_tick_before_the_drop_gives_the_kept_answer_again() -> None:
    state, grading = _abc_a_customer()
    assert kept_drops_on(state, ABC) == (date(2026, 12, 1), "B")
    kept = state.memo[_KEPT + ABC.name]
    apply_tick(state, at("2026-11-30T12:00:00+08:00"), grading, 0)  # the day before it
    assert kept_drops_on(state, ABC) == (date(2026, 12, 1), "B")
    assert state.memo[_KEPT + ABC.name] is kept  # not walked again
    apply_tick(state, at("2026-12-01T12:00:00+08:00"), grading, 0)  # it dropped: walked
    assert state.tiers[ABC.name].tier == "B"
    assert kept_drops_on(state, ABC) == drops_on(load_state(dump_state(state)), ABC)
    assert state.memo[_KEPT + ABC.name] is not kept


def test_a_new_event_or_a_pin_walks_again() -> None:
    state, grading = _abc_a_customer()
    kept_drops_on(state, ABC)
    # a sale in 2026-11 keeps A past 2026-12-01 (240,100 over 12 months) until both 2026-11
    # sales leave: no sale in the window, 30 + 0 points
    apply_event(state, event("sale", "2026-11-20", grading_=grading, amount="240000",
                             event_id="e3"), grading, 0)
    assert kept_drops_on(state, ABC) == drops_on(load_state(dump_state(state)), ABC) \
        == (date(2027, 11, 1), "C")
    apply_event(state, event("override", "2026-11-21", grading_=grading, action="pin",
                             policy="abc-100", tier="A", reason="r", actor="a",
                             event_id="e4"), grading, 0)
    assert kept_drops_on(state, ABC) == (None, None)  # a pinned tier never drops


def test_a_customer_who_cannot_drop_keeps_nothing() -> None:
    """The lowest tier (or a pin) is answered before any walk: nothing is kept for it."""
    grading = Grading((STARS,))
    state = graded([event("interaction", "2026-11-01", grading_=grading, kind="visit",
                          event_id="e1")], grading)
    assert kept_drops_on(state, STARS) == (None, None)
    assert _KEPT + STARS.name not in state.memo


# --- hand-made cases ---------------------------------------------------------------------

ABC = policy_text(_text("abc-100"), "abc-100")
ABC_RULES = policy_text(_rules(_text("abc-100"), "15", 60), "abc-100")
ABC_MIN = policy_text(_rules(_text("abc-100"), "0", 60), "abc-100")
STARS = policy_text(_text("stars"), "stars")


def _sale(day: str, amount: str, **extra: Any) -> tuple[str, str, dict[str, Any]]:
    return ("sale", day, {"amount": amount, **extra})


CASES: list[tuple[str, Policy, list[tuple[str, str, dict[str, Any]]], str | None, str | None]] = [
    # 240,100 over 12 months is >= 20,000 a month (70 points) and paid on the spot (30): A.
    # On 2026-12-01 the 2025-12 sale leaves the window: 100 / 12 a month, 30 + 30 = 60: B.
    ("a sale leaves the 12-month window", ABC,
     [_sale("2025-12-10", "240000"), _sale("2026-11-10", "100")], "2026-12-01", "B"),
    # The older month leaving keeps 15,008 a month (50 + 30 = 80: still A) until the
    # larger, later one leaves too.
    ("the larger sale leaves last", ABC,
     [_sale("2025-12-10", "60000"), _sale("2026-03-10", "180000"), _sale("2026-11-10", "100")],
     "2027-03-01", "B"),
    ("an unpaid invoice ages past the payment-days bands", ABC,
     [_sale("2026-11-01", "300000", invoice_id="I1")], "2027-01-01", "B"),
    # The same with a margin of 15 and 60 days in the tier: 70 points (B) is within the margin
    # of A's 80, so A stays until the line is 0 and the month leaves (2027-11-01: 30 points).
    ("downgrade_margin holds the tier until the score falls further", ABC_RULES,
     [_sale("2026-11-01", "300000", invoice_id="I1")], "2027-11-01", "C"),
    ("a pinned tier never drops", ABC,
     [_sale("2025-12-10", "240000"),
      ("override", "2026-01-05", {"action": "pin", "policy": "abc-100", "tier": "A",
                                   "reason": "r", "actor": "a"})], None, None),
    ("the lowest tier cannot drop", ABC,
     [("interaction", "2026-11-01", {"kind": "visit"})], None, None),
    # Up to A on 2026-11-20 (a second 120,000: 20,000 a month); on 2026-12-01 the first
    # leaves (10,000 a month, 40 + 30 = 70: B), but 60 days in A run out only on 2027-01-19.
    ("min_days_in_tier delays a drop", ABC_MIN,
     [_sale("2025-12-05", "120000"), _sale("2026-11-20", "120000")], "2027-01-19", "B"),
    ("a blacklisted customer's tier drops as any other", STARS,
     [_sale("2026-01-05", "1000"),
      ("override", "2026-02-01", {"action": "blacklist", "reason": "r", "actor": "a"})],
     "2027-01-01", "unrated"),
    # stars: 1,000 CNY is 100 points (3-star) until the month leaves the window.
    ("stars: the only sale leaves the window", STARS, [_sale("2026-03-31", "1000")],
     "2027-03-01", "unrated"),
]


@pytest.mark.parametrize(("policy", "history", "day", "tier"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hand_made_cases(policy: Policy, history: list[tuple[str, str, dict[str, Any]]],
                         day: str | None, tier: str | None) -> None:
    grading = Grading((policy,))
    evs = [event(kind, when, grading_=grading, **fields) for kind, when, fields in history]
    state = graded(evs, grading)
    expected = (None if day is None else date.fromisoformat(day), tier)
    assert drops_on(state, policy) == expected
    assert day_by_day(state, grading, policy) == expected


def test_lookahead_end_is_the_longest_window_plus_a_month() -> None:
    today = date(2026, 11, 22).toordinal()
    assert date.fromordinal(lookahead_end(today, ABC)) == date(2027, 12, 22)
    jan31 = date(2026, 1, 31).toordinal()
    assert date.fromordinal(lookahead_end(jan31, ABC)) == date(2027, 2, 28)


def test_replay_writes_the_rows_that_would_drop() -> None:
    """at-risk.csv: one row per customer and policy whose tier would drop, sorted like
    tiers.csv, with tiers.csv's tier; equal to drops_on of each customer's state, and
    (on a sample) to ticking every day."""
    import csv
    import io
    import sys

    from grader.core.eventfile import parse_line
    from grader.offline.replay import replay
    from tests.conftest import ROOT, grading

    sys.path.insert(0, str(ROOT))
    from bench.generate_events import generate

    lines = list(generate(200, 2500, seed=11, as_of="2026-11-22T00:00:00+08:00"))
    as_of = at("2026-11-22T00:00:00+08:00")
    three = grading("abc-100", "sabcd-weighted", "stars")
    result = replay(lines, as_of, three, 0, workers=1)
    rows = list(csv.reader(io.StringIO(result.at_risk.decode(), newline="")))
    tiers = {(c, p): t for c, p, t, _s in result.tiers}
    by_customer: dict[str, list[Event]] = {}
    for raw in lines:
        parsed = parse_line(raw, three.parse_context())
        if isinstance(parsed, Event) and parsed.ts <= as_of:
            by_customer.setdefault(parsed.customer_id, []).append(parsed)
    expected = []
    for n, (customer, evs) in enumerate(sorted(by_customer.items())):
        state = graded(evs, three, as_of)
        state.customer_id = customer
        for policy in three.policies:
            found = drops_on(state, policy)
            if n % 20 == 0:
                assert found == day_by_day(state, three, policy)
            if found[0] is not None and state.graded:
                expected.append([customer, policy.name, state.tiers[policy.name].tier,
                                 found[0].isoformat(), found[1]])
    assert rows == expected
    assert rows == sorted(rows, key=lambda r: (r[0], r[1])) and len(rows) > 50
    assert all(tiers[(c, p)] == t for c, p, t, _d, _to in rows)


def test_whatif_live_counts_as_the_file_does() -> None:
    """From the workers' states (ticked at T), `whatif --live` finds the same at-risk rows
    for a candidate without downgrade rules as a replay under it, and the same days ahead
    under the current policy."""
    import sys

    from grader.core.eventfile import parse_line
    from grader.offline.replay import replay
    from grader.offline.whatif import live_what_if, what_if
    from tests.conftest import ROOT, grading, preset

    sys.path.insert(0, str(ROOT))
    from bench.generate_events import generate

    lines = list(generate(150, 1500, seed=3, as_of="2026-11-22T00:00:00+08:00"))
    as_of = at("2026-11-22T00:00:00+08:00")
    abc, stars = preset("abc-100"), preset("stars")
    live_grading = grading("abc-100")
    by_customer: dict[str, list[Event]] = {}
    for raw in lines:
        parsed = parse_line(raw, grading("abc-100", "stars").parse_context())
        if isinstance(parsed, Event) and parsed.ts <= as_of and parsed.type != "override":
            by_customer.setdefault(parsed.customer_id, []).append(parsed)
    states = []
    for customer, evs in by_customer.items():
        state = graded(evs, live_grading, as_of)
        state.customer_id = customer
        states.append(state)
    live = live_what_if(states, abc, stars)
    kept = [raw for raw in lines if b'"override"' not in raw]
    offline = what_if(kept, as_of, abc, stars, 0, workers=1)
    assert live.at_risk == offline.at_risk == replay(kept, as_of, grading("stars"), 0,
                                                     workers=1).at_risk
    assert sorted(live.days_ahead[0]) == sorted(offline.days_ahead[0])
    assert live.at_risk_within() == offline.at_risk_within()
    assert live.at_risk_within()[1][90] > 0
