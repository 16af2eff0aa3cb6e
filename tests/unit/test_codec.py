"""The state codec (grader.codec): version 6 gives back every state it is given, reads
every older version, and grading through it gives the same outputs byte for byte."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.generate_events import generate
from grader.core import codec
from grader.core.clock import NEVER, parse_instant
from grader.core.codec import dump_state, dump_state_v5, load_state
from grader.core.grading import Grading
from grader.core.state import CustomerState, Invoice, Risk, Ticket, TierState
from grader.offline import replay
from grader.settings import resolve_policy

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).with_name("codec_fixtures.jsonl")
AS_OF = "2026-11-22T00:00:00+08:00"
G = Grading(tuple(resolve_policy(p, ROOT / "config")
                  for p in ("abc-100", "sabcd-weighted", "stars")))


def view(state: CustomerState) -> dict[str, Any]:
    """Everything a state keeps, with its types (a tuple is not a list), invoices as
    their sales and payments."""
    out = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
           if f.compare and f.name != "horizon_until"}  # a cache: recomputed, not stored
    out["invoices"] = {i: (inv.sales, inv.payments) for i, inv in state.invoices.items()}
    return out


# --- random states ------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
ids = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex), texts,
                st.uuids().map(lambda u: str(u).upper()), st.sampled_from(["e-1", "e-2"]))
instants = st.one_of(st.integers(-(2**62), 2**62), st.just(NEVER),
                     st.integers(0, 2 * 10**9).map(lambda s: s * 1_000_000))
ints = st.integers(-(2**62), 2**62)  # version 5 (JSON) holds 64 bits; version 6 any size
big = st.integers(-(2**100), 2**100)
small = st.integers(0, 100)
entries = st.lists(st.tuples(instants, ids, ints), max_size=4)


@st.composite
def states(draw: st.DrawFn, ints: st.SearchStrategy[int] = ints) -> CustomerState:
    seen = draw(st.dictionaries(ids, instants, max_size=12))
    digest_ids = draw(st.sampled_from(["all", "none", "some"]))
    digests = {e: draw(st.integers(0, 2**32 - 1)) for e in seen
               if digest_ids == "all" or (digest_ids == "some" and draw(st.booleans()))}
    state = CustomerState(draw(texts), as_of=draw(instants), horizon=draw(instants),
                          seen=seen, digests=digests,
                          first_activity=draw(st.none() | instants),
                          last_sale=draw(st.none() | instants), lifetime_sales=draw(ints))
    tzs = st.sampled_from(["Asia/Shanghai", "UTC", "Europe/Paris"])
    months = st.integers(-30_000, 30_000)
    state.months = draw(st.dictionaries(tzs, st.dictionaries(
        months, st.lists(ints, min_size=5, max_size=5), max_size=6), max_size=2))
    state.interactions = draw(st.dictionaries(tzs, st.dictionaries(
        texts, st.dictionaries(months, small, max_size=4), max_size=3), max_size=2))
    state.invoices = draw(st.dictionaries(texts, st.builds(
        lambda s, p: Invoice(list(s), list(p)), entries, entries), max_size=3))
    state.assessments = draw(st.dictionaries(
        texts, st.tuples(instants, ids, ints, st.integers(1, 10**6)), max_size=3))
    state.pins = draw(st.dictionaries(texts, st.tuples(instants, ids, st.none() | texts),
                                      max_size=3))
    state.blacklist = draw(st.none() | st.tuples(instants, ids, st.booleans()))
    state.audit = draw(st.lists(st.fixed_dictionaries({
        "ts": instants, "event_id": ids, "occurred_at": texts,
        "action": st.sampled_from(["pin", "unpin", "blacklist", "unblacklist"]),
        "policy": st.none() | texts, "tier": st.none() | texts, "reason": st.none() | texts,
        "actor": st.none() | texts}), max_size=3))
    state.tiers = draw(st.dictionaries(texts, st.builds(
        TierState, texts, st.tuples(ints, st.integers(1, 10**9)), small, instants,
        st.booleans()), max_size=4))
    state.tickets = draw(st.dictionaries(texts, st.builds(
        Ticket, st.none() | instants, instants, ids, texts, texts, st.none() | instants),
        max_size=3))
    digest = st.one_of(st.binary(min_size=32, max_size=32).map(bytes.hex), texts)
    state.graded_under = draw(st.dictionaries(texts, st.tuples(texts, digest), max_size=3))
    state.risk = draw(st.dictionaries(texts, st.builds(
        Risk, st.none() | st.integers(1, 10**6), st.none() | texts,
        st.lists(st.integers(1, 10**6), max_size=3)), max_size=3))
    state.risk_stale = draw(st.booleans())
    return state


@settings(max_examples=200, deadline=None)
@given(state=states(st.one_of(ints, big)))
def test_version_6_gives_back_every_state(state: CustomerState) -> None:
    data = dump_state(state)
    assert data[:1] == b"\x06"
    again = load_state(data)
    assert view(again) == view(state)
    assert dump_state(again) == data  # one state, one encoding


@settings(max_examples=200, deadline=None)
@given(state=states(st.one_of(ints, big)), data=st.data())
def test_a_tail_encoded_again_is_the_whole_dump(state: CustomerState,
                                                 data: st.DataObject) -> None:
    """The worker stores a refreshed customer by encoding only its tier at risk again
    (codec.redump_tail): byte for byte what dump_state gives, whatever the refresh wrote,
    the strings numbered before the tail or not (a tier name met first in the audit, or
    only now); None when the refresh wrote a string the mark was not told of."""
    names = tuple(dict.fromkeys([*state.tiers, *data.draw(st.lists(texts, max_size=4)),
                                 *(r.to_tier for r in state.risk.values() if r.to_tier)]))
    prefix = data.draw(st.binary(max_size=20))  # the record's head, before the state
    body, mark = codec.dump_state_marked(state, names)
    assert body == dump_state(state)
    state.risk = data.draw(st.dictionaries(st.sampled_from(names) if names else texts,
                                           st.builds(Risk, st.none() | st.integers(1, 10**6),
                                                     st.none() | st.sampled_from(names or ("",)),
                                                     st.lists(st.integers(1, 10**6),
                                                              max_size=3)), max_size=3))
    state.risk_stale = data.draw(st.booleans())
    again = codec.redump_tail(prefix + body, len(prefix), mark, state)
    fits = all(p in names and (r.to_tier is None or r.to_tier in names)
               for p, r in state.risk.items())
    if fits:
        assert again == dump_state(state)
        assert view(load_state(again)) == view(state)
    else:
        assert again is None


@settings(max_examples=100, deadline=None)
@given(state=states())
def test_version_5_states_still_load(state: CustomerState) -> None:
    assert view(load_state(dump_state_v5(state))) == view(state)


@settings(max_examples=100, deadline=None)
@given(seen=st.dictionaries(st.uuids().map(str), st.integers(-(2**32), 2**32), min_size=1,
                            max_size=30),
       whole=st.booleans(), data=st.data())
def test_the_compact_dedup_table_of_uuids(seen: dict[str, int], whole: bool,
                                          data: st.DataObject) -> None:
    """Canonical UUIDs and whole seconds (the compact form), or not quite (the tagged form:
    one instant off the second, or one id met before as the customer id)."""
    as_of = 1_795_276_800_000_000
    seen = {eid: as_of - s * 1_000_000 if whole else as_of - s for eid, s in seen.items()}
    fits = all((as_of - ts) % 1_000_000 == 0 and -(2**31) <= (as_of - ts) // 1_000_000 < 2**31
               for ts in seen.values())
    customer = data.draw(st.sampled_from(["C1", next(iter(seen))]))
    table = codec.Packer(as_of)
    table.text(customer)
    start = len(table.buf)
    codec._dump_seen(table, seen, {})
    compact = fits and customer == "C1"
    assert table.buf[start + 1] == (codec.COMPACT if compact else codec.TAGGED)  # after the count
    state = CustomerState(customer, as_of=as_of, seen=seen,
                          digests={eid: n for n, eid in enumerate(seen)})
    state.invoices = {"I1": Invoice([(ts, eid, 100) for eid, ts in seen.items()])}
    again = load_state(dump_state(state))
    assert view(again) == view(state)


def test_event_ids_are_kept_exactly_whatever_their_form() -> None:
    forms = ["0f8fad5b-d9cb-469f-a165-70867728950e", "0F8FAD5B-D9CB-469F-A165-70867728950E",
             "0f8fad5bd9cb469fa16570867728950e", "0f8fad5b-d9cb-469f-a165-70867728950", "abc",
             "e-000123", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "ünïcode-ïd", "0f8fad5b-d9cb-469f-a165"
             "-70867728950e ", "ab"]
    state = CustomerState("C1", as_of=10**15, seen=dict.fromkeys(forms, 10**15),
                          digests=dict.fromkeys(forms, 7))
    again = load_state(dump_state(state))
    assert list(again.seen) != [] and again.seen == state.seen
    assert again.digests == state.digests


def test_a_canonical_uuid_takes_16_bytes() -> None:
    one = CustomerState("C1", as_of=10**15, seen={"0f8fad5b-d9cb-469f-a165-70867728950e": 1})
    none = CustomerState("C1", as_of=10**15)
    assert len(dump_state(one)) - len(dump_state(none)) <= 16 + 1 + 10 + 5  # id, time, digests


@pytest.mark.parametrize("data", [b"\x06", b"\x06\x05", b"\x06\x07C1\x1f", b"\x06\xff",
                                  b"\x06\x07\x03C1\x40\x40\x40"])
def test_a_corrupt_version_6_state_is_one_clear_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="state"):
        load_state(data)


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported state version 7"):
        load_state(b'{"v": 7}')


# --- states written by older versions -----------------------------------------------------

def graded_states() -> dict[str, CustomerState]:
    """The states of the fixture's customers, graded now (bench/generate_events.py)."""
    lines = list(generate(40, 400, seed=3, as_of=AS_OF, months=14))
    result = replay.process(lines, parse_instant(AS_OF), G, 0)
    assert result.tiers_csv  # graded something
    states: dict[str, CustomerState] = {}
    ctx = G.parse_context()
    from grader.core.events import Event, parse_event
    from grader.core.grading import apply_event, apply_tick, new_state
    from grader.core.risk import refresh_risk
    events = sorted((e for e in (parse_event(line, ctx) for line in lines)
                     if isinstance(e, Event) and e.ts <= parse_instant(AS_OF)),
                    key=lambda e: (e.ts, e.event_id))
    for event in events:
        state = states.setdefault(event.customer_id, new_state(event.customer_id))
        apply_event(state, event, G, 0)
    for state in states.values():
        apply_tick(state, parse_instant(AS_OF), G, 0)
        refresh_risk(state, G, 30, 0)
    return states


def test_old_version_fixtures_decode_equal() -> None:
    """codec_fixtures.jsonl: states written by the version 5 codec (commit a98bbdc), and
    the same states in versions 1-4 (each version's layout without the keys it had not
    yet); each loads as today's state of the same events, less what its version lacked."""
    states = graded_states()
    fixtures = [orjson.loads(line) for line in FIXTURES.read_bytes().splitlines()]
    assert {f["v"] for f in fixtures} == {1, 2, 3, 4, 5}
    for fixture in fixtures:
        expected = view(states[fixture["id"]])
        lacks = {1: ("digests", "tickets", "graded_under", "risk", "risk_stale"),
                 2: ("tickets", "graded_under", "risk", "risk_stale"),
                 3: ("graded_under", "risk", "risk_stale"), 4: ("risk", "risk_stale"),
                 5: ()}[fixture["v"]]
        for name in lacks:
            expected[name] = type(expected[name])()
        loaded = load_state(orjson.dumps(fixture))
        assert view(loaded) == expected, fixture["v"]
        assert view(load_state(dump_state(loaded))) == expected  # and on into version 6


# --- grading through the codec ------------------------------------------------------------

def through_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the replay store and reload each customer's state (version 6) before every
    step, as a worker with no state in memory does."""
    def reloaded(step: Any) -> Any:
        def run(state: CustomerState, *args: Any) -> Any:
            fresh = load_state(dump_state(state))
            for f in dataclasses.fields(state):
                setattr(state, f.name, getattr(fresh, f.name))
            return step(state, *args)
        return run
    for name in ("apply_event", "apply_tick", "refresh_risk"):
        monkeypatch.setattr(replay, name, reloaded(getattr(replay, name)))


def test_replay_outputs_are_byte_identical_through_the_codec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines = list(generate(300, 4000, seed=5, as_of=AS_OF))  # re-sends, bad lines, 36 months
    as_of, now = parse_instant(AS_OF), parse_instant(AS_OF) + 3_600_000_000
    plain = replay.process(lines, as_of, G, now)
    through_codec(monkeypatch)
    stored = replay.process(lines, as_of, G, now)
    assert stored.stats == plain.stats and plain.stats.duplicate > 0
    assert bytes(stored.tiers_csv) == bytes(plain.tiers_csv)  # tiers.csv
    assert bytes(stored.changes) == bytes(plain.changes)  # tier-changes.jsonl
    assert bytes(stored.at_risk) == bytes(plain.at_risk) != b""  # at-risk.csv
    assert bytes(stored.warnings) == bytes(plain.warnings)  # tier-warnings.jsonl


def test_the_version_is_6() -> None:
    assert codec.VERSION == 6
