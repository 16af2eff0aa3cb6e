"""grader.devtools.services against the real tansu and redis-server binaries (nothing mocked).

A server that cannot start raises ServiceError from the fixture, so every test
here errors loudly instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import aiokafka
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from grader.devtools.services import (
    Broker,
    RedisServer,
    ServiceError,
    free_port,
    start_broker,
    start_redis,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """tansu alone: these tests are about its launcher (the suite's ``broker`` is either)."""
    with start_broker() as running:
        yield running


@pytest.fixture
def admin(broker: Broker) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield client
    client.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def produce(broker: Broker, topic: str, records: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """Send keyed records, wait for all acks; return each key's partition."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    futures = [(key, producer.send(topic, key=key, value=value)) for key, value in records]
    partitions = {key: future.get(timeout=10).partition for key, future in futures}
    producer.close()
    return partitions


def consume_all(broker: Broker, topic: str, expected: int) -> list[tuple[int, bytes, bytes]]:
    """Read every partition of *topic* from the start until *expected* records arrived."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + 10
    while len(seen) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            seen += [(r.partition, r.key, r.value) for r in batch]
    consumer.close()
    return seen


def test_broker_addresses(broker: Broker) -> None:
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.url == f"kafka://127.0.0.1:{broker.port}"
    assert broker.running


def test_create_topic_with_four_partitions(broker: Broker, admin: KafkaAdminClient) -> None:
    topic = unique("orders")
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    [described] = admin.describe_topics([topic])
    assert described["error_code"] == 0
    assert sorted(p["partition_index"] for p in described["partitions"]) == [0, 1, 2, 3]


def test_create_compacted_topic(broker: Broker, admin: KafkaAdminClient) -> None:
    topic = unique("tiers")
    config = {"cleanup.policy": "compact"}
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    # tansu reports the config with source DEFAULT_CONFIG, so ask for "all".
    resource = ConfigResource(ConfigResourceType.TOPIC, topic)
    described = admin.describe_configs([resource], config_filter="all")
    assert described["topic"][topic]["cleanup.policy"]["value"] == "compact"


def test_keyed_messages_round_trip(broker: Broker, admin: KafkaAdminClient) -> None:
    topic = unique("events")
    admin.create_topics([NewTopic(topic, 4, 1)])
    records = [(f"C{n % 7}".encode(), f"event-{n}".encode()) for n in range(40)]
    partition_of = produce(broker, topic, records)
    seen = consume_all(broker, topic, len(records))
    assert sorted((k, v) for _, k, v in seen) == sorted(records)
    assert all(partition_of[key] == partition for partition, key, _ in seen)
    assert len(set(partition_of.values())) > 1, "7 keys should spread over 4 partitions"
    for key in partition_of:  # per-key order is production order
        assert [v for _, k, v in seen if k == key] == [v for k, v in records if k == key]


def test_compacted_topic_round_trip(broker: Broker, admin: KafkaAdminClient) -> None:
    topic = unique("tiers")
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    records = [(b"C1", b"bronze"), (b"C2", b"silver"), (b"C1", b"gold")]
    produce(broker, topic, records)
    seen = consume_all(broker, topic, len(records))
    assert [(k, v) for _, k, v in seen] == records  # nothing compacted away this soon
    latest = {key: value for _, key, value in seen}
    assert latest == {b"C1": b"gold", b"C2": b"silver"}


@pytest.mark.asyncio
async def test_consumer_group_commits_offsets(broker: Broker, admin: KafkaAdminClient) -> None:
    topic, group = unique("grouped"), unique("group")
    admin.create_topics([NewTopic(topic, 1, 1)])
    produce(broker, topic, [(b"C1", b"one"), (b"C1", b"two")])
    consumer = aiokafka.AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,  # tansu holds the first JoinGroup ~session/2
    )
    await consumer.start()
    try:
        first = await asyncio.wait_for(consumer.getone(), 20)
        partition = aiokafka.TopicPartition(topic, 0)
        await consumer.commit({partition: first.offset + 1})
        assert first.value == b"one"
        assert await consumer.committed(partition) == 1
    finally:
        await consumer.stop()


def test_redis_round_trip(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.set("tier:C1", "gold")
        assert client.get("tier:C1") == b"gold"
        client.zadd("scores", {"C1": 120.5, "C2": 80, "C3": 99.25})
        ranked = client.zrevrange("scores", 0, -1, withscores=True)
        assert ranked == [(b"C1", 120.5), (b"C3", 99.25), (b"C2", 80.0)]
        assert client.zscore("scores", "C3") == 99.25
    finally:
        client.close()


def test_redis_has_no_persistence(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()


@pytest.mark.parametrize("start", [start_broker, start_redis], ids=["tansu", "redis"])
def test_stop_ends_the_process(start: Callable[[], Broker | RedisServer]) -> None:
    server = start()
    pid, port, workdir = server.pid, server.port, server.workdir
    assert accepts_connections("127.0.0.1", port)
    server.stop()
    assert not server.running
    assert server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not accepts_connections("127.0.0.1", port)
    assert not workdir.exists()
    server.stop()  # a second stop is harmless


def test_broker_stops_promptly_with_a_client_connected() -> None:
    broker = start_broker()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        producer.send(unique("connected"), b"x").get(timeout=10)
        started = time.monotonic()
        broker.stop()
        assert time.monotonic() - started < 2  # SIGTERM alone would wait ~5 s
        assert broker.process.returncode == 0  # shut down, not killed
    finally:
        broker.stop()
        producer.close(timeout=1)


def test_context_manager_stops_on_exit() -> None:
    with start_redis() as server:
        assert server.running
    assert not server.running


def test_taken_port_is_a_service_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(ServiceError, match="not free"):
            start_broker(port=taken)
        with pytest.raises(ServiceError, match="not free"):
            start_redis(port=taken)


def test_explicit_free_port_is_used() -> None:
    port = free_port()
    with start_redis(port=port) as server:
        assert server.port == port
        client = redis.Redis(port=port)
        assert client.ping()
        client.close()
