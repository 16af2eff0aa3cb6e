"""The tier at risk kept in the state (grader.core.risk): drops_on in the state and snapshot,
tier warnings once per (customer, policy, drops_on), kept through the codec."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import orjson
import pytest

from grader.core import step
from grader.core.atrisk import drops_on
from grader.core.codec import dump_state, dump_state_v5, load_state
from grader.core.grading import Grading, apply_event, apply_tick, new_state, snapshot
from grader.core.risk import WARNING_NAMESPACE, refresh_risk, warning_id
from grader.core.state import CustomerState
from grader.core.topology import CUSTOMER_TIERS, TIER_CHANGES, TIER_WARNINGS
from tests.conftest import at, event, grading, preset

STARS = Grading((preset("stars"),))


def sale(when: str, amount: str, g: Grading = STARS, **extra: Any) -> Any:
    return event("sale", when, grading_=g, amount=amount, **extra)


def stars_customer(*events: Any) -> CustomerState:
    state = new_state("C1")
    for e in events:
        apply_event(state, e, STARS, 0)
    return state


def test_refresh_keeps_drops_on_of_every_policy_and_says_when_it_changed() -> None:
    g = grading("abc-100", "stars")
    state = new_state("C1")
    apply_event(state, sale("2026-03-31", "240000", g), g, 0)
    changed, _warnings = refresh_risk(state, g, 30, 0)
    assert changed
    for policy in g.policies:
        day, tier = drops_on(state, policy)
        risk = state.risk[policy.name]
        assert (risk.drops_on, risk.to_tier) == (day.toordinal() if day else None, tier)
    assert refresh_risk(state, g, 30, 0)[0] is False  # nothing moved
    tiers = snapshot(state)["tiers"]
    assert tiers["stars"]["drops_on"] == "2027-03-01" and tiers["stars"]["to_tier"] == "unrated"
    assert set(tiers["abc-100"]) == {"tier", "score", "sequence", "pinned", "drops_on",
                                     "to_tier"}


def test_a_tier_that_never_drops_has_nulls() -> None:
    state = stars_customer(event("interaction", "2026-11-01", grading_=STARS, kind="visit"))
    refresh_risk(state, STARS, 30, 0)
    assert snapshot(state)["tiers"]["stars"] == {"tier": "unrated", "score": 0.0,
                                                 "sequence": 1, "pinned": False,
                                                 "drops_on": None, "to_tier": None}


def test_one_warning_per_drop_date_and_again_for_a_new_date() -> None:
    # 1,000 CNY: 3-star until the March sale leaves the 12-month window on 2027-03-01.
    state = stars_customer(sale("2026-03-31", "1000"))
    assert refresh_risk(state, STARS, 30, 0)[1] == []  # 2027-03-01 is months away
    apply_tick(state, at("2027-01-30"), STARS, 0)  # 30 days before: due
    _changed, [warning] = refresh_risk(state, STARS, 30, at("2027-01-30"))
    assert warning == {
        "event_id": warning_id("C1", "stars", "2027-03-01"), "customer_id": "C1",
        "policy": "stars", "tier": "3-star", "to_tier": "unrated", "drops_on": "2027-03-01",
        "as_of": "2027-01-30T04:00:00Z", "emitted_at": "2027-01-30T04:00:00Z"}
    apply_tick(state, at("2027-02-10"), STARS, 0)
    assert refresh_risk(state, STARS, 30, 0)[1] == []  # the same date: warned once
    apply_event(state, sale("2027-02-11", "1000"), STARS, 0)  # moves it out, to 2028-02-01
    assert refresh_risk(state, STARS, 30, 0) == (True, [])
    assert snapshot(state)["tiers"]["stars"]["drops_on"] == "2028-02-01"
    apply_tick(state, at("2028-01-05"), STARS, 0)  # and back in: a new date, a new warning
    _changed, [again] = refresh_risk(state, STARS, 30, 0)
    assert again["drops_on"] == "2028-02-01" and again["event_id"] != warning["event_id"]
    assert state.risk["stars"].warned == [date(2028, 2, 1).toordinal()]  # the past forgotten


def test_a_date_warned_about_is_not_warned_again_after_moving_out_and_back() -> None:
    state = stars_customer(sale("2026-03-31", "1000"))
    apply_tick(state, at("2027-02-10"), STARS, 0)
    assert len(refresh_risk(state, STARS, 30, 0)[1]) == 1  # 2027-03-01
    apply_event(state, sale("2027-02-11", "1000", event_id="s2"), STARS, 0)
    assert refresh_risk(state, STARS, 30, 0)[1] == []  # out: 2028-02-01
    apply_event(state, event("refund", "2027-02-12", grading_=STARS, amount="1000"), STARS, 0)
    changed, warnings = refresh_risk(state, STARS, 30, 0)
    assert changed and warnings == []  # back to 2027-03-01, already warned about
    assert snapshot(state)["tiers"]["stars"]["drops_on"] == "2027-03-01"


@pytest.mark.parametrize(("warn_days", "warned"), [(0, False), (18, False), (19, True)])
def test_warn_days_is_the_most_days_ahead(warn_days: int, warned: bool) -> None:
    state = stars_customer(sale("2026-03-31", "1000"))
    apply_tick(state, at("2027-02-10"), STARS, 0)  # 19 days before 2027-03-01
    assert bool(refresh_risk(state, STARS, warn_days, 0)[1]) is warned


def test_the_warning_id_is_a_uuid5_of_customer_policy_and_date() -> None:
    assert warning_id("C1", "stars", "2027-03-01") == str(
        uuid.uuid5(WARNING_NAMESPACE, "C1\x1fstars\x1f2027-03-01"))
    assert uuid.UUID(warning_id("C1", "stars", "2027-03-01")).version == 5


def test_the_codec_keeps_the_risk_and_loads_older_versions() -> None:
    state = stars_customer(sale("2026-03-31", "1000"))
    apply_tick(state, at("2027-02-10"), STARS, 0)
    refresh_risk(state, STARS, 30, 0)
    again = load_state(dump_state(state))
    assert again.risk == state.risk
    assert refresh_risk(again, STARS, 30, 0) == (False, [])  # warned: survives a reload
    old = orjson.loads(dump_state_v5(state))  # a version 5 (JSON) state
    del old["risk"]
    old["v"] = 4
    older = load_state(orjson.dumps(old))
    assert older.risk == {}
    changed, warnings = refresh_risk(older, STARS, 30, 0)
    assert changed and len(warnings) == 1


def test_the_worker_sends_one_snapshot_per_batch_then_the_warnings() -> None:
    state = stars_customer(sale("2026-03-31", "1000"))
    apply_tick(state, at("2027-02-10"), STARS, 0)
    key = b"C1"
    earlier = [step.Output(TIER_CHANGES, key, b"{}"), step.Output(CUSTOMER_TIERS, key, b"old"),
               step.Output(CUSTOMER_TIERS, key, b"older")]
    outputs = step.with_risk(state, earlier, STARS, 30, 0)
    assert [o.topic for o in outputs] == [TIER_CHANGES, CUSTOMER_TIERS, TIER_WARNINGS]
    assert orjson.loads(outputs[1].value) == snapshot(state)
    assert orjson.loads(outputs[2].value)["drops_on"] == "2027-03-01"
    assert step.with_risk(state, [], STARS, 30, 0) == []  # nothing changed: nothing to send
