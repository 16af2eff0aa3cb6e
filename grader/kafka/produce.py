"""`grader produce` and `grader tick`: writing events and ticks to the topics."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from grader.core import step
from grader.core.eventfile import Line, LongLine, original_line_fields
from grader.core.events import TOPIC_OF_TYPE, ParseContext, Rejection, parse_event
from grader.core.topology import DEAD_LETTERS, TICKS
from grader.kafka import auth as kafkaauth
from grader.kafka.admin import (
    CLIENT_TIMEOUT_MS,
    KafkaError,
    connected,
    described_topics,
    kafka_module,
)
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
    PROGRESS_EVERY lines.
    """
    module = kafka_module()
    summary = ProduceSummary()
    producer = _producer(kafka)
    try:
        for number, raw in enumerate(lines, 1):
            if isinstance(raw, bytes) and not raw.strip():
                continue
            summary.lines += 1
            topic, key, value = _destination(raw, source, number)
            producer.send(prefix + topic, key=key, value=value)
            summary.by_topic[topic] = summary.by_topic.get(topic, 0) + 1
            if progress is not None and summary.lines % PROGRESS_EVERY == 0:
                progress(summary.lines)
        producer.flush()
    except module.errors.KafkaError as exc:
        raise KafkaError(f"Kafka at {target_of(kafka).url}: {exc}") from None
    finally:
        producer.close()
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
    module = kafka_module()
    topic = prefix + TICKS
    with connected(kafka) as admin:
        described = described_topics(admin, [topic]).get(topic)
    if described is None:
        raise KafkaError(f"topic {topic} does not exist: start `grader worker` first")
    partitions = sorted(p["partition_index"] for p in described["partitions"])
    value = step.tick_message(as_of, str(uuid.uuid4()))
    producer = _producer(kafka)
    try:
        for partition in partitions:
            producer.send(topic, key=b"tick", value=value, partition=partition)
        producer.flush()
    except module.errors.KafkaError as exc:
        raise KafkaError(f"Kafka at {target_of(kafka).url}: {exc}") from None
    finally:
        producer.close()
    return len(partitions)


def _producer(kafka: str | KafkaTarget) -> Any:
    target = target_of(kafka)
    module = kafka_module()
    auth = kafkaauth.client_auth(target.security, kafkaauth.ssl_context(target.security))
    try:
        # acks=all and kafka-python's default idempotence: a retried send is not duplicated.
        return module.KafkaProducer(bootstrap_servers=target.servers, acks="all", linger_ms=5,
                                    allow_auto_create_topics=False,
                                    bootstrap_timeout_ms=CLIENT_TIMEOUT_MS, **auth)
    except module.errors.KafkaError as exc:
        raise KafkaError(f"cannot reach Kafka at {target.url} (GRADER_KAFKA_URL): {exc}"
                         ) from None
