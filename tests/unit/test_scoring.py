"""Preset band and tier edges, exactly on and just past each edge."""

from __future__ import annotations

from fractions import Fraction

import pytest

from grader.core.grading import apply_event, apply_tick, new_state
from grader.core.metricref import MetricRef
from grader.core.rational import Ratio, ratio, round2
from grader.core.scoring import earned_tier, score
from tests.conftest import at, event, grading, preset

ABC = preset("abc-100")
STARS = preset("stars")
SABCD = preset("sabcd-weighted")
EPS = Fraction(1, 10**9)


class FixedView:
    """Given metric values, to test scoring alone (grader.core.scoring.Metrics)."""

    def __init__(self, values: dict[str, Fraction | None]) -> None:
        self._given = values

    def value(self, ref: MetricRef) -> Ratio | None:
        v = self._given[ref.key]
        return None if v is None else ratio(v)


def abc_points(
    monthly: Fraction | None, days: Fraction | None
) -> tuple[Fraction, dict[str, Ratio]]:
    total, breakdown = score(
        ABC, FixedView({"monthly_avg_sales(12)": monthly, "avg_payment_days(12)": days})
    )
    return Fraction(*total), breakdown


@pytest.mark.parametrize(
    ("monthly", "points"),
    [
        (Fraction(20000), 70),
        (20000 - EPS, 50),
        (Fraction(1999999, 100), 50),
        (10000 + EPS, 50),
        (Fraction(10000), 40),
        (5000 + EPS, 40),
        (Fraction(5000), 30),
        (Fraction(0), 30),
        (Fraction(-10), 30),
        (Fraction(10**9), 70),
    ],
)
def test_abc_sales_bands(monthly: Fraction, points: int) -> None:
    assert abc_points(monthly, Fraction(0))[1]["monthly_avg_sales(12)"] == (points, 1)


@pytest.mark.parametrize(
    ("days", "points"),
    [
        (Fraction(0), 30),
        (Fraction(30), 30),
        (30 + EPS, 20),
        (Fraction(45), 20),
        (45 + EPS, 10),
        (Fraction(60), 10),
        (60 + EPS, 0),
        (Fraction(400), 0),
        (None, 0),
    ],
)
def test_abc_payment_bands(days: Fraction | None, points: int) -> None:
    assert abc_points(Fraction(0), days)[1]["avg_payment_days(12)"] == (points, 1)


@pytest.mark.parametrize(
    ("monthly", "days", "total", "tier"),
    [
        (Fraction(20000), Fraction(45), 90, "A"),
        (Fraction(20000), Fraction(60), 80, "A"),
        (20000 - EPS, Fraction(30), 80, "A"),
        (20000 - EPS, Fraction(45), 70, "B"),
        (Fraction(10000), Fraction(45), 60, "B"),
        (Fraction(10000), 45 + EPS, 50, "C"),
        (Fraction(5000), None, 30, "C"),
    ],
)
def test_abc_tier_edges(monthly: Fraction, days: Fraction | None, total: int, tier: str) -> None:
    value, _ = abc_points(monthly, days)
    assert value == total
    assert earned_tier(ABC, ratio(value)) == tier


@pytest.mark.parametrize(
    ("score_", "tier"),
    [
        (Fraction(80000), "7-star"),
        (80000 - EPS, "6-star"),
        (Fraction(10000), "6-star"),
        (Fraction(2000), "5-star"),
        (Fraction(500), "4-star"),
        (Fraction(50), "3-star"),
        (50 - EPS, "quasi-star"),
        (EPS, "quasi-star"),
        (Fraction(0), "unrated"),
        (Fraction(-5), "unrated"),
    ],
)
def test_stars_tier_edges(score_: Fraction, tier: str) -> None:
    assert earned_tier(STARS, ratio(score_)) == tier


@pytest.mark.parametrize(
    ("amounts", "tier", "shown"),
    [
        ([65.6, 217.2, 217.2], "3-star", "50.00"),  # float sum: 499.99999999999994
        (["166.67", "166.67", "166.66"], "3-star", "50.00"),
        ([0.1, 0.2, 0.2], "quasi-star", "0.05"),
        ([4999.99, 0.01], "4-star", "500.00"),
        (["333.33", "333.33", "333.34", "-1000"], "unrated", "0.00"),
    ],
)
def test_stars_float_traps_through_events(amounts: list[object], tier: str, shown: str) -> None:
    g = grading("stars")
    state = new_state("C1")
    for i, amount in enumerate(amounts):
        if isinstance(amount, str) and amount.startswith("-"):
            e = event("refund", "2026-05-02", grading_=g, amount=amount[1:])
        else:
            e = event("sale", f"2026-05-0{i + 1}", grading_=g, amount=amount)
        apply_event(state, e, g, 0)
    apply_tick(state, at("2026-11-22"), g, 0)
    assert state.tiers["stars"].tier == tier
    assert str(round2(state.tiers["stars"].score)) == shown


def test_float_sum_would_have_missed_the_edge() -> None:
    # The trap is real: with binary floats the sum falls below the 500 edge.
    assert 65.6 + 217.2 + 217.2 < 500.0


def test_sabcd_weighted_score_is_exact() -> None:
    values: dict[str, Fraction | None] = {
        "sales(36)": Fraction(1500000),
        "sales(12)": Fraction(99999),
        "margin(12)": Fraction(3, 10),
        "purchase_count(12)": Fraction(6),
        "tenure_days": Fraction(1825),
        "active_months(12)": Fraction(7),
        "interactions(referral, 12)": Fraction(3),
        "assessment(C1)": Fraction(10),
        "assessment(C2)": Fraction(19, 2),
        "assessment(C3)": None,
        "assessment(D1)": Fraction(7),
        "assessment(D2)": Fraction(0),
        "assessment(D3)": Fraction(10),
    }
    total, breakdown = score(SABCD, FixedView(values))
    # 10 * (.15*8 + .15*2 + .10*10 + .10*10 + .05*10 + .05*10 + .05*10 + .10*10 + .10*9.5
    #       + .05*0 + .04*7 + .03*0 + .03*10) = 10 * 7.53
    assert Fraction(*total) == Fraction("75.3")
    assert breakdown["sales(12)"] == (2, 1) and breakdown["assessment(C3)"] == (0, 1)
    assert earned_tier(SABCD, total) == "A"
