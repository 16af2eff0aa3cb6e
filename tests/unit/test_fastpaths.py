"""Each cache and fast path gives exactly what the plain computation gives.

- rescore() (a scoring memo per customer and policy, lines recomputed only
  when their dependency key changed) against score() on a fresh MetricView;
- common_event() (the cheap validator of the usual event shapes) against the
  full validator;
- format_instant() against datetime's own formatting.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from bench.generate_events import generate
from grader.core.clock import US_PER_SECOND, format_instant
from grader.core.codec import dump_state, load_state
from grader.core.events import Event, ParseContext, _Reject, _validate, common_event
from grader.core.grading import Grading, apply_event, apply_tick, new_state
from grader.core.metrics import MetricView
from grader.core.scoring import score
from grader.core.state import CustomerState
from tests.conftest import at, event, policy_text
from tests.unit.test_properties import AS_OF, G, events

CTX = ParseContext("CNY", {"abc-100": ("A", "B", "C")})


def assert_memo_is_fresh(state: CustomerState) -> None:
    """Every policy's memo holds what scoring from scratch gives now."""
    for policy in G.policies:
        memo = state.memo[policy.name]
        view = MetricView(state, policy.timezone)
        total, breakdown = score(policy, view)
        assert memo.policy is policy and memo.score == total
        assert memo.breakdown() == breakdown
        fresh = [view.value(line.metric) for line in policy.lines]
        assert [None if v is None else Fraction(*v) for v in memo.values] == [
            None if v is None else Fraction(*v) for v in fresh
        ]


@settings(max_examples=200, deadline=None)
@given(evs=events())
def test_rescore_equals_score_after_every_step(evs: list[Event]) -> None:
    state = new_state("C1")
    for e in evs:  # arrival order: late events, duplicates of none, pins
        apply_event(state, e, G, 0)
        if state.graded:
            assert_memo_is_fresh(state)
    apply_tick(state, AS_OF, G, 0)
    if state.graded:
        assert_memo_is_fresh(state)


@settings(max_examples=100, deadline=None)
@given(evs=events())
def test_a_state_loaded_from_bytes_grades_the_same(evs: list[Event]) -> None:
    """The memo is not persisted: a reloaded state rescored from scratch agrees."""
    kept, reloaded = new_state("C1"), new_state("C1")
    for e in evs:
        a = apply_event(kept, e, G, 0)
        reloaded = load_state(dump_state(reloaded))
        b = apply_event(reloaded, e, G, 0)
        assert a.changes == b.changes and a.snapshot_changed == b.snapshot_changed
    assert apply_tick(kept, AS_OF, G, 0).changes == apply_tick(reloaded, AS_OF, G, 0).changes


LINEAR = """
kind = "linear"
[[tiers]]
name = "hi"
min = ">= 100"
[[tiers]]
name = "lo"
[[terms]]
metric = "sales(12)"
coefficient = COEF
"""


def test_a_new_policy_object_gets_a_new_memo() -> None:
    """A policy reloaded under the same name is never scored from the old one's points."""
    old = Grading((policy_text(LINEAR.replace("COEF", "0.1"), name="p"),))
    new = Grading((policy_text(LINEAR.replace("COEF", "1"), name="p"),))
    state = new_state("C1")
    apply_event(state, event("sale", "2026-11-01", grading_=old, amount="500"), old, 0)
    assert state.tiers["p"].tier == "lo"
    step = apply_tick(state, at("2026-11-02"), new, 0)  # nothing the lines read has changed
    assert state.memo["p"].policy is new.policies[0] and state.memo["p"].score == (500, 1)
    assert [c["to_tier"] for c in step.changes] == ["hi"]


def _full(obj: Any) -> Event | None:
    try:
        return _validate(obj, CTX)
    except _Reject:
        return None


SALE = {
    "event_id": "e1",
    "type": "sale",
    "customer_id": "C1",
    "occurred_at": "2026-03-01T09:30:00+08:00",
    "amount": "100.50",
    "currency": "CNY",
}
COMMON = [
    SALE,
    {**SALE, "amount": 12, "gross_profit": 0.5, "invoice_id": "I1", "extra": [1]},
    {**SALE, "amount": 99.9, "gross_profit": "0", "occurred_at": "2026-03-01T01:30:00.1234567Z"},
    {**SALE, "type": "refund", "invoice_id": None, "gross_profit": "bad, but ignored"},
    {**SALE, "type": "payment", "invoice_id": "I1"},
    {**SALE, "type": "interaction", "kind": "referral", "value": 3},
    {**SALE, "type": "interaction", "kind": "visit", "value": 2.5, "amount": None},
    {**SALE, "occurred_at": "2026-03-01t09:30:00z"},  # the slow path of parse_instant
    {**SALE, "occurred_at": "2016-12-31T23:59:60Z"},  # a leap second
]
UNUSUAL = [  # valid or not, the fast path leaves each of these to the full validator
    {**SALE, "type": "payment"},
    {**SALE, "currency": "USD"},
    {**SALE, "currency": None},
    {**SALE, "amount": "1.005"},
    {**SALE, "amount": True},
    {**SALE, "amount": "0"},
    {**SALE, "gross_profit": -1},
    {**SALE, "invoice_id": ""},
    {**SALE, "invoice_id": "x" * 129},
    {**SALE, "event_id": "x" * 129},
    {**SALE, "event_id": ""},
    {**SALE, "customer_id": "C 1"},
    {**SALE, "occurred_at": "2026-02-30T09:30:00+08:00"},
    {**SALE, "occurred_at": "2026-03-01T09:30:00"},
    {**SALE, "occurred_at": 5},
    {**SALE, "type": "interaction", "kind": "Visit"},
    {**SALE, "type": "interaction", "kind": "visit", "value": True},
    {**SALE, "type": "interaction", "kind": "visit", "value": float("nan")},
    {**SALE, "type": "interaction", "kind": "visit", "value": "3"},
    {**SALE, "type": "assessment", "indicator": "C1", "score": 7, "assessor": "a"},
    {**SALE, "type": "ticket_opened", "ticket_id": "t1"},
    {**SALE, "type": "nonsense"},
]


@pytest.mark.parametrize("obj", COMMON)
def test_common_shapes_take_the_fast_path_to_the_same_event(obj: dict[str, Any]) -> None:
    fast = common_event(obj, CTX)
    assert fast is not None and fast == _full(obj)


@pytest.mark.parametrize("obj", UNUSUAL)
def test_unusual_shapes_go_to_the_full_validator(obj: dict[str, Any]) -> None:
    assert common_event(obj, CTX) is None


def test_fast_path_agrees_on_generated_lines() -> None:
    """Sample data with bad lines: never a different event, never a wrong acceptance."""
    for raw in generate(200, 3000, seed=7, as_of="2026-11-22T00:00:00+08:00"):
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            fast = common_event(obj, CTX)
            assert fast is None or fast == _full(obj)


def test_format_instant_matches_datetime() -> None:
    rng = random.Random(3)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(20_000):
        us = rng.randrange(-60_000_000 * US_PER_SECOND, 250_000_000_000 * US_PER_SECOND)
        seconds, micros = divmod(us, US_PER_SECOND)
        text = (epoch + timedelta(seconds=seconds)).isoformat()[:19]
        if micros:
            text += f".{micros:06d}".rstrip("0")
        assert format_instant(us) == text + "Z"
