"""Every metric of GRADING.md section 3, as a table of scenarios."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from grader.core.grading import apply_event, apply_tick, new_state
from grader.core.metricref import parse_metric
from grader.core.metrics import MetricView
from grader.core.state import CustomerState
from tests.conftest import at, event, grading

G = grading("abc-100", "sabcd-weighted", "stars")
AS_OF = "2026-11-22"


def state_of(events: list[tuple[Any, ...]], as_of: str = AS_OF) -> CustomerState:
    state = new_state("C1")
    for etype, when, fields in events:
        apply_event(state, event(etype, when, **fields), G, 0)
    apply_tick(state, at(as_of), G, 0)
    return state


def metric(state: CustomerState, key: str) -> Fraction | None:
    value = MetricView(state, "Asia/Shanghai").value(parse_metric(key))
    return None if value is None else Fraction(*value)


def sale(when: str, amount: str, **extra: Any) -> tuple[Any, ...]:
    return ("sale", when, {"amount": amount, **extra})


def refund(when: str, amount: str) -> tuple[Any, ...]:
    return ("refund", when, {"amount": amount})


def pay(when: str, invoice: str, amount: str) -> tuple[Any, ...]:
    return ("payment", when, {"invoice_id": invoice, "amount": amount})


def touch(when: str, kind: str) -> tuple[Any, ...]:
    return ("interaction", when, {"kind": kind})


def assess(when: str, indicator: str, score: float, **extra: Any) -> tuple[Any, ...]:
    return ("assessment", when, {"indicator": indicator, "score": score, "assessor": "k", **extra})


CASES: list[tuple[str, list[tuple[Any, ...]], str, Fraction | None]] = [
    # sales(N): window is the as-of month and N-1 before it (2025-12-01 .. 2026-11-30)
    (
        "sales in window",
        [sale("2025-12-01T00:00:00+08:00", "100"), sale("2026-11-20", "50")],
        "sales(12)",
        Fraction(150),
    ),
    (
        "sale just before window",
        [sale("2025-11-30T23:59:59+08:00", "100")],
        "sales(12)",
        Fraction(0),
    ),
    (
        "window edge in UTC is local",
        [sale("2025-11-30T16:00:00Z", "100")],
        "sales(12)",
        Fraction(100),
    ),
    (
        "refund subtracts",
        [sale("2026-05-01", "100"), refund("2026-06-01", "130.50")],
        "sales(12)",
        Fraction(-3050, 100),
    ),
    (
        "36-month window",
        [sale("2023-12-01", "1"), sale("2023-11-30", "2")],
        "sales(36)",
        Fraction(1),
    ),
    ("monthly average", [sale("2026-05-01", "100")], "monthly_avg_sales(12)", Fraction(100, 12)),
    (
        "gross profit",
        [sale("2026-05-01", "100", gross_profit="20"), sale("2026-06-01", "100", gross_profit=0)],
        "gross_profit(12)",
        Fraction(20),
    ),
    (
        "margin",
        [sale("2026-05-01", "100", gross_profit="20"), sale("2026-06-01", "100")],
        "margin(12)",
        Fraction(1, 10),
    ),
    ("margin missing without gross profit", [sale("2026-05-01", "100")], "margin(12)", None),
    (
        "margin missing when sales <= 0",
        [sale("2026-05-01", "100", gross_profit=5), refund("2026-05-02", "100")],
        "margin(12)",
        None,
    ),
    (
        "purchase count",
        [sale("2026-05-01", "1"), sale("2026-05-02", "1"), refund("2026-05-03", "1")],
        "purchase_count(12)",
        Fraction(2),
    ),
    (
        "active months",
        [
            sale("2026-05-01", "1"),
            sale("2026-05-31", "1"),
            sale("2026-07-01", "1"),
            refund("2026-08-01", "1"),
        ],
        "active_months(12)",
        Fraction(2),
    ),
    (
        "no sales: payment days missing",
        [touch("2026-05-01", "visit")],
        "avg_payment_days(12)",
        None,
    ),
    ("cash sale takes 0 days", [sale("2026-05-01", "100")], "avg_payment_days(12)", Fraction(0)),
    (
        "paid invoice",
        [sale("2026-05-01", "100", invoice_id="I1"), pay("2026-05-31", "I1", "100")],
        "avg_payment_days(12)",
        Fraction(30),
    ),
    (
        "weighted with cash",
        [
            sale("2026-05-01", "100", invoice_id="I1"),
            sale("2026-05-01", "300"),
            pay("2026-05-21", "I1", "100"),
        ],
        "avg_payment_days(12)",
        Fraction(5),
    ),
    (
        "partial payments: the one reaching the amount",
        [
            sale("2026-05-01", "100", invoice_id="I1"),
            pay("2026-05-11", "I1", "40"),
            pay("2026-05-21", "I1", "60"),
            pay("2026-06-30", "I1", "10"),
        ],
        "avg_payment_days(12)",
        Fraction(20),
    ),
    (
        "open invoice ages to as_of",
        [sale("2026-11-02", "100", invoice_id="I1"), pay("2026-11-05", "I1", "99.99")],
        "avg_payment_days(12)",
        Fraction(20),
    ),
    (
        "payment before its sale counts 0",
        [pay("2026-04-01", "I1", "100"), sale("2026-05-01", "100", invoice_id="I1")],
        "avg_payment_days(12)",
        Fraction(0),
    ),
    (
        "invoice of two sales: from the first sale",
        [
            sale("2026-05-01", "100", invoice_id="I1"),
            sale("2026-05-11", "100", invoice_id="I1"),
            pay("2026-05-21", "I1", "150"),
            pay("2026-05-31", "I1", "50"),
        ],
        "avg_payment_days(12)",
        Fraction(30),
    ),
    (
        "refund does not change the invoice",
        [
            sale("2026-05-01", "100", invoice_id="I1"),
            refund("2026-05-02", "100"),
            pay("2026-05-11", "I1", "100"),
        ],
        "avg_payment_days(12)",
        Fraction(10),
    ),
    (
        "local-date difference, not 24h periods",
        [
            sale("2026-05-01T23:59:00+08:00", "100", invoice_id="I1"),
            pay("2026-05-02T00:01:00+08:00", "I1", "100"),
        ],
        "avg_payment_days(12)",
        Fraction(1),
    ),
    (
        "invoice first sale before window still counts from it",
        [
            sale("2025-11-20", "100", invoice_id="I1"),
            sale("2025-12-10", "100", invoice_id="I1"),
            pay("2025-12-20", "I1", "200"),
        ],
        "avg_payment_days(12)",
        Fraction(30),
    ),
    (
        "interactions by kind",
        [
            touch("2026-05-01", "referral"),
            touch("2026-06-01", "referral"),
            touch("2026-06-01", "visit"),
            touch("2025-01-01", "referral"),
        ],
        "interactions(referral, 12)",
        Fraction(2),
    ),
    (
        "lifetime is not windowed",
        [sale("2024-01-01", "100"), refund("2026-01-01", "30")],
        "sales_lifetime",
        Fraction(70),
    ),
    ("tenure from first activity", [touch("2026-11-12", "visit")], "tenure_days", Fraction(10)),
    ("tenure counts payments too", [pay("2026-11-02", "I9", "1")], "tenure_days", Fraction(20)),
    (
        "days since last sale",
        [sale("2026-11-01", "1"), sale("2026-10-01", "1")],
        "days_since_last_sale",
        Fraction(21),
    ),
    ("days since last sale missing", [touch("2026-11-01", "visit")], "days_since_last_sale", None),
    (
        "latest assessment wins",
        [
            assess("2026-05-02", "C1", 4),
            assess("2026-05-01", "C1", 9),
            assess("2026-05-03", "C2", 1),
        ],
        "assessment(C1)",
        Fraction(4),
    ),
    (
        "assessment tie by larger event_id",
        [
            assess("2026-05-01", "C1", 4, event_id="a"),
            assess("2026-05-01", "C1", 6.5, event_id="b"),
        ],
        "assessment(C1)",
        Fraction(13, 2),
    ),
    ("assessment missing", [assess("2026-05-01", "C1", 4)], "assessment(D3)", None),
]


@pytest.mark.parametrize(("name", "events", "key", "expected"), CASES, ids=[c[0] for c in CASES])
def test_metric(
    name: str, events: list[tuple[Any, ...]], key: str, expected: Fraction | None
) -> None:
    assert metric(state_of(events), key) == expected
    assert metric(state_of(list(reversed(events))), key) == expected  # order-independent
