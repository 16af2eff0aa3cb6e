# ruff: noqa: RUF001  (non-ASCII digits are among the junk)
"""No message stops a running worker, and any standard producer's events are graded.

A flood of malformed messages (null values and keys, empty and non-UTF-8
bytes, every JSON type in every field, a message of about 1 MB, bad ticks)
is sent to a live worker among valid events: the worker stays up, commits
every offset, dead-letters exactly the messages the parser rejects, and
grades the valid events to the offline replay's tiers; a restart gets past
all of it. Then librdkafka (confluent-kafka at its defaults: CRC32 partitioner)
produces a generated file: every event is graded through the repartition
topic.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from grader.core import step
from grader.core.clock import NEVER
from grader.core.events import TOPIC_OF_TYPE
from grader.core.grading import Grading
from grader.core.topology import partition_of
from grader.settings import resolve_policy
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_stream import (
    POLICIES,
    dead_letter_codes,
    events_file,
    expected,
    final_tick_equals_replay,
    write_lines,
)

pytestmark = pytest.mark.integration

INPUTS = ("transactions", "interactions", "overrides", "tickets")
SALE = {"event_id": "fz", "type": "sale", "customer_id": "FZ1", "amount": "10",
        "currency": "CNY", "occurred_at": "2026-05-01T10:00:00+08:00"}
# (No valid timestamp older than the others' horizon: arriving late, it would be expired
# in the stream but applied by replay; tests/unit covers dates before 1970.)
JUNK: list[Any] = [None, True, 0, -1, 1e308, "", "x" * 300, "١٢٣", "２０２６-05-01T00:00:00Z",
                   [], ["sale"], {}, {"a": [1, {"b": None}]}, "0001-01-01T00:00:00Z",
                   "9999-12-31T23:59:59-23:59", 10**30]


def fuzz_messages(seed: int, count: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """(topic suffix, key, value): a sale with random fields replaced by junk, or raw junk."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes | None, bytes | None]] = [
        ("transactions", b"FZ1", None), ("interactions", None, None),
        ("overrides", b"", b""), ("tickets", b"\xff\xfe", b"\xff\xfe\x00"),
        ("transactions", b"FZ2", b'{"type": ["sale"], "customer_id": "FZ2"}'),
        ("interactions", b"FZ3", b'{"type": {"a": 1}}'),
        ("transactions", b"FZ4", b'{"event_id": "' + b"x" * 1_000_000 + b'"}'),
    ]
    for n in range(count):
        obj: dict[str, Any] = {**SALE, "event_id": f"fz-{n}",
                               "customer_id": f"FZ{rng.randrange(20)}"}
        for name in rng.sample(sorted(obj), rng.randint(1, 3)):
            obj[name] = rng.choice(JUNK)
        value = json.dumps(obj).encode() if rng.random() < 0.9 else rng.randbytes(rng.randrange(40))
        key = rng.choice([None, b"FZ1", str(obj.get("customer_id")).encode()])
        out.append((rng.choice(INPUTS), key, value))
    return out


def send_raw(stream: Stream, messages: list[tuple[str, bytes | None, bytes | None]],
             partitions: list[int]) -> None:
    """Send each (topic suffix, key, value) to its partition; librdkafka sends a message
    with neither key nor value, which kafka-python refuses."""
    producer = confluent_kafka.Producer({"bootstrap.servers": stream.broker.bootstrap,
                                         "message.max.bytes": 2_000_000})
    for (suffix, key, value), partition in zip(messages, partitions, strict=True):
        producer.produce(stream.prefix + suffix, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def committed_all(stream: Stream, sent: Counter[tuple[str, int]]) -> bool:
    """Whether the worker group committed every message ``sent`` ((topic suffix, partition)
    -> count, on partitions that were empty before). Counted here rather than read from
    the broker: tansu's end offsets are wrong for batches (docs/tansu.md)."""
    consumer = KafkaConsumer(bootstrap_servers=stream.broker.bootstrap,
                             group_id=f"{stream.prefix}worker", enable_auto_commit=False)
    try:  # committed() fetches the group's offsets without joining it
        return all(consumer.committed(TopicPartition(stream.prefix + topic, part)) == count
                   for (topic, part), count in sent.items())
    finally:
        consumer.close()


def rejected_offline(messages: list[tuple[str, bytes | None, bytes | None]],
                     partitions: list[int]) -> list[bool]:
    """Whether the worker's step rejects each message (rejection needs no customer state)."""
    grading = Grading(tuple(resolve_policy(p, ROOT / "config") for p in POLICIES))
    now = time.time_ns() // 1000
    return [step.handle_event(step.Incoming("g." + suffix, part, 0, key, value),
                              lambda _key: None, NEVER, grading, now, 4).status == "rejected"
            for (suffix, key, value), part in zip(messages, partitions, strict=True)]


def test_no_message_stops_the_worker(stream: Stream, tmp_path: Path) -> None:
    fuzz = fuzz_messages(seed=32, count=300)
    parts = [partition_of(key, 4) if key else n % 4 for n, (_t, key, _v) in enumerate(fuzz)]
    rejected = rejected_offline(fuzz, parts)
    valid_fuzz = [value for (_t, _k, value), bad in zip(fuzz, rejected, strict=True)
                  if not bad and value is not None]
    lines = events_file(tmp_path / "events.jsonl", customers=30, events=600, seed=31)
    want, dead = expected(lines + valid_fuzz)
    worker = stream.start_worker()
    worker.wait_ready()
    send_raw(stream, fuzz, parts)
    ticks = [None, b"", b"[]", b'{"as_of": ["x"]}', b'{"as_of": "9999-01-01T00:00:00Z"}',
             b'{"as_of": "2999-01-01T00:00:00Z"}', b"\xff"]
    send_raw(stream, [("ticks", None, value) for value in ticks], [0, 1, 2, 3, 0, 1, 2])
    sent = Counter([(t, p) for (t, _k, _v), p in zip(fuzz, parts, strict=True)]
                   + [("ticks", p) for p in (0, 1, 2, 3, 0, 1, 2)])
    wait_for(lambda: committed_all(stream, sent), 60,
             "every input and tick offset to be committed")
    assert worker.process.poll() is None, worker.log()[-3000:]
    # A message off its customer's partition is committed once forwarded; its dead letter,
    # if any, comes when the repartition topic is graded: wait for the count, then check it.
    want_letters = sum(rejected) + len(ticks)

    def all_letters() -> list[Any] | None:
        got = [orjson.loads(r.value) for r in stream.read("dead-letters")]
        return got if len(got) >= want_letters else None

    letters = wait_for(all_letters, 60, "every dead letter")
    assert len(letters) == want_letters
    assert "internal_error" not in {d["code"] for d in letters}
    assert any(d.get("raw_truncated") for d in letters), "the 1 MB message is dead-lettered"
    assert "rejected " in worker.log(), "each rejection is logged"
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    assert worker.stop() == 0
    restarted = stream.start_worker()  # the same data dir and group: nothing is read again
    restarted.wait_ready(45)
    final_tick_equals_replay(stream, lines + valid_fuzz, want)
    assert {(d["raw"], d["code"]) for d in dead} <= set(dead_letter_codes(stream))
    wait_for(lambda: len(stream.read("dead-letters")) >= len(letters) + len(dead), 60,
             "the produced file's dead letters")
    assert len(stream.read("dead-letters")) == len(letters) + len(dead)
    assert "Traceback" not in worker.log() + restarted.log()
    assert restarted.stop() == 0


def test_a_librdkafka_producer_at_its_defaults(stream: Stream, tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=40, events=800, seed=33)
    want, dead = expected(lines)
    worker = stream.start_worker()
    worker.wait_ready()
    producer = confluent_kafka.Producer({"bootstrap.servers": stream.broker.bootstrap})
    moved = 0
    for n, line in enumerate(lines):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        etype = obj.get("type") if isinstance(obj, dict) else None
        topic = TOPIC_OF_TYPE.get(etype, "transactions") if isinstance(etype, str) else \
            "transactions"
        customer = obj.get("customer_id") if isinstance(obj, dict) else None
        key = customer.encode() if isinstance(customer, str) and n % 10 else None  # some unkeyed
        producer.produce(stream.prefix + topic, value=line, key=key)
        moved += key is not None and partition_of(key, 4) != crc32_partition(key)
    assert producer.flush(30) == 0
    del producer  # librdkafka's threads would go on trying to reach the broker
    assert moved > len(lines) / 2, "most keyed events land off their murmur2 partition"
    final_tick_equals_replay(stream, lines, want)
    codes = {code for _raw, code in dead_letter_codes(stream)}
    assert "wrong_partition" not in codes and "wrong_key" not in codes
    assert set(dead_letter_codes(stream)) == {(d["raw"], d["code"]) for d in dead}
    assert len(stream.read("repartition")) >= moved
    assert worker.stop() == 0


def crc32_partition(key: bytes) -> int:
    """librdkafka's default partitioner (consistent_random) for a keyed message."""
    import zlib

    return zlib.crc32(key) % 4


def test_grader_produce_routes_a_type_that_is_a_list(stream: Stream, tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    write_lines(path, [orjson.dumps({**SALE, "type": ["sale"]}), orjson.dumps(SALE)])
    done = stream.grader("produce", str(path))
    assert done.returncode == 0, done.stderr
    assert "produced 2 lines" in done.stderr  # and the dead letter acknowledged
    codes = [orjson.loads(r.value)["code"] for r in stream.read("dead-letters")]
    assert codes == ["bad_field"]
