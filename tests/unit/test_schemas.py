# ruff: noqa: RUF001  (non-ASCII digits are among the samples)
"""The published JSON Schemas (topics/schemas) and the parser agree.

The same samples go through both: a valid event of each type, and that event
with each field replaced by values of every kind (absent, null, wrong types,
lengths at and past each limit, patterns, non-ASCII digits). Either both
accept a sample or both reject it. What a schema cannot say (the policy
currency, active policies and tiers, the decimals of a JSON number) is
listed in one test below, where the schema accepts and the parser rejects.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from grader.core.events import Event, Rejection, parse_event
from grader.core.topology import TOPICS_DIR, load_topics
from tests.conftest import BASE, VALID, grading

CTX = grading("abc-100").parse_context()
ABSENT = object()
ANY_FIELD = [ABSENT, None, "", "x", 0, 1, -1, 2.5, True, [], {}, ["x"], {"x": 1}]
STRINGS = ["x" * n for n in (63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025)]
BY_FIELD: dict[str, list[Any]] = {
    "event_id": [*STRINGS, "é" * 128, "😀" * 129],
    "customer_id": [*STRINGS, "C 1", "C/1", "Ç1", "C١", "a.b_c:d-E9"],
    "occurred_at": [
        "2026-03-01T09:30:00Z", "2026-03-01T09:30:00.123456789Z", "2026-03-01T09:30:00.1234567891Z",
        "2026-03-01T09:30:00-23:59", "2026-02-29T00:00:00Z", "2028-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z", "2026-03-01T09:30:00", "2026-03-01 09:30:00Z", "2026-03-01",
        "２０２６-03-01T09:30:00Z", "2026-03-01T0９:30:00Z", "2026-03-01T09:30:00+0８:00",
        "0999-06-01T00:00:00Z", "1000-06-01T00:00:00Z", "1969-12-31T23:59:59Z",
        "8999-06-01T00:00:00Z", "9000-06-01T00:00:00Z", "0000-01-01T00:00:00Z", 20260301,
    ],
    "type": ["sale", "Sale", "refund", "ticket", "override"],
    "amount": ["0", "0.00", "0.01", "00.01", "1.", ".5", "1.001", "1e3", " 1", "+1", "-1",
               "999999999999.99", "1000000000000", "0001000000000000", "١٢٣", "１２３", "12３",
               0.01, 999999999999.99, 1e12, 1e300, -5, 10**12],
    "gross_profit": ["0", "0.00", "0.5", "-1", "1000000000000", 0, 0.0, -0.01, 1e12],
    "currency": ["CNY", "cny", "CN", "CNYY", "ＣＮＹ"],
    "kind": ["referral", "Referral", "a" * 64, "a" * 65, "9x", "x-y", "x_9"],
    "indicator": ["C1", "c1", "1C", "C" * 64, "C" * 65, "C-1"],
    "score": [0, 10, 10.5, -0.1, 7.25, "7", 1e300],
    "value": [3.5, -2, "3", 1e300],
    "action": ["pin", "unpin", "blacklist", "unblacklist", "PIN", "ban"],
    "queue": ["default", "a" * 64, "a" * 65, "v i p", "vip/1"],
    "subject": STRINGS,
    "ticket_id": STRINGS,
    "invoice_id": STRINGS,
    "reason": STRINGS,
    "assessor": STRINGS,
    "actor": STRINGS,
}


@cache
def validator(etype: str) -> Draft202012Validator:
    """The schema of ``etype``, found through topics/topics.toml, with formats checked."""
    for spec in load_topics("", 1).values():
        if etype in spec.schemas:
            schema = json.loads((TOPICS_DIR / spec.schemas[etype]).read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
            return Draft202012Validator(schema,
                                        format_checker=Draft202012Validator.FORMAT_CHECKER)
    raise KeyError(etype)


def samples() -> list[tuple[str, str, Any]]:
    """(type, field, value) for every field a type's schema names or the parser reads."""
    out = []
    for etype, fields in VALID.items():
        names = [*BASE, "type", *fields]
        if etype == "override":
            names = [n for n in names if n not in ("policy", "tier")]  # see below
        out += [(etype, name, value) for name in names
                for value in ANY_FIELD + BY_FIELD.get(name, [])]
    return out


def build(etype: str, name: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = {**BASE, "type": etype, **(base or VALID[etype])}
    if value is ABSENT:
        obj.pop(name, None)
    else:
        obj[name] = value
    return obj


def verdicts(etype: str, obj: dict[str, Any]) -> tuple[bool, Event | Rejection]:
    parsed = parse_event(orjson.dumps(obj), CTX)
    return validator(etype).is_valid(obj), parsed


def test_every_valid_sample_is_valid_for_both() -> None:
    for etype in VALID:
        schema_ok, parsed = verdicts(etype, build(etype, "event_id", "e1"))
        assert schema_ok and isinstance(parsed, Event), etype


@pytest.mark.parametrize(("etype", "name", "value"), samples(),
                         ids=lambda v: repr(v)[:24] if not isinstance(v, str) else None)
def test_schema_and_parser_agree(etype: str, name: str, value: Any) -> None:
    obj = build(etype, name, value)
    schema_ok, parsed = verdicts(etype, obj)
    if name == "currency" and value == "CNY":
        assert schema_ok and isinstance(parsed, Event)
    if name == "type" and isinstance(value, str) and value in VALID and value != etype:
        return  # another type's fields: a different schema applies
    assert schema_ok == isinstance(parsed, Event), (obj, parsed)


@pytest.mark.parametrize(("action", "policy", "tier"), [
    ("pin", "abc-100", ABSENT), ("pin", ABSENT, "A"), ("pin", None, "A"), ("pin", 5, "A"),
    ("pin", "abc-100", ""), ("unpin", ABSENT, ABSENT), ("unpin", "abc-100", 5),
    ("unpin", "", ABSENT), ("blacklist", 5, []), ("unblacklist", ABSENT, ABSENT),
    ("blacklist", ABSENT, ABSENT),
])
def test_override_policy_and_tier_agree(action: str, policy: Any, tier: Any) -> None:
    base = {"action": action, "policy": policy, "tier": tier, "reason": "r", "actor": "a"}
    obj = {k: v for k, v in build("override", "action", action, base).items() if v is not ABSENT}
    schema_ok, parsed = verdicts("override", obj)
    assert schema_ok == isinstance(parsed, Event), (obj, parsed)


@pytest.mark.parametrize(("etype", "name", "value", "code"), [
    ("sale", "currency", "USD", "wrong_currency"),
    ("sale", "amount", 1.005, "bad_amount"),
    ("refund", "amount", 0.001, "bad_amount"),
    ("sale", "gross_profit", 0.125, "bad_amount"),
    ("override", "policy", "gold", "unknown_policy"),
    ("override", "tier", "S", "unknown_tier"),
    ("sale", "occurred_at", "1000-01-01T00:00:00+00:01", "bad_timestamp"),
])
def test_what_only_the_parser_can_check(etype: str, name: str, value: Any, code: str) -> None:
    schema_ok, parsed = verdicts(etype, build(etype, name, value))
    assert schema_ok
    assert isinstance(parsed, Rejection) and parsed.code == code


def test_the_output_records_follow_their_schemas() -> None:
    """customer-tiers and tier-warnings records, as the worker builds them (grader.core.step),
    are valid for topics/schemas/customer-tiers.json and tier-warnings.json; one without
    drops_on, or with a date in another form, is not."""
    from grader.core import step
    from grader.core.grading import Grading, apply_event, apply_tick, new_state
    from tests.conftest import at, event, preset

    g = Grading((preset("abc-100"), preset("stars")))
    state = new_state("C1")
    apply_event(state, event("sale", "2026-03-31", grading_=g, amount="1000"), g, 0)
    apply_tick(state, at("2027-02-10"), g, 0)
    outputs = {o.topic: orjson.loads(o.value) for o in step.with_risk(state, [], g, 30, 0)}
    snapshot, warning = outputs["customer-tiers"], outputs["tier-warnings"]
    assert snapshot["tiers"]["stars"]["drops_on"] == warning["drops_on"] == "2027-03-01"
    assert snapshot["tiers"]["abc-100"]["to_tier"] == "C"  # B (paid on the spot) until then
    assert validator("customer-tiers").is_valid(snapshot)
    assert validator("tier-warnings").is_valid(warning)
    del snapshot["tiers"]["stars"]["drops_on"]
    assert not validator("customer-tiers").is_valid(snapshot)
    assert not validator("tier-warnings").is_valid({**warning, "drops_on": "2027-3-1"})
