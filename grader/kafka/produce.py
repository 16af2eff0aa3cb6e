"""`grader produce` and `grader tick`: writing events and ticks to the topics (aiokafka's
producer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from grader.core import step
from grader.core.eventfile import Line, LongLine, original_line_fields
from grader.core.events import TOPIC_OF_TYPE, ParseContext, Rejection, parse_event
from grader.core.topology import DEAD_LETTERS, TICKS
from grader.kafka import auth as kafkaauth
from grader.kafka.admin import KafkaError, connected, described_topics, run_blocking, started
from grader.kafka.auth import KafkaTarget, target_of

# Routing only needs type and customer_id; a line that lacks them fails
# validation before currency or policies are looked at, so this context
# gives the same rejection code as the worker and `grader replay`.
_ROUTING_CONTEXT = ParseContext("", {})
PROGRESS_EVERY = 10_000


@dataclass
class ProduceSummary:
    """What `grader produce` sent where."""

    lines: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the terminal."""
        topics = " ".join(f"{t}={n}" for t, n in sorted(self.by_topic.items()))
        return f"produced {self.lines} lines: {topics}"


def route(raw: bytes) -> tuple[str, bytes] | Rejection:
    """(topic suffix, key) of an event line, or why it cannot be routed."""
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        etype = obj.get("type")
        topic = TOPIC_OF_TYPE.get(etype) if isinstance(etype, str) else None  # [] is unhashable
        customer = obj.get("customer_id")
        if topic and isinstance(customer, str) and customer:
            return topic, customer.encode()
    parsed = parse_event(raw, _ROUTING_CONTEXT)
    if isinstance(parsed, Rejection):
        return parsed
    return Rejection("unroutable", None, "no topic for this line")  # pragma: no cover


def produce(kafka: str | KafkaTarget, prefix: str, lines: Iterable[Line], source: str,
            progress: Callable[[int], None] | None = None) -> ProduceSummary:
    """Send each line to its topic keyed by customer_id; unroutable lines (and lines
    too long to be an event) to dead-letters.

    ``progress`` is called with the number of lines sent so far, every
    PROGRESS_EVERY lines. A record the broker did not take (after the
    producer's retries) is a KafkaError, not a line counted as produced.
    """
    return run_blocking(_produce(target_of(kafka), prefix, lines, source, progress))


async def _produce(target: KafkaTarget, prefix: str, lines: Iterable[Line], source: str,
                   progress: Callable[[int], None] | None) -> ProduceSummary:
    summary = ProduceSummary()
    async with _producer(target) as send:
        for number, raw in enumerate(lines, 1):
            if isinstance(raw, bytes) and not raw.strip():
                continue
            summary.lines += 1
            topic, key, value = _destination(raw, source, number)
            await send(prefix + topic, key, value, None)
            summary.by_topic[topic] = summary.by_topic.get(topic, 0) + 1
            if progress is not None and summary.lines % PROGRESS_EVERY == 0:
                progress(summary.lines)
    return summary


def _destination(raw: Line, source: str, number: int) -> tuple[str, bytes | None, bytes]:
    """(topic suffix, key, value) to send line ``number`` of ``source`` as."""
    routed = raw.rejection() if isinstance(raw, LongLine) else route(raw)
    if not isinstance(routed, Rejection) and isinstance(raw, bytes):
        return routed[0], routed[1], raw
    assert isinstance(routed, Rejection)
    where = step.Incoming(source, 0, number, None, None)
    return DEAD_LETTERS, None, step.dead_letter(where, routed, original_line_fields(raw)).value


def send_tick(kafka: str | KafkaTarget, prefix: str, as_of: int) -> int:
    """Send one tick message to every partition of the ticks topic; return how many."""
    return run_blocking(_send_tick(target_of(kafka), prefix, as_of))


async def _send_tick(target: KafkaTarget, prefix: str, as_of: int) -> int:
    topic = prefix + TICKS
    async with connected(target) as admin:
        described = (await described_topics(admin, [topic])).get(topic)
    if described is None:
        raise KafkaError(f"topic {topic} does not exist: start `grader worker` first")
    partitions = sorted(p["partition_index"] for p in described["partitions"])
    value = step.tick_message(as_of, str(uuid.uuid4()))
    async with _producer(target) as send:
        for partition in partitions:
            await send(topic, b"tick", value, partition)
    return len(partitions)


Send = Callable[[str, bytes | None, bytes, int | None], Awaitable[None]]


@contextlib.asynccontextmanager
async def _producer(target: KafkaTarget) -> AsyncIterator[Send]:
    """:func:`_sending`, without the warnings of the requests it retries."""
    with quiet_retries():
        async with _sending(target) as send:
            yield send


@contextlib.asynccontextmanager
async def _sending(target: KafkaTarget) -> AsyncIterator[Send]:
    """``send(topic, key, value, partition)`` of a started AIOKafkaProducer; on leaving, every
    record sent is acknowledged (all in-sync replicas: acks=all), else KafkaError.

    A partition has one batch in flight at a time, so its records keep the
    order sent, retries included. Not idempotent: aiokafka's idempotent
    producer cannot start on tansu (InitProducerId v0, docs/tansu.md), so a
    batch retried after a lost acknowledgement can be written twice; the
    workers take a duplicate event, tick or policy record as such. aiokafka
    has no ``allow_auto_create_topics`` (kafka-python's was off): its Metadata
    requests let a broker that auto-creates topics create a missing one, so the
    callers make sure the topics exist first (`grader produce` creates them,
    `grader tick` refuses a missing ticks topic).
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError as ClientError

    auth = kafkaauth.client_auth(target.security, kafkaauth.ssl_context(target.security))
    producer = await started(AIOKafkaProducer(bootstrap_servers=target.servers,
                                              client_id="grader-produce", acks="all",
                                              linger_ms=5, **auth), target)
    failed: list[BaseException] = []

    def delivered(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            failed.append(future.exception())  # type: ignore[arg-type]

    async def send(topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        if failed:
            raise failed[0]
        future = await producer.send(topic, value, key=key, partition=partition)
        future.add_done_callback(delivered)

    try:
        yield send
        await producer.flush()
        if failed:
            raise failed[0]
    except ClientError as exc:
        raise KafkaError(f"Kafka at {target.url}: {exc}") from None
    finally:
        await producer.stop()


@contextlib.contextmanager
def quiet_retries() -> Iterator[None]:
    """Meanwhile, no warning from aiokafka's producer of a request it retries ("Got error
    produce response on topic-partition ..., retrying"): Kafka refuses the first records
    sent to a topic it has just created (NOT_LEADER_OR_FOLLOWER) until each partition's
    leader is in place, and a command's terminal would show one warning a partition.
    Retrying is the producer's job; a record it gives up on is a KafkaError."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "retrying" in record.getMessage())

    sender_log = logging.getLogger("aiokafka.producer.sender")
    sender_log.addFilter(keep)
    try:
        yield
    finally:
        sender_log.removeFilter(keep)
