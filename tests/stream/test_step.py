"""The worker's per-message logic without Kafka: grader.stream.step and the Processor.

The Processor is given plain dicts for its tables and a fake sink, as the
house style asks (swap the transport, don't patch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from grader.clock import parse_instant
from grader.codec import load_state
from grader.core import Grading
from grader.sinks.kafka import RecordingSink
from grader.stream import step
from grader.stream.app import Processor, partition_of
from grader.stream.step import Incoming, Output
from tests.conftest import grading

NOW = parse_instant("2026-11-24T00:00:00Z")
PARTITIONS = 4


def sale(customer: str, event_id: str, when: str, amount: str = "30000") -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "sale", "customer_id": customer,
                         "occurred_at": when, "amount": amount, "currency": "CNY"})


def message(value: bytes, key: bytes | None, topic: str = "g.transactions",
            partition: int | None = None, offset: int = 0) -> Incoming:
    if partition is None:
        partition = partition_of(key, PARTITIONS) if key else 0
    return Incoming(topic, partition, offset, key, value)


def test_first_sale_grades_and_snapshots() -> None:
    outcome = step.handle_event(message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1"),
                                None, 0, grading("abc-100", "stars"), NOW,
                                partition_of(b"C1", PARTITIONS))
    assert outcome.status == "applied"
    assert [o.topic for o in outcome.outputs] == ["tier-changes", "tier-changes",
                                                  "customer-tiers"]
    assert all(o.key == b"C1" for o in outcome.outputs)
    snap = orjson.loads(outcome.outputs[-1].value)
    assert snap["tiers"]["abc-100"]["tier"] == "B"  # 2500 a month: 30 + paid at once: 30
    assert outcome.state is not None and load_state(outcome.state).customer_id == "C1"


def test_duplicate_changes_nothing() -> None:
    g = grading("abc-100")
    msg = message(sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1")
    first = step.handle_event(msg, None, 0, g, NOW, msg.partition)
    again = step.handle_event(msg, first.state, 0, g, NOW, msg.partition)
    assert (again.status, again.outputs, again.state) == ("duplicate", [], None)


@pytest.mark.parametrize(("value", "key", "topic", "partition", "code"), [
    (b"{not json", b"C1", "g.transactions", None, "bad_json"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C2", "g.transactions", None, "wrong_key"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), None, "g.transactions", 0, "wrong_key"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1", "g.interactions", None,
     "wrong_topic"),
    (sale("C1", "e1", "2026-11-01T10:00:00+08:00"), b"C1", "g.transactions",
     (partition_of(b"C1", PARTITIONS) + 1) % PARTITIONS, "wrong_partition"),
    (sale("C1", "e1", "2026-11-24T01:00:00Z"), b"C1", "g.transactions", None,
     "future_timestamp"),
])
def test_rejections_become_dead_letters(value: bytes, key: bytes | None, topic: str,
                                        partition: int | None, code: str) -> None:
    msg = message(value, key, topic, partition, offset=7)
    owner = partition_of(key, PARTITIONS) if key else None
    outcome = step.handle_event(msg, None, 0, grading("abc-100"), NOW, owner)
    assert outcome.status == "rejected" and outcome.state is None
    [dead] = outcome.outputs
    record = orjson.loads(dead.value)
    assert (dead.topic, dead.key) == ("dead-letters", key)
    assert (record["code"], record["topic"], record["partition"], record["offset"]) == \
        (code, topic, msg.partition, 7)
    assert record["raw"] == value.decode()


def test_binary_garbage_is_kept_as_base64() -> None:
    outcome = step.handle_event(message(b"\xff\xfe", b"C1"), None, 0, grading(), NOW, None)
    assert orjson.loads(outcome.outputs[0].value)["raw_base64"] == "//4="


def test_tick_is_idempotent_and_clock_reaches_late_customers() -> None:
    g = grading("stars")
    msg = message(sale("C1", "e1", "2026-01-10T10:00:00+08:00", "1000"), b"C1")
    stored = step.handle_event(msg, None, 0, g, NOW, msg.partition).state
    assert stored is not None
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    ticked = step.handle_tick(stored, as_of, g, NOW)
    assert ticked.status == "applied" and load_state(ticked.state or b"").as_of == as_of
    assert step.handle_tick(ticked.state or b"", as_of, g, NOW).status == "unchanged"
    # A customer first seen after the partition's tick is graded as of that tick.
    late = message(sale("C1", "e2", "2026-02-10T10:00:00+08:00", "1000"), b"C1")
    first = step.handle_event(late, None, as_of, g, NOW, late.partition)
    assert load_state(first.state or b"").as_of == as_of


def test_parse_tick() -> None:
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    assert step.parse_tick(step.tick_message(as_of, "t1")) == as_of
    rejected = step.parse_tick(b'{"as_of": 5}')
    assert isinstance(rejected, step.Rejection) and rejected.code == "missing_field"


class CheckingSink:
    """Asserts the table does not yet hold the state whose outputs it is publishing."""

    def __init__(self, table: dict[bytes, bytes]) -> None:
        self.table = table
        self.published: list[Output] = []

    async def publish(self, outputs: Sequence[Output]) -> None:
        for out in outputs:
            if out.topic == "customer-tiers":
                stored = self.table.get(out.key or b"")
                seq = orjson.loads(out.value)["tiers"]["abc-100"]["sequence"]
                assert stored is None or load_state(stored).tiers["abc-100"].sequence < seq
        self.published.extend(outputs)


def processor(g: Grading, sink: Any, customers: dict[bytes, bytes]) -> Processor:
    return Processor(g, customers, {}, sink, "g.ticks", PARTITIONS)


def test_processor_publishes_before_it_stores() -> None:
    customers: dict[bytes, bytes] = {}
    sink = CheckingSink(customers)
    proc = processor(grading("abc-100"), sink, customers)
    for n, (amount, when) in enumerate([("100", "2026-10-01"), ("300000", "2026-10-02")]):
        msg = message(sale("C1", f"e{n}", f"{when}T10:00:00+08:00", amount), b"C1", offset=n)
        asyncio.run(proc.on_message(msg))
    assert [o.topic for o in sink.published].count("customer-tiers") == 2
    assert load_state(customers[b"C1"]).tiers["abc-100"].tier == "A"


def test_processor_tick_reaches_only_its_partition() -> None:
    customers: dict[bytes, bytes] = {}
    sink = RecordingSink()
    proc = processor(grading("stars"), sink, customers)
    keys = [f"C{n}".encode() for n in range(12)]
    for n, key in enumerate(keys):
        value = sale(key.decode(), f"e{n}", "2026-01-10T10:00:00+08:00", "1000")
        asyncio.run(proc.on_message(message(value, key)))
    as_of = parse_instant("2026-11-22T00:00:00+08:00")
    tick = Incoming("g.ticks", 1, 0, b"tick", step.tick_message(as_of, "t"))
    asyncio.run(proc.on_tick(tick))
    moved = {k for k in keys if load_state(customers[k]).as_of == as_of}
    assert moved == {k for k in keys if partition_of(k, PARTITIONS) == 1}
    assert proc.clock(1) == as_of and proc.clock(0) == 0
