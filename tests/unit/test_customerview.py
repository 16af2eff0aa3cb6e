"""The customer endpoint's body (grader/core/customerview.py), as docs/api.md describes it."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from grader.core.customerview import customer_document
from grader.core.grading import apply_event, apply_tick, new_state
from grader.core.rational import display, round2
from tests.conftest import at, event, grading

G = grading("abc-100", "stars")
NOW = at("2026-12-02T10:00:00+08:00")


def test_a_pinned_tier_shows_the_score_as_of_now_not_the_score_it_was_pinned_at() -> None:
    """GRADING.md section 4: the score of a pinned customer is still computed and reported."""
    state = new_state("C1")
    apply_event(state, event("sale", "2025-12-15", grading_=G, amount="240000"), G, NOW)
    apply_event(state, event("override", "2026-01-10", grading_=G, action="pin",
                             policy="abc-100", tier="C", reason="r", actor="kam"), G, NOW)
    pinned = customer_document(state, G)["policies"]["abc-100"]
    assert (pinned["tier"], pinned["pinned"], pinned["score"]) == ("C", True, 100)
    apply_tick(state, at("2026-12-01T00:00:00+08:00"), G, NOW)  # the sale left the window
    ticked = customer_document(state, G)["policies"]["abc-100"]
    assert (ticked["tier"], ticked["pinned"], ticked["score"]) == ("C", True, 30)
    assert ticked["score_exact"] == "30"


def test_the_score_is_rounded_half_away_from_zero_and_exact_beside_it() -> None:
    """A negative score (refunds above sales) shows where half up and half away differ."""
    state = new_state("C1")
    apply_event(state, event("sale", "2026-05-01", grading_=G, amount="1.00"), G, NOW)
    apply_event(state, event("refund", "2026-05-02", grading_=G, amount="1.05"), G, NOW)
    stars = customer_document(state, G)["policies"]["stars"]
    assert stars["score_exact"] == "-1/200"  # sales(12) / 10 = -0.05 / 10
    assert stars["score"] == -0.01  # half up would give -0.0


@pytest.mark.parametrize(("value", "shown"), [
    (Fraction(1, 200), Decimal("0.01")),
    (Fraction(-1, 200), Decimal("-0.01")),
    (Fraction(-3, 200), Decimal("-0.02")),  # half up: -0.01
    (Fraction(1703, 20), Decimal("85.15")),
])
def test_display_rounding_is_half_away_from_zero(value: Fraction, shown: Decimal) -> None:
    assert round2(value) == shown
    assert display(value) == float(shown)


def test_each_policy_carries_its_drop_date_as_last_computed() -> None:
    """drops_on and to_tier per policy: those of the customer-tiers record (grader.core.risk)."""
    from grader.core.grading import snapshot
    from grader.core.risk import refresh_risk

    state = new_state("C1")
    apply_event(state, event("sale", "2026-03-31", grading_=G, amount="1000"), G, NOW)
    before = customer_document(state, G)["policies"]["stars"]
    assert (before["drops_on"], before["to_tier"]) == (None, None)  # not computed yet
    refresh_risk(state, G, 30, NOW)
    doc = customer_document(state, G)["policies"]
    assert (doc["stars"]["drops_on"], doc["stars"]["to_tier"]) == ("2027-03-01", "unrated")
    for name, tier in snapshot(state)["tiers"].items():
        assert (doc[name]["drops_on"], doc[name]["to_tier"]) == (tier["drops_on"],
                                                                 tier["to_tier"])
