"""grader's own aiokafka clients without a broker: the Metadata request with topic ids, the
sync runner, and the retry warnings kept off a command's terminal (the clients against
real brokers: tests/integration, e.g. test_stream.py, test_kafka_security.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from grader.kafka.admin import run_blocking
from grader.kafka.metadata import MetadataResponse_v12, TopicsMetadataRequest
from grader.kafka.produce import quiet_retries


@pytest.mark.parametrize(("offered", "version", "wire"), [
    ((0, 13), 12, "00000000"),  # Kafka 4.x: topics null (all), no auto-creation, tags
    ((0, 12), 12, "00000000"),
    ((1, 10), 10, "0000000000"),  # v10 also asks whether to include the cluster's operations
])
def test_the_newest_version_both_sides_know(offered: tuple[int, int], version: int,
                                            wire: str) -> None:
    request = TopicsMetadataRequest().prepare({3: offered})
    assert (request.API_VERSION, request.encode().hex()) == (version, wire)


def test_aiokafkas_own_metadata_request_has_no_topic_ids() -> None:
    """Why grader.kafka.metadata exists (docs/architecture.md, "Dependency patches"):
    aiokafka's MetadataRequest stops at v5, whose topics carry no id. When a release
    adds v10 or later, this fails, and the patch can go."""
    from aiokafka.protocol import metadata

    versions = [cls.API_VERSION for cls in vars(metadata).values()
                if isinstance(cls, type) and cls.__name__.startswith("MetadataRequest_v")]
    assert max(versions) == 5
    schema = metadata.MetadataResponse_v5.SCHEMA
    topics = schema.fields[schema.names.index("topics")].array_of
    assert topics.names == ("error_code", "topic", "is_internal", "partitions")  # no id


def test_no_metadata_version_with_topic_ids_is_an_error() -> None:
    with pytest.raises(NotImplementedError):
        TopicsMetadataRequest().prepare({3: (0, 9)})


def test_a_response_gives_each_topic_its_id_and_partitions() -> None:
    topic_id = uuid.uuid4()
    partition = (0, 2, 1, 5, [1], [1], [], {})
    topic = (0, "g.ticks", str(topic_id), False, [partition], -2147483648, {})
    wire = MetadataResponse_v12(0, [(1, "127.0.0.1", 9092, None, {})], "cluster", 1,
                                [topic], {}).encode()
    assert wire.count(topic_id.bytes) == 1  # 16 bytes on the wire
    [decoded] = MetadataResponse_v12.decode(wire).to_object()["topics"]
    assert decoded["name"] == "g.ticks" and decoded["topic_id"] == str(topic_id)
    assert [p["partition_index"] for p in decoded["partitions"]] == [2]


def test_run_blocking_runs_a_coroutine_on_a_loop_of_its_own() -> None:
    async def loop_id() -> int:
        return id(asyncio.get_running_loop())

    assert run_blocking(loop_id()) != run_blocking(loop_id())


def test_run_blocking_refuses_a_running_loop() -> None:
    async def inside() -> None:
        run_blocking(asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(inside())


def test_retry_warnings_are_kept_off_meanwhile(caplog: pytest.LogCaptureFixture) -> None:
    sender = logging.getLogger("aiokafka.producer.sender")
    retry = ("Got error produce response on topic-partition %s, retrying. Error: %s",
             "TopicPartition(topic='g.ticks', partition=0)", "NotLeaderForPartitionError")
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        with quiet_retries():
            sender.warning(*retry)
            sender.warning("Unable to send: %s", "other")
        sender.warning(*retry)
    assert [r.getMessage()[:22] for r in caplog.records] == ["Unable to send: other",
                                                             "Got error produce resp"]
