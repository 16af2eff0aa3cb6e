# ruff: noqa: RUF001  (non-ASCII digits are what these tests are about)
"""No input stops grading: whatever the bytes, parsing, the core and the worker's
step return a value (GRADING.md section 1: a bad event never stops the worker).

The property tests throw arbitrary JSON values into every field of every event
type, arbitrary bytes, null values and keys; tests/unit runs on the compiled
core and, in a subprocess (tests/cli), on the pure-Python core too.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.core import step
from grader.core.clock import NEVER, TimestampError, parse_instant
from grader.core.errors import PolicyError
from grader.core.events import Event, Rejection, parse_event
from grader.core.grading import Grading, apply_event, apply_tick, new_state
from grader.core.money import MoneyError, parse_minor
from grader.offline.replay import replay
from tests.conftest import BASE, PRESETS, VALID, at, event, grading, policy_text

G = grading("abc-100", "sabcd-weighted", "stars")
PRESET_STARS = (PRESETS / "stars.toml").read_text(encoding="utf-8")
NOW = at("2026-11-24T00:00:00Z")

# Values that come close to valid ones, and the JSON values of every kind.
NEAR = st.sampled_from([
    "", "sale", "CNY", "cny", "1", "0", "-1", "0.001", "1e3", "١٢٣", "１２３", "C1", "A",
    "2026-03-01T09:30:00Z", "２０２６-03-01T09:30:00Z", "1969-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "2026-02-30T00:00:00Z", "x" * 129,
    "x" * 257, "pin", "blacklist", "abc-100", "\u0000", "\ud7ff", 0, -1, 1e300, 10**12, 10**30,
    2**63, -(2**63), 0.1, 1.005, True, None, [], {}, ["sale"], {"sale": 1},
])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
FIELDS = sorted({*BASE, "type", *(k for fields in VALID.values() for k in fields)})


@st.composite
def mangled_events(draw: Any) -> bytes:
    """A valid event of a random type with random fields replaced, dropped or added."""
    etype = draw(st.sampled_from(sorted(VALID)))
    obj: dict[str, Any] = {**BASE, "type": etype, **VALID[etype],
                           "event_id": draw(st.sampled_from(["e1", "e2", "e3"]))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            obj[name] = draw(NEAR | JSON)
        else:
            obj.pop(name, None)
    return dumps(obj)


def dumps(value: Any) -> bytes:
    """JSON text of anything: big integers, NaN and lone surrogates too (orjson refuses them)."""
    return json.dumps(value).encode()


MESSAGES = mangled_events() | st.binary(max_size=64) | JSON.map(dumps)


def apply_all(values: list[bytes | None], grading_: Grading = G) -> None:
    """Parse each value and apply the valid ones to their customer, then tick."""
    states: dict[str, Any] = {}
    for value in values:
        parsed = parse_event(value, grading_.parse_context(NOW))
        assert isinstance(parsed, Event | Rejection)
        if isinstance(parsed, Event):
            state = states.setdefault(parsed.customer_id, new_state(parsed.customer_id))
            assert apply_event(state, parsed, grading_, NOW).status in (
                "applied", "duplicate", "expired", "ignored")
    for state in states.values():
        apply_tick(state, NOW, grading_, NOW)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES | st.none(), max_size=6))
def test_parsing_and_grading_never_raise(values: list[bytes | None]) -> None:
    apply_all(values)


@settings(max_examples=300, deadline=None)
@given(value=MESSAGES | st.none(), key=st.none() | st.binary(max_size=8) | st.just(b"C1"),
       topic=st.sampled_from(["g.transactions", "g.interactions", "g.overrides", "g.tickets",
                              "g.repartition"]),
       partition=st.integers(0, 3))
def test_the_workers_step_never_raises(value: bytes | None, key: bytes | None, topic: str,
                                       partition: int) -> None:
    msg = step.Incoming(topic, partition, 0, key, value)
    outcome = step.handle_event(msg, lambda _key: None, NEVER, G, NOW, 4)
    assert outcome.status in ("applied", "duplicate", "expired", "ignored", "rejected",
                              "forwarded")
    if outcome.status == "rejected":
        [dead] = outcome.outputs
        assert orjson.loads(dead.value)["offset"] == 0


@settings(max_examples=200, deadline=None)
@given(MESSAGES | st.none())
def test_parsing_a_tick_never_raises(value: bytes | None) -> None:
    assert isinstance(step.parse_tick(value, NOW), int | Rejection)


@pytest.mark.parametrize("value", [None, b"", b"null", b"[]", b'{"type": ["sale"]}',
                                   b'{"type": {"sale": 1}}', b'{"type": 1}'])
def test_the_messages_that_stopped_the_worker_are_rejections(value: bytes | None) -> None:
    parsed = parse_event(value, G.parse_context())
    assert isinstance(parsed, Rejection), parsed


def test_replay_dead_letters_a_type_that_is_a_list() -> None:
    lines = [orjson.dumps({**BASE, "type": ["sale"], **VALID["sale"]}),
             orjson.dumps({**BASE, "type": {"a": 1}, **VALID["sale"]}),
             orjson.dumps({**BASE, "type": "sale", **VALID["sale"]})]
    result = replay(lines, at("2026-11-22T00:00:00+08:00"), G, NOW)
    assert [(d["line"], d["code"], d["field"]) for d in result.dead_letters] == \
        [(1, "bad_field", "type"), (2, "bad_field", "type")]
    assert result.stats.applied == 1


@pytest.mark.parametrize("amount", ["١٢٣", "１２３", "12３", "١٢٣.٥"])
@pytest.mark.parametrize("etype", ["sale", "refund", "payment"])
def test_amounts_take_ascii_digits_only(amount: str, etype: str) -> None:
    parsed = parse_event(orjson.dumps({**BASE, "type": etype, **VALID[etype], "amount": amount}),
                         G.parse_context())
    assert isinstance(parsed, Rejection) and (parsed.code, parsed.field) == \
        ("bad_amount", "amount")
    with pytest.raises(MoneyError):
        parse_minor(amount)


@pytest.mark.parametrize("text", ["２０２６-09-10T10:00:00Z", "2026-09-10T1０:00:00Z",
                                  "2026-09-10T10:00:00.١Z", "2026-09-10T10:00:00+0٨:00"])
def test_timestamps_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_instant(text)
    parsed = parse_event(orjson.dumps({**BASE, "type": "sale", **VALID["sale"],
                                       "occurred_at": text}), G.parse_context())
    assert isinstance(parsed, Rejection) and parsed.code == "bad_timestamp"


def test_a_policy_window_takes_ascii_digits_only() -> None:
    text = PRESET_STARS.replace("sales(12)", "sales(１２)")
    with pytest.raises(PolicyError, match="window must be"):
        policy_text(text, "stars")




def test_a_sale_before_1970_is_graded_like_any_other() -> None:
    g = grading("stars")
    sale = event("sale", "1969-12-31T23:59:59Z", grading_=g, amount="5000")
    state = new_state("C1")
    assert apply_event(state, sale, g, NOW).status == "applied"
    assert state.as_of == sale.ts < 0
    apply_tick(state, at("1970-06-01T00:00:00Z"), g, NOW)
    assert state.tiers["stars"].tier == "4-star"  # 5000 CNY: 500 star points


def test_replay_of_a_sale_before_1970() -> None:
    line = orjson.dumps({**BASE, "type": "sale", "amount": "5000", "currency": "CNY",
                         "occurred_at": "1969-12-31T23:59:59Z"})
    result = replay([line], at("1970-06-01T00:00:00Z"), grading("stars"), NOW)
    assert (result.stats.applied, result.stats.expired) == (1, 0)
    assert [row[2] for row in result.tiers] == ["4-star"]


@pytest.mark.parametrize(("text", "ok"), [
    ("0999-12-31T23:59:59Z", False), ("1000-01-01T00:00:00Z", True),
    ("1000-01-01T00:00:00+01:00", False), ("8999-12-31T23:59:59.999999Z", True),
    ("8999-12-31T23:59:59-01:00", False), ("9999-12-31T23:59:59Z", False),
    ("0001-01-01T00:00:00Z", False),
])
def test_instants_are_accepted_from_year_1000_to_8999(text: str, ok: bool) -> None:
    if not ok:
        with pytest.raises(TimestampError, match="year 1000 to year 8999"):
            parse_instant(text)
        return
    # The edges grade in the timezones furthest ahead of and behind UTC, with the
    # longest window a policy may have.
    for tz in ("Pacific/Kiritimati", "Etc/GMT+12", "Asia/Shanghai"):
        text_policy = PRESET_STARS.replace("Asia/Shanghai", tz).replace("sales(12)",
                                                                        "sales(120)")
        g = Grading((policy_text(text_policy, "stars"),))
        sale = event("sale", text, grading_=g, amount="1000")
        state = new_state("C1")
        assert apply_event(state, sale, g, NOW).status == "applied"
        apply_tick(state, sale.ts + 1, g, NOW)


def test_a_duplicate_with_other_content_is_a_conflict() -> None:
    g = grading("stars")
    state = new_state("C1")
    first = event("sale", "2026-03-01", grading_=g, amount="10", event_id="e1")
    assert apply_event(state, first, g, NOW).status == "applied"
    again = apply_event(state, event("sale", "2026-03-01", grading_=g, amount="10",
                                     event_id="e1"), g, NOW)
    other = apply_event(state, event("sale", "2026-03-01", grading_=g, amount="11",
                                     event_id="e1"), g, NOW)
    later = apply_event(state, event("sale", "2026-03-02", grading_=g, amount="10",
                                     event_id="e1"), g, NOW)
    assert [(r.status, r.conflict) for r in (again, other, later)] == \
        [("duplicate", False), ("duplicate", True), ("duplicate", True)]
