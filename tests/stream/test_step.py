"""The worker's per-message logic without Kafka: grader.core.step and the Processor.

The Processor is given plain dicts for its tables and a fake sink, as the
house style asks (swap the transport, don't patch).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from grader.core import codec, step
from grader.core.clock import NEVER, parse_instant
from grader.core.codec import dump_state
from grader.core.grading import Grading
from grader.core.step import Incoming, Output
from grader.core.topology import partition_of
from grader.sinks.kafka import RecordingSink
from grader.stream import processor as processor_module
from grader.stream.agent import grade_batches
from grader.stream.processor import BEHIND_AFTER, Processor
from grader.stream.progress import SourceProgress
from grader.stream.tables import MemoryTableStore
from tests.conftest import grading

NOW = parse_instant("2026-11-24T00:00:00Z")
PARTITIONS = 4


def sale(customer: str, event_id: str, when: str, amount: str = "30000") -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "sale", "customer_id": customer,
                         "occurred_at": when, "amount": amount, "currency": "CNY"})


def message(value: bytes | None, key: bytes | None, topic: str = "g.transactions",
            partition: int | None = None, offset: int = 0) -> Incoming:
    if partition is None:
        partition = partition_of(key, PARTITIONS) if key else 0
    return Incoming(topic, partition, offset, key, value)


def test_first_sale_grades_and_snapshots() -> None:
    outcome = step.handle_event(message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1"),
                                lambda _key: None, NEVER, grading("abc-100", "stars"), NOW,
                                PARTITIONS)
    assert outcome.status == "applied"
    assert [o.topic for o in outcome.outputs] == ["tier-changes", "tier-changes",
                                                  "customer-tiers"]
    assert outcome.support, "a new customer's support-queue keys are to be written"
    assert all(o.key == b"C1" for o in outcome.outputs)
    snap = orjson.loads(outcome.outputs[-1].value)
    assert snap["tiers"]["abc-100"]["tier"] == "B"  # 2500 a month: 30 + paid at once: 30
    assert outcome.state is not None and outcome.state.customer_id == "C1"


def test_a_deferring_batch_builds_no_snapshot_of_a_customer_with_tiers() -> None:
    """While behind the worker drops a graded customer's snapshots (Processor.defer_risk),
    so its steps do not build them; the rest of the outcome is the same."""
    msg = message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1")
    g = grading("abc-100", "stars")
    outcome = step.handle_event(msg, lambda _key: None, NEVER, g, NOW, PARTITIONS,
                                snapshots=False)
    assert [o.topic for o in outcome.outputs] == ["tier-changes", "tier-changes"]
    whole = step.handle_event(msg, lambda _key: None, NEVER, g, NOW, PARTITIONS)
    assert outcome.outputs == whole.outputs[:2]
    assert whole.outputs[2].topic == "customer-tiers"
    assert outcome.state is not None and whole.state is not None
    assert dump_state(outcome.state) == dump_state(whole.state)


def test_duplicate_changes_nothing() -> None:
    g = grading("abc-100")
    msg = message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1")
    first = step.handle_event(msg, lambda _key: None, NEVER, g, NOW, PARTITIONS)
    again = step.handle_event(msg, lambda _key: first.state, NEVER, g, NOW, PARTITIONS)
    assert (again.status, again.outputs, again.state) == ("duplicate", [], None)


@pytest.mark.parametrize(("value", "key", "topic", "code"), [
    (b"{not json", b"C1", "g.transactions", "bad_json"),
    (None, b"C1", "g.transactions", "no_value"),
    (b"", None, "g.transactions", "bad_json"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C2", "g.transactions", "wrong_key"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"", "g.transactions", "wrong_key"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1", "g.interactions", "wrong_topic"),
    (sale("C1", "e1", "2026-11-24T01:00:00Z"), b"C1", "g.transactions", "future_timestamp"),
    (b'{"type": ["sale"], "event_id": "e1"}', b"C1", "g.transactions", "bad_field"),
])
def test_rejections_become_dead_letters(value: bytes | None, key: bytes | None, topic: str,
                                        code: str) -> None:
    msg = message(value, key, topic, offset=7)
    outcome = step.handle_event(msg, lambda _key: None, NEVER, grading("abc-100"), NOW,
                                PARTITIONS)
    assert outcome.status == "rejected" and outcome.state is None and outcome.code == code
    [dead] = outcome.outputs
    record = orjson.loads(dead.value)
    assert (dead.topic, dead.key) == ("dead-letters", key)
    assert (record["code"], record["topic"], record["partition"], record["offset"]) == \
        (code, topic, msg.partition, 7)
    assert record["raw"] == (None if value is None else value.decode())


@pytest.mark.parametrize(("key", "partition", "status"), [
    (b"C1", (partition_of(b"C1", PARTITIONS) + 1) % PARTITIONS, "forwarded"),
    (None, (partition_of(b"C1", PARTITIONS) + 1) % PARTITIONS, "forwarded"),
    (None, partition_of(b"C1", PARTITIONS), "applied"),
])
def test_events_off_their_customers_partition_are_forwarded(key: bytes | None, partition: int,
                                                            status: str) -> None:
    value = sale("C1", "e1", "2026-11-01T10:00:00+08:00")
    loaded: list[bytes] = []
    outcome = step.handle_event(message(value, key, partition=partition),
                                lambda k: loaded.append(k), NEVER, grading("abc-100"), NOW,
                                PARTITIONS)
    assert outcome.status == status
    if status == "forwarded":
        assert loaded == [] and outcome.state is None
        assert outcome.outputs == [Output("repartition", b"C1", value)]
    else:
        assert loaded == [b"C1"] and outcome.state is not None


def test_a_forwarded_event_is_graded_on_the_repartition_topic() -> None:
    value = sale("C1", "e1", "2026-11-01T10:00:00+08:00")
    msg = message(value, b"C1", "g.repartition")
    outcome = step.handle_event(msg, lambda _key: None, NEVER, grading("abc-100"), NOW,
                                PARTITIONS)
    assert outcome.status == "applied"


def test_a_dead_letter_keeps_at_most_64_kib_of_the_message() -> None:
    value = b'{"event_id": "' + b"x" * 1024 * 1024 + b'"}'
    outcome = step.handle_event(message(value, b"C1", offset=3), lambda _key: None, NEVER,
                                grading(), NOW, PARTITIONS)
    [dead] = outcome.outputs
    record = orjson.loads(dead.value)
    assert len(dead.value) < 100 * 1024
    assert (record["code"], record["raw_truncated"], record["raw_bytes"]) == \
        ("missing_field", True, len(value))
    assert base64.b64decode(record["raw_base64"]) == value[:64 * 1024]
    assert record["raw_sha256"] == hashlib.sha256(value).hexdigest()


def test_binary_garbage_is_kept_as_base64() -> None:
    outcome = step.handle_event(message(b"\xff\xfe", b"C1"), lambda _key: None, NEVER, grading(),
                                NOW, PARTITIONS)
    assert orjson.loads(outcome.outputs[0].value)["raw_base64"] == "//4="


def test_tick_is_idempotent_and_clock_reaches_late_customers() -> None:
    g = grading("stars")
    msg = message(sale("C1", "e1", "2026-01-10T10:00:00+08:00", "1000"), b"C1")
    state = step.handle_event(msg, lambda _key: None, NEVER, g, NOW, PARTITIONS).state
    assert state is not None
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    ticked = step.handle_tick(state, as_of, g, NOW)
    assert ticked.status == "applied" and ticked.state is state and state.as_of == as_of
    assert step.handle_tick(state, as_of, g, NOW).status == "unchanged"
    # A customer first seen after the partition's tick is graded as of that tick.
    late = message(sale("C1", "e2", "2026-02-10T10:00:00+08:00", "1000"), b"C1")
    first = step.handle_event(late, lambda _key: None, as_of, g, NOW, PARTITIONS)
    assert first.state is not None and first.state.as_of == as_of


def test_parse_tick() -> None:
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    assert step.parse_tick(step.tick_message(as_of, "t1"), NOW) == as_of
    for value, code in [(b'{"as_of": 5}', "missing_field"), (None, "no_value"),
                        (b"", "bad_json"), (b'{"as_of": "2026-11-24T00:05:01Z"}',
                                            "future_timestamp")]:
        rejected = step.parse_tick(value, NOW)
        assert isinstance(rejected, step.Rejection) and rejected.code == code


def stored(store: MemoryTableStore, key: bytes) -> step.Record:
    return step.decode_record(store.data[key])


class CheckingSink:
    """Asserts the table already holds each published tier change, stored with its state."""

    def __init__(self, table: MemoryTableStore) -> None:
        self.table = table
        self.published: list[Output] = []

    async def publish(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if out.topic == "customer-tiers":
                record = stored(self.table, out.key or b"")
                seq = orjson.loads(out.value)["tiers"]["abc-100"]["sequence"]
                assert record.state.tiers["abc-100"].sequence == seq
                assert out in record.pending
        self.published.extend(outputs)


class CountingStore(MemoryTableStore):
    """A MemoryTableStore that keeps each put_many call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []

    async def put_many(self, writes: Sequence[tuple[int, bytes, bytes]]) -> None:
        self.calls.append([key for _, key, _ in writes])
        await super().put_many(writes)


def processor(g: Grading, sink: Any, customers: MemoryTableStore) -> Processor:
    return Processor(g, customers, MemoryTableStore(), sink, "g.ticks", PARTITIONS)


def test_processor_stores_before_it_publishes() -> None:
    customers = MemoryTableStore()
    sink = CheckingSink(customers)
    proc = processor(grading("abc-100"), sink, customers)
    for n, (amount, when) in enumerate([("100", "2026-10-01"), ("300000", "2026-10-02")]):
        msg = message(sale("C1", f"e{n}", f"{when}T10:00:00+08:00", amount), b"C1", offset=n)
        asyncio.run(proc.on_message(msg))
    assert [o.topic for o in sink.published].count("customer-tiers") == 2
    assert stored(customers, b"C1").state.tiers["abc-100"].tier == "A"


def without_emitted_at(outputs: Sequence[Output]) -> list[tuple[str, bytes | None, Any]]:
    """Outputs comparable across runs: emitted_at is the wall clock."""
    def body(out: Output) -> Any:
        value = orjson.loads(out.value)
        if isinstance(value, dict):
            value.pop("emitted_at", None)
        return value
    return [(out.topic, out.key, body(out)) for out in outputs]


def test_a_batch_equals_its_messages_one_by_one_and_stores_each_customer_once() -> None:
    g = grading("abc-100", "stars")
    days = ["2026-09-01", "2026-09-15", "2026-10-01", "2026-10-02", "2026-10-20"]
    msgs = [message(sale(c, f"{c}-{n}", f"{day}T10:00:00+08:00", str(9000 * (n + 1))),
                    c.encode(), offset=n)
            for n, day in enumerate(days) for c in ("C1", "C2", "C3")]
    msgs.append(msgs[4])  # a redelivered duplicate inside the batch
    msgs.append(message(b"{bad", b"C1", offset=99))
    one_sink, one_store = RecordingSink(), MemoryTableStore()
    one = processor(g, one_sink, one_store)
    for msg in msgs:
        asyncio.run(one.on_message(msg))
    batch_sink, batch_store = RecordingSink(), CountingStore()
    asyncio.run(processor(g, batch_sink, batch_store).on_batch(msgs))

    def per_key(outputs: Sequence[Output]) -> dict[Any, Any]:  # order only matters per key
        keys = {(out.topic == "dead-letters", out.key) for out in outputs}
        return {k: without_emitted_at([o for o in outputs
                                       if (o.topic == "dead-letters", o.key) == k])
                for k in keys}

    def last_snapshot_only(outputs: Sequence[Output]) -> list[Output]:
        """One by one, each message publishes its snapshot; a batch, the last one."""
        last = {o.key: n for n, o in enumerate(outputs) if o.topic == "customer-tiers"}
        return [o for n, o in enumerate(outputs)
                if o.topic != "customer-tiers" or last[o.key] == n]

    assert per_key(batch_sink.published) == per_key(last_snapshot_only(one_sink.published))
    assert {k: dump_state(stored(batch_store, k).state) for k in batch_store.data} == \
        {k: dump_state(stored(one_store, k).state) for k in one_store.data}
    assert batch_store.calls == [[b"C1", b"C2", b"C3"]]
    assert batch_store.partitions == {k: partition_of(k, PARTITIONS) for k in batch_store.data}


def test_a_tick_inside_a_batch_settles_what_came_before_it() -> None:
    g = grading("stars")
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    key = b"C1"
    part = partition_of(key, PARTITIONS)
    before = message(sale("C1", "e1", "2026-01-10T10:00:00+08:00", "1000"), key, offset=0)
    tick = Incoming("g.ticks", part, 0, b"tick", step.tick_message(as_of, "t"))
    after = message(sale("C1", "e2", "2026-02-10T10:00:00+08:00", "1000"), key, offset=1)
    store = CountingStore()
    proc = processor(g, RecordingSink(), store)
    asyncio.run(proc.on_batch([before, tick, after]))
    # before: stored alone; the tick re-grades it; after: brought up to the tick's clock.
    assert store.calls == [[key], [key], [key]]
    state = stored(store, key).state
    assert state.as_of == as_of and {"e1", "e2"} <= set(state.seen)
    assert proc.clock(part) == as_of


def test_a_customer_first_seen_after_a_tick_in_the_same_batch_gets_its_clock() -> None:
    g = grading("stars")
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    old = b"C1"
    part = partition_of(old, PARTITIONS)
    new = next(k for k in (f"C{n}".encode() for n in range(2, 99))
               if partition_of(k, PARTITIONS) == part)
    before = message(sale("C1", "e1", "2026-01-10T10:00:00+08:00", "1000"), old, offset=0)
    tick = Incoming("g.ticks", part, 0, b"tick", step.tick_message(as_of, "t"))
    first = message(sale(new.decode(), "e2", "2026-02-10T10:00:00+08:00", "1000"), new,
                    offset=1)
    store = MemoryTableStore()
    asyncio.run(processor(g, RecordingSink(), store).on_batch([before, tick, first]))
    assert stored(store, new).state.as_of == as_of, "the clock read before the tick is stale"


def test_processor_tick_reaches_only_its_partition() -> None:
    customers = MemoryTableStore()
    sink = RecordingSink()
    proc = processor(grading("stars"), sink, customers)
    keys = [f"C{n}".encode() for n in range(12)]
    for n, key in enumerate(keys):
        value = sale(key.decode(), f"e{n}", "2026-01-10T10:00:00+08:00", "1000")
        asyncio.run(proc.on_message(message(value, key)))
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    tick = Incoming("g.ticks", 1, 0, b"tick", step.tick_message(as_of, "t"))
    asyncio.run(proc.on_tick(tick))
    moved = {k for k in keys if stored(customers, k).state.as_of == as_of}
    assert moved == {k for k in keys if partition_of(k, PARTITIONS) == 1}
    assert proc.clock(1) == as_of and proc.clock(0) == NEVER


class AckRecorder:
    """Stands in for Faust's consumer: records which offsets Faust acknowledged (which
    commits nothing on the inputs: the worker's consumer commits them from SourceProgress)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


class TakeEventsStream:
    """take_events as Faust implements it: a batch is acknowledged in a ``finally``."""

    def __init__(self, batches: list[list[Any]], consumer: AckRecorder) -> None:
        self.batches = batches
        self.consumer = consumer
        self.generator: Any = None

    def take_events(self, max_: int, within: float) -> Any:
        self.generator = self._take()
        return self.generator

    async def _take(self) -> Any:
        for events in self.batches:
            try:
                yield events
            finally:
                for event in events:
                    event.message.ack(self.consumer)


class Event:
    def __init__(self, message: Any) -> None:
        self.message = message


def consumer_message(value: bytes, key: bytes, offset: int) -> Any:
    from faust.types.tuples import ConsumerMessage

    return ConsumerMessage("g.transactions", partition_of(key, PARTITIONS), offset, 0.0, 0, [],
                           key, value, None)


ALL_PARTITIONS = {("g.transactions", p) for p in range(PARTITIONS)}


class FailingSink:
    """Accepts ``good`` publishes, then the broker refuses."""

    def __init__(self, good: int) -> None:
        self.good = good

    async def publish(self, outputs: Sequence[Output]) -> None:
        if not self.good:
            raise ConnectionError("broker refused the write")
        self.good -= 1


def test_a_batch_that_fails_is_never_committed_and_crashes_the_worker() -> None:
    consumer = AckRecorder()
    batches = [[Event(consumer_message(sale("C1", f"e{n}", "2026-10-01T10:00:00+08:00"), b"C1",
                                       n))] for n in range(3)]
    stream = TakeEventsStream(batches, consumer)
    store = MemoryTableStore()
    proc = processor(grading("abc-100"), FailingSink(good=1), store)
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    tp = ("g.transactions", partition_of(b"C1", PARTITIONS))
    progress = SourceProgress(stall_after=2.0)
    progress.start(tp, 0, now=0.0)

    async def run() -> None:
        with pytest.raises(ConnectionError):
            await grade_batches(stream, proc, crash, lambda: ALL_PARTITIONS, progress)
        await stream.generator.aclose()  # as Faust's Stream.on_stop does

    asyncio.run(run())
    assert consumer.acked == [0, 1], "Faust acknowledges the failed batch too"
    assert progress.committable(tp) == 1, "only the settled batch may be committed"
    assert [type(e) for e in crashed] == [ConnectionError]
    # stored before the publish failed: a redelivered e1 republishes (next tests)
    assert set(stored(store, b"C1").state.seen) == {"e0", "e1"}


def crashed_after_storing() -> tuple[MemoryTableStore, step.Record, list[Incoming]]:
    """A worker stored C1's second sale with its outputs, then died before publishing."""
    store = MemoryTableStore()
    g = grading("abc-100")
    msgs = [message(sale("C1", f"e{n}", f"2026-10-0{n + 1}T10:00:00+08:00", amount), b"C1",
                    offset=n) for n, amount in enumerate(["100", "300000", "10"])]
    first = processor(g, FailingSink(good=1), store)
    asyncio.run(first.on_message(msgs[0]))
    with pytest.raises(ConnectionError):
        asyncio.run(first.on_message(msgs[1]))
    record = stored(store, b"C1")
    # stored with the outputs, and that the customer's Redis keys are to be written
    assert [o.topic for o in record.pending] == ["tier-changes", "customer-tiers"]
    assert record.support
    return store, record, msgs


def test_a_restarted_worker_republishes_unpublished_outputs_byte_for_byte() -> None:
    store, before, msgs = crashed_after_storing()
    sink = RecordingSink()
    restarted = processor(grading("abc-100"), sink, store)
    asyncio.run(restarted.on_message(msgs[1]))  # redelivered: a duplicate now
    assert sink.published == before.pending
    after = stored(store, b"C1")
    assert after.epoch == restarted.epoch and after.pending == before.pending
    asyncio.run(restarted.on_message(msgs[1]))  # its own record: nothing to redo
    assert sink.published == before.pending


def test_republished_outputs_come_before_a_newer_event_of_the_customer() -> None:
    # The redelivery of another topic may come after a new event: order is kept per key.
    store, before, msgs = crashed_after_storing()
    sink = RecordingSink()
    asyncio.run(processor(grading("abc-100"), sink, store).on_message(msgs[2]))
    assert sink.published[:2] == before.pending
    assert set(stored(store, b"C1").state.seen) == {"e0", "e1", "e2"}


def snapshot_sequences(outputs: Sequence[Output]) -> list[int]:
    """The abc-100 sequence of each customer-tiers output, in order."""
    return [orjson.loads(o.value)["tiers"]["abc-100"]["sequence"] for o in outputs
            if o.topic == "customer-tiers"]


def test_a_republish_never_sends_a_snapshot_older_than_one_published() -> None:
    # Issue 20: one batch graded C1 twice (sequence 1, then 2) and published both
    # snapshots; a restarted worker that republished the whole record sent 1 after 2.
    store = MemoryTableStore()
    g = grading("abc-100")
    msgs = [message(sale("C1", f"e{n}", f"2026-10-0{n + 1}T10:00:00+08:00", amount), b"C1",
                    offset=n) for n, amount in enumerate(["100", "300000"])]
    sink = RecordingSink()
    asyncio.run(processor(g, sink, store).on_batch(msgs))
    assert snapshot_sequences(sink.published) == [2]  # one snapshot a customer and batch
    changes = [o for o in sink.published if o.topic == "tier-changes"]
    asyncio.run(processor(g, sink, store).on_message(msgs[1]))  # restarted: a duplicate now
    assert snapshot_sequences(sink.published) == [2, 2], "only the latest snapshot again"
    assert [o for o in sink.published if o.topic == "tier-changes"] == changes * 2


def test_a_sweep_stops_on_a_partition_that_moved() -> None:
    # Its local store may be behind what the new owner published: nothing may come of it.
    store, before, _msgs = crashed_after_storing()
    partition = partition_of(b"C1", PARTITIONS)
    sink = RecordingSink()
    proc = processor(grading("abc-100"), sink, store)
    assert asyncio.run(proc.sweep_policies([partition], lambda _p: False)) == 0
    assert sink.published == [] and stored(store, b"C1") == before
    asyncio.run(proc.sweep_policies([partition], lambda _p: True))  # still owned
    assert sink.published == step.republished(before.pending)


def test_a_record_replaced_under_the_processor_is_read_again() -> None:
    # As after a rebalance: the table holds bytes this process did not write.
    store, before, msgs = crashed_after_storing()
    sink = RecordingSink()
    proc = processor(grading("abc-100"), sink, store)
    asyncio.run(proc.on_message(msgs[1]))
    assert sink.published == before.pending
    state = stored(store, b"C1").state
    store.data[b"C1"] = step.encode_record(state, "another-process", before.pending,
                                           before.support)
    asyncio.run(proc.on_message(msgs[1]))
    assert sink.published == before.pending * 2


def test_messages_of_partitions_no_longer_owned_are_skipped_uncommitted() -> None:
    # Taken into the batch before a rebalance moved their partition elsewhere.
    consumer = AckRecorder()
    keys = [f"C{n}".encode() for n in range(8)]
    batch = [Event(consumer_message(sale(k.decode(), f"e{n}", "2026-10-01T10:00:00+08:00"), k,
                                    n)) for n, k in enumerate(keys)]
    stream = TakeEventsStream([batch], consumer)
    store = MemoryTableStore()
    proc = processor(grading("abc-100"), RecordingSink(), store)
    owned = {("g.transactions", 0), ("g.transactions", 1)}

    async def crash(exc: BaseException) -> None:
        raise AssertionError("no crash expected")

    progress = SourceProgress(stall_after=2.0)
    for n, k in enumerate(keys):  # each partition counted from its first message here
        tp = ("g.transactions", partition_of(k, PARTITIONS))
        if progress.committable(tp) is None:
            progress.start(tp, n, now=0.0)
    firsts = dict(progress.next)

    asyncio.run(grade_batches(stream, proc, crash, lambda: owned, progress))
    mine = {n for n, k in enumerate(keys) if partition_of(k, PARTITIONS) in (0, 1)}
    assert 0 < len(mine) < len(keys)
    assert sorted(consumer.acked) == list(range(len(keys))), "Faust acknowledges them all"
    assert set(store.data) == {keys[n] for n in mine}
    for tp, first in firsts.items():
        expected = first  # one past the run of consecutive offsets graded from the first
        graded = sorted(n for n in mine if partition_of(keys[n], PARTITIONS) == tp[1])
        for n in graded:
            expected += n == expected
        assert progress.committable(tp) == expected


SECRET = "amount 98765.43"  # what an exception's message might say; never logged


def poisoned(real: Any, bad_id: str) -> Any:
    """``real`` (apply_event), except that event ``bad_id`` half-changes the state, then raises."""
    def apply(state: Any, event: Any, *args: Any) -> Any:
        if event.event_id == bad_id:
            state.lifetime_sales += 123
            state.seen[bad_id] = event.ts
            raise RuntimeError(SECRET)
        return real(state, event, *args)
    return apply


def test_a_message_that_makes_grading_raise_is_dead_lettered(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    g = grading("stars")
    msgs = [message(sale(c, eid, f"2026-10-0{n}T10:00:00+08:00", "1000"), c.encode(), offset=n)
            for n, (c, eid) in enumerate([("C1", "e1"), ("C2", "x1"), ("C1", "e2"),
                                          ("C1", "boom"), ("C1", "e3")], start=1)]
    clean_store = MemoryTableStore()
    asyncio.run(processor(g, RecordingSink(), clean_store).on_batch(
        [m for m in msgs if m.offset != 4]))
    monkeypatch.setattr(step, "apply_event", poisoned(step.apply_event, "boom"))
    sink, store = RecordingSink(), MemoryTableStore()
    asyncio.run(processor(g, sink, store).on_batch(msgs))
    [dead] = [orjson.loads(o.value) for o in sink.published if o.topic == "dead-letters"]
    assert (dead["code"], dead["offset"]) == ("internal_error", 4)
    assert {k: dump_state(stored(store, k).state) for k in store.data} == \
        {k: dump_state(stored(clean_store, k).state) for k in clean_store.data}
    assert "RuntimeError" in caplog.text and "98765" not in caplog.text


def test_a_customer_whose_tick_raises_keeps_its_stored_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    g = grading("stars")
    part = partition_of(b"C1", PARTITIONS)
    keys = [k for k in (f"C{n}".encode() for n in range(1, 40))
            if partition_of(k, PARTITIONS) == part][:3]
    store = MemoryTableStore()
    proc = processor(g, RecordingSink(), store)
    asyncio.run(proc.on_batch([message(sale(k.decode(), f"e{n}", "2026-01-10T10:00:00+08:00",
                                            "1000"), k, offset=n)
                               for n, k in enumerate(keys)]))
    before = dump_state(stored(store, keys[0]).state)
    real = step.apply_tick

    def apply_tick(state: Any, *args: Any) -> Any:
        if state.customer_id == keys[0].decode():
            state.lifetime_sales += 1
            raise RuntimeError("a defect")
        return real(state, *args)

    monkeypatch.setattr(step, "apply_tick", apply_tick)
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    asyncio.run(proc.on_batch([Incoming("g.ticks", part, 9, None,
                                        step.tick_message(as_of, "t"))]))
    assert dump_state(stored(store, keys[0]).state) == before
    assert [stored(store, k).state.as_of == as_of for k in keys] == [False, True, True]
    assert proc.clock(part) == as_of


def backlog(msg: Incoming) -> Incoming:
    """The same message, produced long ago: the worker is behind (app.BEHIND_AFTER)."""
    return Incoming(msg.topic, msg.partition, msg.offset, msg.key, msg.value, 1.0)


def snapshots(outputs: Sequence[Output]) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in outputs if o.topic == "customer-tiers"]


def test_a_backlog_defers_the_tier_at_risk_and_refreshes_it_once_caught_up() -> None:
    """Issue 23: while behind, a customer's drops_on is not computed at each batch; its
    customer-tiers record waits for the one refresh once the worker is idle."""
    g, store, sink = grading("stars"), MemoryTableStore(), RecordingSink()
    proc = processor(g, sink, store)
    for n, (day, amount) in enumerate([("2026-03-10", "1000"), ("2026-04-10", "5000")]):
        msg = message(sale("C1", f"e{n}", f"{day}T10:00:00+08:00", amount), b"C1", offset=n)
        asyncio.run(proc.on_batch([backlog(msg)]))
    assert [o.topic for o in sink.published] == ["tier-changes", "tier-changes"]
    assert stored(store, b"C1").state.risk_stale and b"C1" in proc.stale
    assert asyncio.run(proc.refresh_stale()) == 0  # just behind: the backlog goes first
    proc.behind_at -= BEHIND_AFTER  # a second later, idle
    assert asyncio.run(proc.refresh_stale()) == 1
    [snapshot] = snapshots(sink.published)
    assert snapshot["tiers"]["stars"] == {"tier": "4-star", "score": 600, "sequence": 2,
                                          "pinned": False, "drops_on": "2027-04-01",
                                          "to_tier": "unrated"}
    assert not stored(store, b"C1").state.risk_stale and not proc.stale
    assert asyncio.run(proc.refresh_stale()) == 0


def test_a_refresh_after_a_backlog_stores_what_a_whole_encoding_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: a deferred customer, refreshed once the worker is idle, is stored by
    encoding only its tier at risk again (codec.redump_tail): the record holds the same
    bytes as encoding its whole state, and it loads to the state the worker holds."""
    g, store, sink = grading("abc-100", "sabcd-weighted", "stars"), MemoryTableStore(), \
        RecordingSink()
    proc = processor(g, sink, store)
    tails: list[bytes | None] = []
    real = codec.redump_tail

    def redump_tail(*args: Any) -> bytes | None:
        tails.append(real(*args))
        return tails[-1]

    monkeypatch.setattr(codec, "redump_tail", redump_tail)
    days = ["2026-03-10", "2026-05-02", "2026-08-20", "2026-11-01"]
    msgs = [message(sale(f"C{n}", f"e{n}-{d}", f"{day}T10:00:00+08:00", str(900 * n * (d + 1))),
                    f"C{n}".encode(), offset=10 * n + d)
            for n in range(1, 9) for d, day in enumerate(days[:1 + n % 4])]
    asyncio.run(proc.on_batch([backlog(m) for m in msgs]))
    assert all(stored(store, k).state.risk_stale for k in store.data)
    before = {k: v.split(b"\n", 1)[1] for k, v in store.data.items()}
    proc.behind_at -= BEHIND_AFTER
    assert asyncio.run(proc.refresh_stale()) == len(store.data) == 8
    assert len(tails) == 8 and None not in tails  # every one stored by its tail
    for key, value in store.data.items():
        body = value.split(b"\n", 1)[1]
        state = proc.decoded[key].state
        assert not state.risk_stale and set(state.risk) == set(state.tiers)
        assert body == dump_state(state) != before[key]
        assert dump_state(stored(store, key).state) == body
    assert len(snapshots(sink.published)) == 8


class FailingOnce(MemoryTableStore):
    """A table whose next write fails once (``fail`` set)."""

    fail = False

    async def put_many(self, writes: Sequence[tuple[int, bytes, bytes]]) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("the table write failed")
        await super().put_many(writes)


class SinkFailingOnce(RecordingSink):
    """A sink whose next publish fails once (``fail`` set), after nothing went out."""

    fail = False

    async def publish(self, outputs: Sequence[Output]) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("the broker refused the outputs")
        await super().publish(outputs)


def deferred(store: MemoryTableStore, sink: Any) -> Processor:
    """A Processor that graded C1 in a backlog: its tier at risk deferred."""
    proc = processor(grading("stars"), sink, store)
    msg = message(sale("C1", "e0", "2026-03-10T10:00:00+08:00", "1000"), b"C1")
    asyncio.run(proc.on_batch([backlog(msg)]))
    assert stored(store, b"C1").state.risk_stale and b"C1" in proc.stale
    proc.behind_at -= BEHIND_AFTER
    return proc


def test_a_refresh_whose_store_failed_is_done_again() -> None:
    """The timer's refresh fails (and is retried by the app): the customer stays deferred,
    so the next refresh stores it and sends its snapshot."""
    store, sink = FailingOnce(), RecordingSink()
    proc = deferred(store, sink)
    store.fail = True
    with pytest.raises(ConnectionError):
        asyncio.run(proc.refresh_stale())
    assert b"C1" in proc.stale and not snapshots(sink.published)
    assert asyncio.run(proc.refresh_stale()) == 1
    assert not stored(store, b"C1").state.risk_stale
    [snapshot] = snapshots(sink.published)
    assert snapshot["tiers"]["stars"]["drops_on"] == "2027-03-01"


def test_a_refresh_whose_publish_failed_is_published_again() -> None:
    """Stored, then the broker refused the outputs: the record holds them, and this
    process publishes them again when it next loads the customer, as after a restart."""
    store, sink = MemoryTableStore(), SinkFailingOnce()
    proc = deferred(store, sink)
    sink.fail = True
    with pytest.raises(ConnectionError):
        asyncio.run(proc.refresh_stale())
    record = stored(store, b"C1")
    assert not record.state.risk_stale and snapshots(record.pending)
    assert not snapshots(sink.published)
    asyncio.run(proc.refresh_stale())
    assert snapshots(sink.published) == snapshots(record.pending)


def test_a_sweep_that_fails_leaves_no_half_changed_state_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A defect in the roll-out's regrade changes a state in place, then raises: the
    state is not used again as stored (a deferred refresh stores what the table holds)."""
    store = MemoryTableStore()
    proc = deferred(store, RecordingSink())
    before = stored(store, b"C1").state.lifetime_sales

    def defect(state: Any, *_args: Any) -> Any:
        state.lifetime_sales += 7
        raise RuntimeError("a defect")

    monkeypatch.setattr(step, "handle_policy", defect)
    monkeypatch.setattr(processor_module, "policy_stale", lambda *_args: True)
    with pytest.raises(RuntimeError):
        asyncio.run(proc.sweep_policies(range(PARTITIONS)))
    monkeypatch.undo()
    assert asyncio.run(proc.refresh_stale()) == 1
    body = store.data[b"C1"].split(b"\n", 1)[1]
    assert stored(store, b"C1").state.lifetime_sales == before
    assert body == dump_state(proc.decoded[b"C1"].state)


def test_a_deferred_tier_at_risk_survives_a_restart_and_a_tick_refreshes_it() -> None:
    g, store = grading("stars"), MemoryTableStore()
    msg = message(sale("C1", "e0", "2026-03-10T10:00:00+08:00", "1000"), b"C1")
    asyncio.run(processor(g, RecordingSink(), store).on_batch([backlog(msg)]))
    sink = RecordingSink()
    restarted = processor(g, sink, store)  # another process: its stale set is empty
    assert not restarted.stale and stored(store, b"C1").state.risk_stale
    as_of = stored(store, b"C1").state.as_of  # a tick that moves nothing still refreshes
    tick = message(step.tick_message(as_of, "t1"), None, topic="g.ticks",
                   partition=partition_of(b"C1", PARTITIONS))
    asyncio.run(restarted.on_batch([tick]))
    [snapshot] = snapshots(sink.published)
    assert snapshot["tiers"]["stars"]["drops_on"] == "2027-03-01"
    assert not stored(store, b"C1").state.risk_stale


class RecordingQueues:
    """Stands in for grader.sinks.redis.SupportQueues: the customers written, in order."""

    def __init__(self) -> None:
        self.written: list[str] = []

    async def write(self, states: Sequence[Any]) -> None:
        self.written.extend(state.customer_id for state in states)


def ticket(customer: str, event_id: str, when: str) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "ticket_opened", "customer_id": customer,
                         "occurred_at": when, "ticket_id": "T1", "subject": "help"})


def with_queues(customers: MemoryTableStore, sink: Any, queues: RecordingQueues) -> Processor:
    return Processor(grading("abc-100"), customers, MemoryTableStore(), sink, "g.ticks",
                     PARTITIONS, support=queues)  # type: ignore[arg-type]


def test_a_ticket_writes_redis_and_publishes_nothing() -> None:
    outcome = step.handle_event(message(ticket("C1", "t1", "2026-11-01T10:00:00+08:00"), b"C1",
                                        topic="g.tickets"),
                                lambda _key: None, NEVER, grading("abc-100"), NOW, PARTITIONS)
    assert outcome.status == "applied" and outcome.outputs == [] and outcome.support
    store, sink, queues = MemoryTableStore(), RecordingSink(), RecordingQueues()
    msg = message(ticket("C1", "t1", "2026-11-01T10:00:00+08:00"), b"C1", topic="g.tickets")
    asyncio.run(with_queues(store, sink, queues).on_message(msg))
    assert queues.written == ["C1"] and sink.published == []
    record = stored(store, b"C1")
    assert record.pending == [] and record.support


def test_a_record_that_owed_redis_a_write_is_written_again_by_the_next_process() -> None:
    # The first process stored C1, then stopped before writing Redis: its record says so.
    store, sink = MemoryTableStore(), RecordingSink()
    msg = message(ticket("C1", "t1", "2026-11-01T10:00:00+08:00"), b"C1", topic="g.tickets")
    asyncio.run(processor(grading("abc-100"), sink, store).on_message(msg))
    assert stored(store, b"C1").support
    queues = RecordingQueues()
    restarted = with_queues(store, sink, queues)
    asyncio.run(restarted.on_message(msg))  # redelivered: a duplicate now
    assert queues.written == ["C1"] and sink.published == []
    asyncio.run(restarted.on_message(msg))  # its own record: nothing to redo
    assert queues.written == ["C1"]


@pytest.mark.parametrize("support", [False, True])
def test_a_record_keeps_its_format_with_the_support_mark(support: bool) -> None:
    state = step.handle_event(message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1"),
                              lambda _key: None, NEVER, grading("abc-100"), NOW,
                              PARTITIONS).state
    assert state is not None
    pending = [Output("tier-changes", b"C1", b'{"a":1}'), Output("customer-tiers", b"C1", b"{}")]
    value = step.encode_record(state, "p1", pending, support)
    head = orjson.loads(value.partition(b"\n")[0])
    marks = [["@support", ""]] if support else []
    assert head["pending"] == [["tier-changes", '{"a":1}'], ["customer-tiers", "{}"], *marks]
    record = step.decode_record(value)
    assert record.pending == pending and record.support is support
    # as an earlier version stored it: a mark after each message's outputs
    head["pending"] = [["tier-changes", '{"a":1}'], ["@support", ""], ["customer-tiers", "{}"],
                       ["@support", ""]]
    old = step.decode_record(orjson.dumps(head) + b"\n" + value.partition(b"\n")[2])
    assert old.pending == pending and old.support
