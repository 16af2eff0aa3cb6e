"""The tier state machine: initial/up/down, margin, minimum days, pins."""

from __future__ import annotations

import pytest

from grader.core.state import TierState
from grader.core.tiering import decide
from tests.conftest import policy_text

RULES = """
name = "r"
kind = "linear"
[rules]
downgrade_margin = {margin}
min_days_in_tier = {days}
[[tiers]]
name = "A"
min = ">= 80"
[[tiers]]
name = "B"
min = "{bmin}"
[[tiers]]
name = "C"
[[terms]]
metric = "sales(12)"
coefficient = 1
"""


def policy(margin: str = "2", days: int = 30, bmin: str = ">= 60"):  # type: ignore[no-untyped-def]
    return policy_text(RULES.format(margin=margin, days=days, bmin=bmin), name="r")


def held(tier: str, pinned: bool = False) -> TierState:
    return TierState(tier, (0, 1), 3, 0, pinned)


@pytest.mark.parametrize(
    ("current", "score", "pin", "days", "expected"),
    [
        (None, 85, None, 0, ("A", "initial")),
        (None, 10, None, 0, ("C", "initial")),
        (held("B"), 80, None, 0, ("A", "up")),  # upgrades are immediate
        (held("C"), 95, None, 0, ("A", "up")),
        (held("A"), 78, None, 99, ("A", None)),  # 80 - margin 2: 78 still holds
        (held("A"), 77.99, None, 99, ("B", "down")),
        (held("A"), 70, None, 29, ("A", None)),  # min days in tier not yet passed
        (held("A"), 70, None, 30, ("B", "down")),
        (held("A"), 5, None, 30, ("C", "down")),  # straight to the earned tier
        (held("B"), 58, None, 30, ("B", None)),
        (held("B"), 57.5, None, 30, ("C", "down")),
        (held("B"), 90, "C", 0, ("C", "down")),  # a pin beats the score
        (held("C"), 0, "A", 0, ("A", "up")),
        (held("A", pinned=True), 10, None, 0, ("C", "down")),  # unpin: what the score earns
        (held("B", pinned=True), 70, "B", 0, ("B", None)),
    ],
)
def test_decide(
    current: TierState | None,
    score: float,
    pin: str | None,
    days: int,
    expected: tuple[str, str | None],
) -> None:
    from fractions import Fraction

    value = Fraction(str(score))
    decision = decide(policy(), current, (value.numerator, value.denominator), pin, days)
    assert (decision.tier, decision.direction) == expected
    assert decision.pinned == (pin is not None)


def test_no_rules_demotes_at_once() -> None:
    decision = decide(policy(margin="0", days=0), held("A"), (7999, 100), None, 0)
    assert (decision.tier, decision.direction) == ("B", "down")


def test_margin_keeps_exclusive_minimum_exclusive() -> None:
    p = policy(margin="5", days=0, bmin="> 60")
    assert decide(p, held("B"), (55, 1), None, 0).tier == "C"  # needs > 55
    assert decide(p, held("B"), (5501, 100), None, 0).tier == "B"
