"""A real Apache Kafka 4.x broker (grader.devtools.kafkabroker), checked with kafka-python.

One broker for the module. Without java (or without both mvn and the cached
jars) the tests skip with the reason, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from grader.devtools.kafkabroker import KafkaBroker, kafka_available, start_kafka
from grader.devtools.services import ServiceError, free_port
from tests.conftest import in_ci

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = [f"customer-{n}" for n in range(8)]


@pytest.fixture(scope="module")
def kafka() -> Iterator[KafkaBroker]:
    """One Kafka broker for this module, or skip (fail under CI) when it cannot run."""
    reason = kafka_available()
    if reason:
        if in_ci():
            pytest.fail(f"Kafka cannot run on this CI machine: {reason}")
        pytest.skip(reason)
    with start_kafka() as broker:
        yield broker


@pytest.fixture(scope="module")
def admin(kafka: KafkaBroker) -> Iterator[Any]:
    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=10_000)
    yield client
    client.close()


@pytest.fixture(scope="module")
def topic(admin: Any) -> str:
    """A new topic with 4 partitions, visible in Metadata with a leader for each."""
    name = f"orders-{uuid.uuid4().hex[:8]}"
    spec = {name: {"num_partitions": PARTITIONS, "replication_factor": 1}}
    admin.create_topics(spec, wait_for_metadata=True)
    return name


@pytest.fixture(scope="module")
def produced(kafka: KafkaBroker, topic: str) -> list[tuple[str, str]]:
    """40 keyed records (key, value), sent in this order and acknowledged by the broker."""
    records = [(KEYS[n % len(KEYS)], f"event-{n}") for n in range(40)]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key.encode(), value=value.encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    return records


def test_broker_addresses(kafka: KafkaBroker) -> None:
    assert kafka.running
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.url == f"kafka://127.0.0.1:{kafka.port}"
    assert kafka.controller_port != kafka.port


def test_topic_has_four_partitions_led_by_the_broker(admin: Any, topic: str) -> None:
    (described,) = admin.describe_topics([topic])
    assert described["error_code"] == 0
    partitions = sorted(described["partitions"], key=lambda p: p["partition_index"])
    assert [p["partition_index"] for p in partitions] == list(range(PARTITIONS))
    assert {p["leader_id"] for p in partitions} == {1}


def test_keyed_messages_round_trip(
    kafka: KafkaBroker, topic: str, produced: list[tuple[str, str]]
) -> None:
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records = _poll(consumer, len(produced))
    finally:
        consumer.close()
    got = [(r.key.decode(), r.value.decode(), r.partition) for r in records]
    assert sorted((k, v) for k, v, _ in got) == sorted(produced)
    partition_of: dict[str, set[int]] = {}
    for key, _, partition in got:
        partition_of.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in partition_of.values()), partition_of  # a key, one partition
    assert len(set().union(*partition_of.values())) > 1  # 8 keys spread over partitions
    for key in KEYS:  # and within a key, the order it was sent in
        assert [v for k, v, _ in got if k == key] == [v for k, v in produced if k == key]


def test_consumer_group_commit_round_trips(
    kafka: KafkaBroker, admin: Any, topic: str, produced: list[tuple[str, str]]
) -> None:
    group = f"grader-test-{uuid.uuid4().hex[:8]}"
    first = _group_consumer(kafka, group, topic)
    try:
        assert len(_poll(first, len(produced))) == len(produced)
        first.commit()
        committed = {p: first.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        first.close()
    assert None not in committed.values()
    assert sum(v or 0 for v in committed.values()) == len(produced)
    offsets = admin.list_group_offsets({group: None})[group]
    assert {tp.partition: meta.offset for tp, meta in offsets.items()} == committed

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    producer.send(topic, key=b"late", value=b"after-commit").get(timeout=30)
    producer.close()
    second = _group_consumer(kafka, group, topic)
    try:  # resumes from the committed offsets: only the new record
        assert [r.value for r in _poll(second, 1, settle=1.0)] == [b"after-commit"]
    finally:
        second.close()


def test_port_already_in_use_is_refused(kafka: KafkaBroker) -> None:
    with pytest.raises(ServiceError, match="not free"):
        start_kafka(port=kafka.port)


def test_stop_leaves_no_java_process(kafka: KafkaBroker) -> None:
    port = free_port()
    with start_kafka(port=port) as other:
        assert other.port == port
        assert other.running
        pid, workdir = other.pid, other.workdir
        assert workdir in _java_workdirs()
        started = time.monotonic()
    assert time.monotonic() - started < 15
    assert not other.running
    assert other.process.returncode is not None
    assert not _pid_alive(pid)
    assert workdir not in _java_workdirs()
    assert not workdir.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    other.stop()  # a second stop is harmless
    assert kafka.running  # the other broker is untouched


def _group_consumer(kafka: KafkaBroker, group: str, topic: str) -> Any:
    return KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def _poll(consumer: Any, count: int, timeout: float = 30, settle: float = 0.0) -> list[Any]:
    """Records until *count* arrived (then *settle* s more, to catch extras) or *timeout*."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records += batch
    settle_until = time.monotonic() + settle
    while time.monotonic() < settle_until:
        for batch in consumer.poll(timeout_ms=200).values():
            records += batch
    assert len(records) >= count, f"got {len(records)} of {count} records in {timeout}s"
    return records


def _java_workdirs() -> set[Path]:
    """The ``grader-kafka-*`` work dirs named on the command line of a running process."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            text = arg.decode(errors="replace")
            if "grader-kafka-" in text and text.endswith("server.properties"):
                found.add(Path(text).parent)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
