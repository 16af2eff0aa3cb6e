"""`grader redis-sync`: rewrite the support-queue keys from the workers' state.

The workers' state is their customers changelog topic
(``{topic_prefix}worker-customers-changelog``, compacted): its latest record
per customer is that customer's stored state. redis-sync reads it from the
beginning to its end, writes every customer as the worker would
(grader/sinks/redis.py), then removes what the state does not have: ticket
hashes and queue entries of tickets that are not open, and customer hashes
of customers the workers do not know. Afterwards Redis holds exactly what a
worker that never missed a write would have written (docs/support-queues.md).

Run it with the workers stopped or running: a worker's later write is
newer, and writes are absolute, so it wins.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from grader import kafkaauth
from grader.errors import GraderError
from grader.settings import Settings
from grader.sinks.redis import RedisSetupError, SupportQueues
from grader.state import CustomerState
from grader.stream import step

log = logging.getLogger(__name__)
CHANGELOG = "worker-customers-changelog"


def redis_sync(settings: Settings, queues: SupportQueues, tansu: bool) -> tuple[int, int]:
    """Rewrite every key; return (customers written, stale keys removed)."""
    return asyncio.run(_sync(settings, queues, tansu))


async def _sync(settings: Settings, queues: SupportQueues, tansu: bool) -> tuple[int, int]:
    try:
        await queues.connect()
        states = await read_states(settings, tansu)
        await queues.write(list(states.values()))
        removed = await remove_stale(queues, states)
        return len(states), removed
    except RedisSetupError as exc:
        raise GraderError(str(exc)) from None
    finally:
        await queues.close()


async def read_states(settings: Settings, tansu: bool) -> dict[str, CustomerState]:
    """The latest stored state of every customer in the changelog."""
    import aiokafka

    from grader.stream.admin import connected, described_topics
    from grader.stream.seeking import fetched_ends

    security = settings.kafka_security
    auth = kafkaauth.client_auth(security, kafkaauth.ssl_context(security))
    servers = kafkaauth.bootstrap_servers(settings.kafka_url)
    topic = settings.topic_prefix + CHANGELOG
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=servers, group_id=None,
                                         enable_auto_commit=False,
                                         auto_offset_reset="earliest", **auth)
    await consumer.start()
    try:
        with connected(settings.kafka) as admin:
            described = described_topics(admin, [topic]).get(topic)
        partitions = [p["partition_index"] for p in described["partitions"]] if described else []
        if not partitions:
            raise GraderError(f"topic {topic} does not exist: no worker has stored a "
                              f"customer under topic_prefix {settings.topic_prefix!r}")
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


async def remove_stale(queues: SupportQueues, states: dict[str, CustomerState]) -> int:
    """Delete keys under the prefix that no state holds; how many were changed."""
    redis = queues._redis
    prefix = queues.prefix
    open_in: dict[str, str] = {ticket_id: ticket.queue for state in states.values()
                               for ticket_id, ticket in state.tickets.items() if ticket.is_open}
    removed = 0
    async for key in redis.scan_iter(match=_glob(prefix) + "ticket:*", count=1000):
        ticket_id = key.decode()[len(prefix) + len("ticket:"):]
        if ticket_id not in open_in:
            removed += await redis.delete(key)
    async for key in redis.scan_iter(match=_glob(prefix) + "queue:*", count=1000):
        queue = key.decode()[len(prefix) + len("queue:"):]
        members = [m.decode() for m in await redis.zrange(key, 0, -1)]
        stale = [m for m in members if open_in.get(m) != queue]
        if stale:
            removed += await redis.zrem(key, *stale)
    async for key in redis.scan_iter(match=_glob(prefix) + "customer:*", count=1000):
        if key.decode()[len(prefix) + len("customer:"):] not in states:
            removed += await redis.delete(key)
    return removed


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def main(settings: Settings, queues: SupportQueues) -> int:
    """The command: one summary line on stderr."""
    written, removed = redis_sync(settings, queues, settings.broker_quirks == "tansu")
    print(f"redis-sync: wrote {written} customers to Redis at {queues.where}, "
          f"removed {removed} stale keys or queue entries", file=sys.stderr)
    return 0
