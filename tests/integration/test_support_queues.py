"""Support queues in a real Redis, written by real workers on both brokers (GRADING.md 5).

The expected keys are derived here from the events themselves: which tickets
are open (any ``ticket_closed`` closes; the latest ``ticket_opened`` names the
queue, the earliest is ``opened_at``), each customer's tier under the support
policy and blacklist flag after the final tick (from the core, whose tiers
the stream tests show equal to `grader replay`), and the service order as a
plain sort: blacklisted last, then the support policy's priority, never
graded below every tier, then oldest first (to the millisecond), then id.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bench.generate_events import generate
from grader.core.clock import format_instant, parse_instant
from grader.core.events import Event, parse_event
from grader.core.grading import Grading, apply_event, apply_tick, new_state
from grader.core.state import CustomerState
from grader.devtools.services import free_port, start_redis
from grader.settings import resolve_policy
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_stream import (
    AS_OF,
    POLICIES,
    events_file,
    expected,
    final_tick_equals_replay,
    write_lines,
)

pytestmark = pytest.mark.integration
GRADING = Grading(tuple(resolve_policy(p, ROOT / "config") for p in POLICIES))
SUPPORT = GRADING.policies[0]  # abc-100: support_priority A, B, C


def final_states(lines: list[bytes]) -> dict[str, CustomerState]:
    """Every customer's state after its valid events in time order and a tick at AS_OF."""
    ctx = GRADING.parse_context()
    events = sorted((e for e in (parse_event(line, ctx) for line in lines)
                     if isinstance(e, Event)), key=lambda e: (e.ts, e.event_id))
    states: dict[str, CustomerState] = {}
    for event in events:
        state = states.setdefault(event.customer_id, new_state(event.customer_id))
        apply_event(state, event, GRADING, 0)
    for state in states.values():
        apply_tick(state, parse_instant(AS_OF), GRADING, 0)
    return states


def expected_keys(lines: list[bytes], prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` a worker should leave, with its value."""
    states = final_states(lines)
    ctx = GRADING.parse_context()
    opens: dict[str, list[Event]] = {}
    closed: set[str] = set()
    for e in (parse_event(line, ctx) for line in lines):
        if isinstance(e, Event) and e.type == "ticket_opened":
            opens.setdefault(e.ticket_id or "", []).append(e)
        elif isinstance(e, Event) and e.type == "ticket_closed":
            closed.add(e.ticket_id or "")
    keys: dict[str, Any] = {}
    for customer, state in states.items():
        fields = {f"tier:{p}": t.tier for p, t in state.tiers.items()}
        keys[f"{prefix}customer:{customer}"] = {**fields,
                                                "blacklisted": "1" if state.blacklisted else "0"}
    queues: dict[str, list[tuple[Any, ...]]] = {}
    for ticket_id, seen in opens.items():
        if ticket_id in closed:
            continue
        latest = max(seen, key=lambda e: (e.ts, e.event_id))
        opened_at = min(e.ts for e in seen)
        state = states[latest.customer_id]
        tier = state.tiers.get(SUPPORT.name)
        rank = (2, 0) if state.blacklisted else \
            (1, 0) if tier is None else (0, SUPPORT.support_priority.index(tier.tier))
        queue = latest.queue or "default"
        keys[f"{prefix}ticket:{ticket_id}"] = {
            "customer_id": latest.customer_id, "queue": queue,
            "subject": latest.subject or "", "opened_at": format_instant(opened_at)}
        queues.setdefault(queue, []).append((rank, opened_at // 1000, ticket_id))
    for queue, entries in queues.items():
        keys[f"{prefix}queue:{queue}"] = [ticket_id for *_order, ticket_id in sorted(entries)]
    return keys


def redis_keys(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix``: hashes as dicts, sorted sets as their ZRANGE; not the
    customers' version strings (``version:``, checked by tests/integration/test_zombie.py)."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=prefix + "*", count=1000):
        key = raw.decode()
        if key.startswith(prefix + "version:"):
            continue
        if client.type(raw) == b"zset":
            out[key] = [m.decode() for m in client.zrange(raw, 0, -1)]
        else:
            out[key] = {k.decode(): v.decode() for k, v in client.hgetall(raw).items()}
    return out


def assert_keys_equal(client: redis.Redis, want: dict[str, Any], prefix: str,
                      timeout: float = 30) -> None:
    got: dict[str, Any] = {}

    def same() -> bool:
        nonlocal got
        got = redis_keys(client, prefix)
        return got == want

    try:
        wait_for(same, timeout, "Redis to hold the expected keys")
    except AssertionError:
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        extra = sorted(set(got) - set(want))
        raise AssertionError(f"{len(wrong)} of {len(want)} keys differ (got, want): "
                             f"{dict(list(wrong.items())[:5])}; extra {extra[:5]}") from None


def with_redis(stream: Stream, url: str) -> dict[str, str]:
    return {"GRADER_REDIS_URL": url, "GRADER_REDIS_PREFIX": stream.prefix}


def crafted() -> list[bytes]:
    """One customer of each band under abc-100, two tickets each in the queue "crafted":
    A (big buyer), B (small buyer paying on the spot), C (small buyer paying 90 days late),
    never graded (tickets only) and blacklisted (a B customer)."""
    def line(event_id: str, etype: str, customer: str, when: str, **fields: str) -> bytes:
        return orjson.dumps({"event_id": event_id, "type": etype, "customer_id": customer,
                             "occurred_at": f"{when}T10:00:00+08:00", **fields})

    money = {"currency": "CNY"}
    out = [line("q-a", "sale", "Q-A", "2026-06-01", amount="300000", **money),
           line("q-b", "sale", "Q-B", "2026-06-01", amount="1000", **money),
           line("q-bl", "sale", "Q-BL", "2026-06-01", amount="1000", **money),
           line("q-bl-x", "override", "Q-BL", "2026-06-02", action="blacklist",
                reason="fraud", actor="ops"),
           line("q-c", "sale", "Q-C", "2026-06-01", amount="1000", invoice_id="I-C", **money),
           line("q-c-pay", "payment", "Q-C", "2026-08-30", amount="1000", invoice_id="I-C",
                **money)]
    for n, customer in enumerate(("Q-BL", "Q-NG", "Q-C", "Q-B", "Q-A")):
        for k, day in enumerate((f"2026-09-0{n + 1}", f"2026-10-0{5 - n}")):
            out.append(line(f"open-{customer}-{k}", "ticket_opened", customer, day,
                            ticket_id=f"{customer}-{k}", queue="crafted"))
    return out


def test_queues_after_a_final_tick_equal_the_events(stream: Stream, redis_server: Any,
                                                    tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=80, events=2500, seed=31)
    lines += crafted()
    write_lines(tmp_path / "events.jsonl", lines)
    want, _dead = expected(lines)
    worker = stream.start_worker(**with_redis(stream, redis_server.url))
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    keys = expected_keys(lines, stream.prefix)
    assert sum(k.startswith(stream.prefix + "queue:") for k in keys) >= 2, "two queues or more"
    # every band, in service order: A, B, C, never graded, blacklisted; oldest first
    assert keys[f"{stream.prefix}queue:crafted"] == [
        "Q-A-0", "Q-A-1", "Q-B-0", "Q-B-1", "Q-C-0", "Q-C-1", "Q-NG-0", "Q-NG-1",
        "Q-BL-0", "Q-BL-1"]
    client = redis.Redis.from_url(redis_server.url)
    assert_keys_equal(client, keys, stream.prefix)
    # redis-sync after FLUSHALL rebuilds the same keys, key by key
    client.flushall()
    done = stream.grader("redis-sync", **with_redis(stream, redis_server.url))
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(final_states(lines))} customers" in done.stderr
    assert redis_keys(client, stream.prefix) == keys
    # and removes what the state does not hold
    client.hset(f"{stream.prefix}ticket:gone", mapping={"queue": "default"})
    client.zadd(f"{stream.prefix}queue:default", {"gone": 1})
    client.hset(f"{stream.prefix}customer:nobody", mapping={"blacklisted": "0"})
    done = stream.grader("redis-sync", **with_redis(stream, redis_server.url))
    assert "removed 3 stale" in done.stderr, done.stderr
    assert redis_keys(client, stream.prefix) == keys
    assert worker.stop() == 0


def order_events(customer: str, sales: int, when: str, n: int) -> list[bytes]:
    return [orjson.dumps({"event_id": f"{customer}-sale-{i}", "type": "sale",
                          "customer_id": customer, "occurred_at": when,
                          "amount": str(sales), "currency": "CNY"}) for i in range(n)]


def test_a_tier_change_moves_every_ticket_of_the_customer_at_once(
        stream: Stream, redis_server: Any, tmp_path: Path) -> None:
    """A reader polling the queue never sees the customer's tickets at two ranks."""
    when = "2026-11-01T10:00:00+08:00"
    lines = order_events("MOVER", 1000, when, 1)  # a small buyer paying on the spot: tier B
    lines += order_events("BIG", 300000, when, 1)  # tier A
    for i in range(40):  # the mover's tickets, then others' in between
        for customer in ("MOVER", "BIG"):
            lines.append(orjson.dumps({
                "event_id": f"open-{customer}-{i}", "type": "ticket_opened",
                "customer_id": customer, "occurred_at": f"2026-11-02T10:{i:02d}:00+08:00",
                "ticket_id": f"{customer}-T{i:02d}", "queue": "desk"}))
    write_lines(tmp_path / "first.jsonl", lines)
    worker = stream.start_worker(**with_redis(stream, redis_server.url))
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "first.jsonl")).returncode == 0
    client = redis.Redis.from_url(redis_server.url)
    queue = f"{stream.prefix}queue:desk"
    wait_for(lambda: client.zcard(queue) == 80, 45, "80 open tickets")

    def mover_ranks(entries: list[tuple[bytes, float]]) -> set[int]:
        return {int(score) >> 48 for member, score in entries if member.startswith(b"MOVER")}

    assert mover_ranks(client.zrange(queue, 0, -1, withscores=True)) == {1}  # B
    seen: list[set[int]] = []
    stop = threading.Event()

    def read() -> None:
        reader = redis.Redis.from_url(redis_server.url)
        while not stop.is_set():
            seen.append(mover_ranks(reader.zrange(queue, 0, -1, withscores=True)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        write_lines(tmp_path / "up.jsonl", order_events("MOVER", 900000, when, 3)[1:])
        assert stream.grader("produce", str(tmp_path / "up.jsonl")).returncode == 0
        wait_for(lambda: seen and seen[-1] == {0}, 30, "the mover's tickets at tier A")
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join()
    assert all(len(ranks) == 1 for ranks in seen), [r for r in seen if len(r) != 1][:3]
    assert {1} in seen and {0} in seen and len(seen) > 20
    order = [m.decode() for m in client.zrange(queue, 0, -1)]
    assert order[:2] == ["BIG-T00", "MOVER-T00"] and order[-1] == "MOVER-T39"
    assert worker.stop() == 0


def test_redis_down_mid_stream_then_back_empty(stream: Stream, tmp_path: Path) -> None:
    """The worker holds its stream while Redis is down, and rewrites everything it owns
    when Redis comes back empty: the keys end as without the outage."""
    port = free_port()
    server = start_redis(port)
    lines = events_file(tmp_path / "events.jsonl", customers=60, events=2000, seed=32)
    want, _dead = expected(lines)
    write_lines(tmp_path / "first.jsonl", lines[:1000])
    write_lines(tmp_path / "second.jsonl", lines[1000:])
    worker = stream.start_worker(**with_redis(stream, server.url))
    try:
        worker.wait_ready()
        assert stream.grader("produce", str(tmp_path / "first.jsonl")).returncode == 0
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: client.dbsize() > 50, 30, "the first keys")
        server.stop()
        assert stream.grader("produce", str(tmp_path / "second.jsonl")).returncode == 0
        wait_for(lambda: "holding the stream" in worker.log(), 30, "the worker to hold")
        time.sleep(2)
        server = start_redis(port)  # empty
        final_tick_equals_replay(stream, lines, want)
        wait_for(lambda: "restarted: writing" in worker.log(), 30, "the worker to see the restart")
        assert "answers again" in worker.log()
        assert_keys_equal(redis.Redis.from_url(server.url), expected_keys(lines, stream.prefix),
                          stream.prefix)
        assert worker.stop() == 0
    finally:
        worker.stop()
        server.stop()


def test_restarts_and_redeliveries_rewrite_the_same_keys(stream: Stream, redis_server: Any,
                                                         tmp_path: Path) -> None:
    """Killed (kill -9) mid-stream and restarted: what it grades again (duplicates, and the
    outputs stored but maybe not written) rewrites the same keys."""
    lines = events_file(tmp_path / "events.jsonl", customers=80, events=3000, seed=33)
    want, _dead = expected(lines)
    first = stream.start_worker(**with_redis(stream, redis_server.url))
    first.wait_ready()
    producing = stream.grader_process("produce", str(tmp_path / "events.jsonl"))
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: sum(1 for _ in client.scan_iter(match=stream.prefix + "*")) > 20, 30,
             "the first keys")
    first.kill()
    assert producing.wait(60) == 0
    second = stream.start_worker(**with_redis(stream, redis_server.url))
    second.wait_ready(45)
    final_tick_equals_replay(stream, lines, want)
    assert_keys_equal(client, expected_keys(lines, stream.prefix), stream.prefix)
    assert second.stop() == 0


def test_a_wrong_redis_password_is_one_line(stream: Stream) -> None:
    server = start_redis(extra_args=["--requirepass", "right-one"])
    try:
        url = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        started = time.monotonic()
        done = stream.grader("worker", GRADER_REDIS_URL=url)
        assert time.monotonic() - started < 15
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("grader: error: setting redis_url (GRADER_REDIS_URL)")
        assert "refused the user name or password" in lines[-1]
        assert "wrong-one" not in done.stderr and "wrong-one" not in done.stdout
        good = f"redis://:right-one@127.0.0.1:{server.port}/0"
        worker = stream.start_worker(GRADER_REDIS_URL=good, GRADER_REDIS_PREFIX=stream.prefix)
        worker.wait_ready()
        assert "right-one" not in worker.log()
        assert worker.stop() == 0
    finally:
        server.stop()


def test_generated_files_have_tickets_in_several_queues() -> None:
    """The other tests' files exercise the queues (a guard on the generator)."""
    ctx = GRADING.parse_context()
    types = [e.type for e in (parse_event(line, ctx) for line in
                              generate(80, 2500, seed=31, as_of=AS_OF, months=11))
             if isinstance(e, Event)]
    assert types.count("ticket_opened") > 20 and types.count("ticket_closed") > 10
