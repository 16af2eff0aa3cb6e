"""Tickets in the customer's state and the support queues' order (grader/core/support.py)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from grader.core.clock import MAX_INSTANT, MIN_INSTANT
from grader.core.codec import dump_state, load_state
from grader.core.grading import apply_event, new_state
from grader.core.state import CustomerState, TierState
from grader.core.support import (
    BLACKLISTED,
    MAX_SUPPORT_TIERS,
    NOT_GRADED,
    band,
    check_support_policy,
    score,
    view,
)
from tests.conftest import at, event, grading

G = grading("abc-100")
ABC = G.policies[0]
NOW = at("2026-11-24T10:00:00+08:00")


def ticket(etype: str, when: str, ticket_id: str = "T1", **fields: str) -> object:
    return event(etype, when, grading_=G, ticket_id=ticket_id, **fields)


def tickets_of(events: list[object]) -> dict[str, tuple[bool, str, str, int | None]]:
    state = new_state("C1")
    for e in events:
        apply_event(state, e, G, NOW)  # type: ignore[arg-type]
    return {i: (t.is_open, t.queue, t.subject, t.opened_at) for i, t in state.tickets.items()}


def test_open_then_close() -> None:
    opened = ticket("ticket_opened", "2026-05-01", queue="billing", subject="invoice")
    assert tickets_of([opened]) == {"T1": (True, "billing", "invoice", at("2026-05-01"))}
    closed = ticket("ticket_closed", "2026-05-03")
    assert tickets_of([opened, closed])["T1"][0] is False


def test_a_close_before_its_open_leaves_nothing_open() -> None:
    opened = ticket("ticket_opened", "2026-05-01")
    closed = ticket("ticket_closed", "2026-05-03")
    assert tickets_of([closed, opened])["T1"][0] is False
    assert tickets_of([closed])["T1"][0] is False  # closed, never opened: nothing to serve


def test_a_second_open_moves_the_ticket_and_keeps_the_first_opening_time() -> None:
    first = ticket("ticket_opened", "2026-05-01", queue="billing")
    second = ticket("ticket_opened", "2026-05-02", queue="tech", subject="again")
    for order in ([first, second], [second, first]):
        assert tickets_of(order) == {"T1": (True, "tech", "again", at("2026-05-01"))}


def test_the_default_queue() -> None:
    assert tickets_of([ticket("ticket_opened", "2026-05-01")])["T1"][1] == "default"


def test_tickets_are_kept_through_the_codec() -> None:
    state = new_state("C1")
    for e in (ticket("ticket_opened", "2026-05-01", queue="q", subject="s"),
              ticket("ticket_closed", "2026-05-02", ticket_id="T2")):
        apply_event(state, e, G, NOW)  # type: ignore[arg-type]
    assert load_state(dump_state(state)).tickets == state.tickets


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(6)), st.integers(0, 2**32))
def test_any_arrival_order_gives_the_same_tickets(order: list[int], seed: int) -> None:
    rng = random.Random(seed)
    days = [f"2026-05-{d:02d}" for d in rng.sample(range(1, 29), 6)]
    kinds = [rng.choice(["ticket_opened", "ticket_closed"]) for _ in days]
    events = [ticket(k, d, ticket_id=rng.choice(["T1", "T2"]), queue=rng.choice(["a", "b"]))
              for k, d in zip(kinds, days, strict=True)]
    assert tickets_of([events[i] for i in order]) == tickets_of(events)


def graded(tier: str | None, blacklisted: bool = False) -> CustomerState:
    state = new_state("C1")
    if tier is not None:
        state.tiers["abc-100"] = TierState(tier, (0, 1), 1, 0, False)
    if blacklisted:
        state.blacklist = (0, "e", True)
    return state


def test_bands_follow_the_support_priority() -> None:
    assert [band(graded(t), ABC) for t in ("A", "B", "C")] == [0, 1, 2]
    assert band(graded(None), ABC) == NOT_GRADED
    assert band(graded("A", blacklisted=True), ABC) == BLACKLISTED
    assert band(graded("Z"), ABC) == NOT_GRADED  # a tier the support policy no longer has


def test_the_service_order() -> None:
    """Blacklisted last; then tier rank; never graded below every tier; then oldest first;
    ties (same millisecond) by ticket id, which is how Redis orders equal scores."""
    early, late = at("2026-05-01"), at("2026-05-02")
    cases = {  # ticket id -> (tier, blacklisted, opened_at)
        "t-black-early": ("A", True, early),
        "t-none-early": (None, False, early),
        "t-c-early": ("C", False, early),
        "t-a-late": ("A", False, late),
        "t-a-early-2": ("A", False, early),
        "t-a-early-1": ("A", False, early),
        "t-b-late": ("B", False, late),
    }
    scored = sorted(cases, key=lambda t: (score(band(graded(cases[t][0], cases[t][1]), ABC),
                                                cases[t][2]), t))
    assert scored == ["t-a-early-1", "t-a-early-2", "t-a-late", "t-b-late", "t-c-early",
                      "t-none-early", "t-black-early"]


def test_scores_are_exact_doubles_across_every_instant_and_band() -> None:
    for b, instant in itertools.product((0, MAX_SUPPORT_TIERS - 1, NOT_GRADED, BLACKLISTED),
                                        (MIN_INSTANT, 0, MAX_INSTANT - 1)):
        s = score(b, instant)
        assert 0 <= s < 2**53 and float(s) == s
    assert score(0, MAX_INSTANT - 1) < score(1, MIN_INSTANT)  # a band outranks any time


def test_a_support_policy_with_too_many_tiers_is_refused() -> None:
    import dataclasses

    import pytest

    many = dataclasses.replace(ABC, support_priority=tuple(f"T{i}" for i in range(31)))
    with pytest.raises(ValueError, match="at most 30"):
        check_support_policy(many)


def test_view_is_the_whole_customer() -> None:
    state = graded("B")
    for e in (ticket("ticket_opened", "2026-05-01", queue="q", subject="s"),
              ticket("ticket_closed", "2026-05-02", ticket_id="T2")):
        apply_event(state, e, G, NOW)  # type: ignore[arg-type]
    assert view(state, ABC) == {
        "customer_id": "C1",
        "fields": {"tier:abc-100": "B", "blacklisted": "0"},
        "tickets": [["T1", True, "q", "s", "2026-05-01T04:00:00Z",
                     score(1, at("2026-05-01"))],
                    ["T2", False, "", "", "", 0]],
        # revision (0: never stored), as_of, the sum of the tier sequences
        "version": [0, state.as_of, state.tiers["abc-100"].sequence],
    }
