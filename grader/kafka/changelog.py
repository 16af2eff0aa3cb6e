"""The workers' state as a reader outside them sees it: their customers changelog.

``{topic_prefix}worker-customers-changelog`` is compacted; its latest record
per customer is the state the owning worker stored (with the outputs stored
with it, grader/core/step.py). `grader redis-sync` and `grader whatif
--live` read it from the beginning to its end.
"""

from __future__ import annotations

from typing import Any

from grader.core import step
from grader.core.errors import GraderError
from grader.core.state import CustomerState
from grader.kafka import auth as kafkaauth
from grader.kafka.auth import KafkaTarget

CHANGELOG = "worker-customers-changelog"


async def read_states(kafka: KafkaTarget, topic_prefix: str,
                      tansu: bool) -> dict[str, CustomerState]:
    """The latest stored state of every customer in the changelog of the workers under
    ``topic_prefix`` (settings.kafka and settings.topic_prefix)."""
    import aiokafka

    from grader.kafka.admin import connected, described_topics
    from grader.kafka.offsets import fetched_ends

    security = kafka.security
    auth = kafkaauth.client_auth(security, kafkaauth.ssl_context(security))
    servers = kafka.servers
    topic = topic_prefix + CHANGELOG
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=servers, group_id=None,
                                         enable_auto_commit=False,
                                         auto_offset_reset="earliest", **auth)
    await consumer.start()
    try:
        async with connected(kafka) as admin:
            described = (await described_topics(admin, [topic])).get(topic)
        partitions = [p["partition_index"] for p in described["partitions"]] if described else []
        if not partitions:
            raise GraderError(f"topic {topic} does not exist: no worker has stored a "
                              f"customer under topic_prefix {topic_prefix!r}")
        tps = [aiokafka.TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        if tansu:  # tansu's end offset can be a batch's base + 1 (docs/tansu.md)
            ends = await fetched_ends(servers, ends, auth)
        latest: dict[bytes, bytes | None] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    latest[record.key] = record.value
        return {key.decode(): step.decode_record(value).state
                for key, value in latest.items() if value is not None}
    finally:
        await consumer.stop()
