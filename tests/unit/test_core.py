"""The step function: dedup, expiry, overrides, tier-change records, snapshots."""

from __future__ import annotations

import uuid

from grader.core.grading import apply_event, apply_tick, new_state, snapshot, tier_change_id
from grader.core.state import CustomerState
from tests.conftest import at, event, grading

G = grading("abc-100")
NOW = at("2026-11-24T10:00:00+08:00")
SECTION5_KEYS = {
    "event_id",
    "customer_id",
    "policy",
    "policy_version",
    "from_tier",
    "to_tier",
    "direction",
    "score",
    "previous_score",
    "breakdown",
    "metrics",
    "cause",
    "as_of",
    "emitted_at",
    "sequence",
}


def big_sale(when: str, **extra: object):  # type: ignore[no-untyped-def]
    return event("sale", when, grading_=G, amount="240000", **extra)


def test_first_activity_grades_and_records_every_field() -> None:
    state = new_state("C1")
    step = apply_event(state, big_sale("2026-05-01", event_id="s1"), G, NOW)
    assert step.status == "applied" and step.snapshot_changed
    (change,) = step.changes
    assert set(change) == SECTION5_KEYS
    assert change["event_id"] == tier_change_id("C1", "abc-100", 1)
    assert uuid.UUID(change["event_id"]).version == 5
    assert (change["from_tier"], change["to_tier"], change["direction"]) == (None, "A", "initial")
    assert (change["score"], change["previous_score"], change["sequence"]) == (100, None, 1)
    assert change["breakdown"] == {"monthly_avg_sales(12)": 70, "avg_payment_days(12)": 30}
    assert change["metrics"] == {"monthly_avg_sales(12)": 20000, "avg_payment_days(12)": 0}
    assert change["cause"] == {"kind": "event", "event_id": "s1"}
    assert change["as_of"] == "2026-05-01T04:00:00Z"
    assert change["emitted_at"] == "2026-11-24T02:00:00Z"
    assert change["policy_version"] == "1"


def test_duplicates_are_counted_and_never_applied_twice() -> None:
    state = new_state("C1")
    sale = big_sale("2026-05-01", event_id="s1")
    apply_event(state, sale, G, NOW)
    again = apply_event(state, sale, G, NOW)
    assert again.status == "duplicate" and not again.changes
    assert state.lifetime_sales == 24000000


def test_clock_tick_demotes_and_sequence_grows() -> None:
    state = new_state("C1")
    apply_event(state, big_sale("2025-12-15"), G, NOW)
    step = apply_tick(state, at("2026-12-01T00:00:00+08:00"), G, NOW)
    (change,) = step.changes
    assert (change["from_tier"], change["to_tier"], change["direction"]) == ("A", "C", "down")
    assert change["cause"] == {"kind": "clock"} and change["sequence"] == 2
    assert change["previous_score"] == 100 and change["score"] == 30
    assert apply_tick(state, at("2026-12-02"), G, NOW).changes == []


def test_as_of_never_moves_backwards() -> None:
    state = new_state("C1")
    apply_event(state, big_sale("2026-05-01"), G, NOW)
    apply_tick(state, at("2026-01-01"), G, NOW)
    assert state.as_of == at("2026-05-01")


def test_events_before_the_horizon_expire_and_ids_are_forgotten_with_them() -> None:
    state = new_state("C1")
    apply_event(state, big_sale("2025-01-15", event_id="old"), G, NOW)
    apply_tick(state, at("2026-11-22"), G, NOW)
    assert "old" not in state.seen  # left the 12-month horizon (2025-12-01)
    late = apply_event(state, big_sale("2025-11-30", event_id="late"), G, NOW)
    assert late.status == "expired" and state.lifetime_sales == 24000000
    inside = apply_event(state, big_sale("2025-12-01T00:00:00+08:00", event_id="in"), G, NOW)
    assert inside.status == "applied"


def test_horizon_follows_the_longest_window_of_any_policy() -> None:
    g = grading("abc-100", "sabcd-weighted")
    state = new_state("C1")
    apply_tick(state, at("2026-11-22"), g, NOW)
    assert apply_event(state, event("sale", "2023-12-02", amount=1), g, NOW).status == "applied"
    assert apply_event(state, event("sale", "2023-11-30", amount=1), g, NOW).status == "expired"


def override(when: str, action: str, **extra: object):  # type: ignore[no-untyped-def]
    return event("override", when, grading_=G, action=action, reason="r", actor="kam", **extra)


def test_pin_sets_tier_and_latest_override_wins_whatever_the_order() -> None:
    events = [
        big_sale("2026-05-01"),
        override("2026-06-01", "pin", policy="abc-100", tier="C", event_id="o1"),
        override("2026-07-01", "unpin", policy="abc-100", event_id="o2"),
        override("2026-08-01", "pin", policy="abc-100", tier="B", event_id="o3"),
    ]
    for order in (events, [events[0], events[3], events[1], events[2]]):
        state = new_state("C1")
        for e in order:
            apply_event(state, e, G, NOW)
        tier = state.tiers["abc-100"]
        assert (tier.tier, tier.pinned) == ("B", True)
        assert [a["event_id"] for a in state.audit] == ["o1", "o2", "o3"]
        assert state.audit[0]["actor"] == "kam" and state.audit[0]["reason"] == "r"


def test_pin_change_is_caused_by_override_and_unpin_returns_to_earned() -> None:
    state = new_state("C1")
    apply_event(state, big_sale("2026-05-01"), G, NOW)
    pin = apply_event(
        state, override("2026-06-01", "pin", policy="abc-100", tier="C", event_id="o1"), G, NOW
    )
    assert pin.changes[0]["cause"] == {"kind": "override", "event_id": "o1"}
    assert pin.changes[0]["score"] == 100  # the score is still computed and reported
    unpin = apply_event(state, override("2026-06-02", "unpin", policy="abc-100"), G, NOW)
    assert unpin.changes[0]["to_tier"] == "A" and not state.tiers["abc-100"].pinned


def test_blacklist_changes_the_snapshot_not_the_tier() -> None:
    state = new_state("C1")
    apply_event(state, big_sale("2026-05-01"), G, NOW)
    step = apply_event(state, override("2026-06-01", "blacklist", event_id="b1"), G, NOW)
    assert step.snapshot_changed and not step.changes
    older = apply_event(state, override("2026-05-15", "unblacklist"), G, NOW)
    assert state.blacklisted and not older.snapshot_changed
    assert snapshot(state) == {
        "customer_id": "C1",
        "blacklisted": True,
        "as_of": "2026-06-01T04:00:00Z",
        # drops_on and to_tier: null until grader.core.risk.refresh_risk computes them
        "tiers": {"abc-100": {"tier": "A", "score": 100, "sequence": 1, "pinned": False,
                              "drops_on": None, "to_tier": None}},
    }


def test_no_grade_before_first_activity_and_tickets_are_not_activity() -> None:
    state: CustomerState = new_state("C1")
    assert apply_event(state, override("2026-05-01", "blacklist"), G, NOW).changes == []
    ticket = event("ticket_opened", "2026-05-02", grading_=G, ticket_id="T1")
    step = apply_event(state, ticket, G, NOW)
    assert (step.status, step.changes, step.support_changed) == ("applied", [], True)
    assert state.as_of < at("2026-05-02") and "T1" in state.tickets  # kept, as_of not moved
    assert apply_tick(state, at("2026-06-01"), G, NOW).changes == [] and not state.tiers
    step = apply_event(state, event("interaction", "2026-06-02", grading_=G, kind="visit"), G, NOW)
    assert [c["to_tier"] for c in step.changes] == ["C"]


def test_tier_change_id_is_the_rfc4122_uuid5() -> None:
    from grader.core.grading import TIER_CHANGE_NAMESPACE

    for customer, policy, seq in [("C1", "abc-100", 1), ("客户", "stars", 12345)]:
        expected = uuid.uuid5(TIER_CHANGE_NAMESPACE, f"{customer}\x1f{policy}\x1f{seq}")
        assert tier_change_id(customer, policy, seq) == str(expected)
    assert tier_change_id("C1", "abc-100", 1) != tier_change_id("C1", "abc-100", 2)


def test_a_roll_out_grades_again_with_cause_policy_and_drops_a_removed_policy() -> None:
    from grader.core.grading import apply_policy, policy_stale
    from grader.core.support import view

    both = grading("abc-100", "stars")
    state: CustomerState = new_state("C1")
    apply_event(state, event("sale", "2026-05-01", grading_=both, amount="300000",
                             currency="CNY"), both, NOW)
    assert set(state.tiers) == {"abc-100", "stars"} and not policy_stale(state, both)
    only_abc = grading("abc-100")
    assert policy_stale(state, only_abc)  # stars was removed
    as_of = state.as_of
    step = apply_policy(state, only_abc, NOW)
    assert step.snapshot_changed and step.support_changed and step.changes == []
    assert set(state.tiers) == {"abc-100"} and state.as_of == as_of
    assert set(snapshot(state)["tiers"]) == {"abc-100"}
    assert "tier:stars" not in view(state, only_abc.policies[0])["fields"]
    assert not policy_stale(state, only_abc)
