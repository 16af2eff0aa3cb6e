"""Order and duplicate independence (hypothesis).

For random valid event sets: shuffled order and injected duplicates give the
same final metrics and, under policies without downgrade rules, the same
tiers as time-ordered application. Events stay inside the horizon of the
final tick, as GRADING.md section 2 requires for order independence.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from grader.core.events import Event
from grader.core.grading import apply_event, apply_tick, new_state
from grader.core.metrics import MetricView
from grader.core.state import CustomerState
from tests.conftest import at, event, grading

G = grading("abc-100", "sabcd-weighted", "stars")
NO_RULES = ("abc-100", "stars")
AS_OF = at("2026-11-22T18:00:00+08:00")

# Mostly the last year (the 12-month windows), sometimes up to 36 months back.
days = st.one_of(
    st.integers(min_value=700, max_value=36 * 30 - 40),
    st.integers(min_value=0, max_value=36 * 30 - 40),
)
# Few distinct amounts, so partial payments add up to invoice totals.
money = st.one_of(
    st.sampled_from(["100", "50", "50.01", "49.99", "25000"]),
    st.decimals(min_value="0.01", max_value="50000", places=2).map(str),
)


def _when(day: int, minute: int) -> str:
    from datetime import datetime, timedelta, timezone

    moment = datetime(2023, 12, 5, 8, tzinfo=timezone(timedelta(hours=8)))
    return (moment + timedelta(days=day, minutes=minute)).isoformat()


@st.composite
def events(draw: Any) -> list[Event]:
    invoices = ["I0", "I1"]
    out: list[Event] = []
    for i in range(draw(st.integers(min_value=1, max_value=14))):
        kind = draw(
            st.sampled_from(
                ["sale", "sale", "credit", "refund", "payment", "touch", "assess", "pin", "unpin"]
            )
        )
        when = _when(draw(days), draw(st.integers(0, 3)))  # same-minute ties happen
        eid = f"e{i:02d}"
        fields: dict[str, Any] = {"event_id": eid}
        if kind in ("sale", "credit"):
            fields.update(amount=draw(money), gross_profit=draw(st.sampled_from([None, "0", "10"])))
            if kind == "credit":
                fields["invoice_id"] = draw(st.sampled_from(invoices))
            out.append(
                event(
                    "sale", when, grading_=G, **{k: v for k, v in fields.items() if v is not None}
                )
            )
        elif kind == "refund":
            out.append(event("refund", when, grading_=G, amount=draw(money), **fields))
        elif kind == "payment":
            out.append(
                event(
                    "payment",
                    when,
                    grading_=G,
                    amount=draw(money),
                    invoice_id=draw(st.sampled_from(invoices)),
                    **fields,
                )
            )
        elif kind == "touch":
            out.append(
                event(
                    "interaction",
                    when,
                    grading_=G,
                    kind=draw(st.sampled_from(["referral", "visit"])),
                    **fields,
                )
            )
        elif kind == "assess":
            out.append(
                event(
                    "assessment",
                    when,
                    grading_=G,
                    indicator="C1",
                    assessor="k",
                    score=draw(st.integers(0, 10)),
                    **fields,
                )
            )
        else:
            policy = draw(st.sampled_from(NO_RULES))
            extra = (
                {
                    "tier": draw(
                        st.sampled_from(
                            G.policies[0].tier_names
                            if policy == "abc-100"
                            else G.policies[2].tier_names
                        )
                    )
                }
                if kind == "pin"
                else {}
            )
            out.append(
                event(
                    "override",
                    when,
                    grading_=G,
                    action=kind,
                    policy=policy,
                    reason="r",
                    actor="a",
                    **extra,
                    **fields,
                )
            )
    return out


def run(order: list[Event]) -> CustomerState:
    state = new_state("C1")
    for e in order:
        apply_event(state, e, G, 0)
    apply_tick(state, AS_OF, G, 0)
    return state


def all_metrics(state: CustomerState) -> dict[str, Any]:
    view = MetricView(state, "Asia/Shanghai")
    return {ln.metric.key: view.value(ln.metric) for p in G.policies for ln in p.lines}


def in_time_order(evs: list[Event]) -> list[Event]:
    return sorted(evs, key=lambda e: (e.ts, e.event_id))


@settings(max_examples=300, deadline=None)
@given(evs=events(), data=st.data())
def test_shuffled_and_duplicated_give_the_same_result(evs: list[Event], data: Any) -> None:
    reference = run(in_time_order(evs))
    dups = data.draw(st.lists(st.sampled_from(evs), max_size=5))
    shuffled = data.draw(st.permutations(evs + dups))
    other = run(shuffled)
    assert all_metrics(other) == all_metrics(reference)
    assert other.lifetime_sales == reference.lifetime_sales
    assert other.pins == reference.pins and other.blacklist == reference.blacklist
    for name in NO_RULES:
        assert (name in other.tiers) == (name in reference.tiers)
        if name in reference.tiers:
            mine, theirs = other.tiers[name], reference.tiers[name]
            assert (mine.tier, mine.score, mine.pinned) == (
                theirs.tier,
                theirs.score,
                theirs.pinned,
            )


@st.composite
def invoice_story(draw: Any) -> list[Event]:
    """Credit sales and partial payments on one invoice in the last months."""
    out = [
        event(
            "sale",
            _when(draw(st.integers(900, 1000)), 0),
            grading_=G,
            amount=draw(st.sampled_from(["100", "60"])),
            invoice_id="I0",
            event_id="s0",
        )
    ]
    for i in range(draw(st.integers(0, 1))):
        out.append(
            event(
                "sale",
                _when(draw(st.integers(900, 1000)), 1),
                grading_=G,
                amount="40",
                invoice_id="I0",
                event_id=f"s{i + 1}",
            )
        )
    for i in range(draw(st.integers(1, 4))):
        out.append(
            event(
                "payment",
                _when(draw(st.integers(880, 1040)), draw(st.integers(0, 1))),
                grading_=G,
                amount=draw(st.sampled_from(["30", "50", "70", "100"])),
                invoice_id="I0",
                event_id=f"p{i}",
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(evs=invoice_story(), data=st.data())
def test_invoice_payment_days_do_not_depend_on_arrival(evs: list[Event], data: Any) -> None:
    reference = all_metrics(run(in_time_order(evs)))
    assert all_metrics(run(data.draw(st.permutations(evs)))) == reference


@settings(max_examples=100, deadline=None)
@given(evs=events(), cut=st.integers(min_value=0, max_value=14))
def test_state_survives_a_round_trip_mid_stream(evs: list[Event], cut: int) -> None:
    """Serialising and reloading at any point changes nothing (the worker's table)."""
    from grader.core.codec import dump_state, load_state

    reference = run(evs)
    state = new_state("C1")
    for e in evs[:cut]:
        apply_event(state, e, G, 0)
    state = load_state(dump_state(state))
    for e in evs[cut:]:
        apply_event(state, e, G, 0)
    apply_tick(state, AS_OF, G, 0)
    assert dump_state(state) == dump_state(reference)
    again = load_state(dump_state(state))
    assert all_metrics(again) == all_metrics(reference)
