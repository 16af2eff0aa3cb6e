from __future__ import annotations

from fractions import Fraction
from typing import Any

import orjson
import pytest

from grader.core.clock import parse_instant
from grader.core.events import Event, ParseContext, Rejection, parse_event

CTX = ParseContext("CNY", {"abc-100": ("A", "B", "C")})
BASE = {"event_id": "e1", "customer_id": "C-1.a:b_2", "occurred_at": "2026-03-01T09:30:00+08:00"}
SALE = {**BASE, "type": "sale", "amount": "100.50", "currency": "CNY"}
OVERRIDE = {
    **BASE,
    "type": "override",
    "action": "pin",
    "policy": "abc-100",
    "tier": "A",
    "reason": "strategic account",
    "actor": "kam-7",
}


def parse(obj: Any, ctx: ParseContext = CTX) -> Event | Rejection:
    return parse_event(orjson.dumps(obj) if not isinstance(obj, bytes) else obj, ctx)


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


@pytest.mark.parametrize(
    ("obj", "fields"),
    [
        (SALE, {"amount": 10050, "invoice_id": None, "gross_profit": None}),
        (
            {**SALE, "invoice_id": "INV-1", "gross_profit": 0},
            {"invoice_id": "INV-1", "gross_profit": 0},
        ),
        ({**BASE, "type": "refund", "amount": 5, "currency": "CNY"}, {"amount": 500}),
        (
            {**BASE, "type": "payment", "amount": 5, "currency": "CNY", "invoice_id": "I"},
            {"invoice_id": "I"},
        ),
        ({**BASE, "type": "interaction", "kind": "referral", "value": 3.5}, {"kind": "referral"}),
        (
            {**BASE, "type": "assessment", "indicator": "C1", "score": 7.5, "assessor": "kam"},
            {"indicator": "C1", "score": Fraction(15, 2), "actor": "kam"},
        ),
        (OVERRIDE, {"action": "pin", "policy": "abc-100", "tier": "A", "actor": "kam-7"}),
        (
            {**without(without(OVERRIDE, "policy"), "tier"), "action": "blacklist"},
            {"action": "blacklist", "policy": None},
        ),
        ({**BASE, "type": "ticket_opened", "ticket_id": "T1"}, {"queue": "default"}),
        (
            {**BASE, "type": "ticket_closed", "ticket_id": "T1", "queue": "vip", "subject": "x"},
            {"queue": "vip", "subject": "x"},
        ),
        ({**SALE, "unknown_extra": 1}, {"amount": 10050}),
    ],
)
def test_valid_events(obj: dict[str, Any], fields: dict[str, Any]) -> None:
    event = parse(obj)
    assert isinstance(event, Event), event
    assert event.ts == parse_instant(obj["occurred_at"])
    for name, value in fields.items():
        assert getattr(event, name) == value


@pytest.mark.parametrize(
    ("obj", "code", "field"),
    [
        (b"{not json", "bad_json", None),
        (b"\xff\xfe", "bad_json", None),
        (b"", "bad_json", None),
        ([1, 2], "not_object", None),
        (without(SALE, "type"), "missing_field", "type"),
        ({**SALE, "type": "purchase"}, "unknown_type", "type"),
        ({**SALE, "type": 3}, "bad_field", "type"),
        (without(SALE, "event_id"), "missing_field", "event_id"),
        ({**SALE, "event_id": ""}, "bad_event_id", "event_id"),
        ({**SALE, "event_id": "x" * 129}, "bad_event_id", "event_id"),
        ({**SALE, "event_id": 17}, "bad_event_id", "event_id"),
        (without(SALE, "customer_id"), "missing_field", "customer_id"),
        ({**SALE, "customer_id": "C 1"}, "bad_customer_id", "customer_id"),
        ({**SALE, "customer_id": "C" * 65}, "bad_customer_id", "customer_id"),
        ({**SALE, "customer_id": "客户"}, "bad_customer_id", "customer_id"),
        (without(SALE, "occurred_at"), "missing_field", "occurred_at"),
        ({**SALE, "occurred_at": "2026-03-01T09:30:00"}, "bad_timestamp", "occurred_at"),
        ({**SALE, "occurred_at": None}, "missing_field", "occurred_at"),
        (without(SALE, "amount"), "missing_field", "amount"),
        ({**SALE, "amount": "1.005"}, "bad_amount", "amount"),
        ({**SALE, "amount": -3}, "bad_amount", "amount"),
        ({**SALE, "amount": 0}, "bad_amount", "amount"),
        ({**SALE, "amount": 10**12}, "bad_amount", "amount"),
        ({**SALE, "gross_profit": -1}, "bad_amount", "gross_profit"),
        (without(SALE, "currency"), "missing_field", "currency"),
        ({**SALE, "currency": "USD"}, "wrong_currency", "currency"),
        ({**SALE, "currency": "cny"}, "bad_currency", "currency"),
        ({**SALE, "invoice_id": ""}, "bad_field", "invoice_id"),
        (
            {**BASE, "type": "payment", "amount": 5, "currency": "CNY"},
            "missing_field",
            "invoice_id",
        ),
        ({**BASE, "type": "interaction"}, "missing_field", "kind"),
        ({**BASE, "type": "interaction", "kind": "Complaint"}, "bad_kind", "kind"),
        ({**BASE, "type": "interaction", "kind": "visit", "value": "3"}, "bad_field", "value"),
        (
            {**BASE, "type": "assessment", "indicator": "C1", "score": 11, "assessor": "a"},
            "bad_score",
            "score",
        ),
        (
            {**BASE, "type": "assessment", "indicator": "C1", "score": "7", "assessor": "a"},
            "bad_score",
            "score",
        ),
        (
            {**BASE, "type": "assessment", "indicator": "C1", "score": 7},
            "missing_field",
            "assessor",
        ),
        (
            {**BASE, "type": "assessment", "indicator": "1C", "score": 7, "assessor": "a"},
            "bad_field",
            "indicator",
        ),
        ({**OVERRIDE, "action": "promote"}, "bad_action", "action"),
        ({**OVERRIDE, "policy": "gold"}, "unknown_policy", "policy"),
        (without(OVERRIDE, "policy"), "missing_field", "policy"),
        ({**OVERRIDE, "tier": "S"}, "unknown_tier", "tier"),
        (without(OVERRIDE, "tier"), "missing_field", "tier"),
        (without(OVERRIDE, "reason"), "missing_field", "reason"),
        (without(OVERRIDE, "actor"), "missing_field", "actor"),
        ({**BASE, "type": "ticket_opened"}, "missing_field", "ticket_id"),
        ({**BASE, "type": "ticket_opened", "ticket_id": "T", "queue": "a b"}, "bad_field", "queue"),
    ],
)
def test_rejections_name_code_and_field(obj: Any, code: str, field: str | None) -> None:
    rejection = parse(obj)
    assert isinstance(rejection, Rejection), rejection
    assert (rejection.code, rejection.field) == (code, field)
    if field is not None:
        assert field in rejection.message


def test_future_timestamp_rejected_only_in_live_mode() -> None:
    now = parse_instant("2026-03-01T09:30:00+08:00")
    late = {**SALE, "occurred_at": "2026-03-01T09:35:01+08:00"}
    live = ParseContext("CNY", {}, now_us=now)
    rejection = parse(late, live)
    assert isinstance(rejection, Rejection) and rejection.code == "future_timestamp"
    assert isinstance(parse({**SALE, "occurred_at": "2026-03-01T09:35:00+08:00"}, live), Event)
    assert isinstance(parse(late), Event)
