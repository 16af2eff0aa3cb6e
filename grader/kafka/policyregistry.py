"""One meaning per policy version: the ``{prefix}policies`` topic (compacted).

Every worker, at start-up, reads which digest each ``name:version`` was
first used with, refuses to start when one of its policies has the same
version and another digest (its rules changed without a new version), and
records the versions it brings. So "version 3 of abc-100" means one thing
for every worker, ever (docs/policies.md, "Roll-out").

The topic's order is also the roll-out's: a version first recorded after
another of the same policy is the newer one. A worker whose policy has a
newer version on the topic refuses to start, and a running one that sees
one (:class:`PolicyWatch`, read every few seconds, at each rebalance, and
whenever a customer's state names a version it does not know) stops, so
that two versions never grade the same customers back and forth during a
rolling deploy (issue 20; docs/policies.md, "A rolling deploy").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from grader.core.errors import GraderError, WorkerStop
from grader.core.policy import Policy
from grader.kafka import auth as kafkaauth
from grader.kafka.admin import KafkaError, run_blocking, started
from grader.kafka.auth import KafkaTarget
from grader.kafka.produce import quiet_retries

TOPIC = "policies"
READ_TIMEOUT = 10.0  # seconds to read the topic to its end


def check_and_record(kafka: KafkaTarget, prefix: str, policies: tuple[Policy, ...]) -> None:
    """Refuse a changed policy that kept its version; record the versions not seen yet."""
    run_blocking(_check_and_record(kafka, prefix + TOPIC, policies))


async def _check_and_record(kafka: KafkaTarget, topic: str, policies: tuple[Policy, ...]) -> None:
    known = dict(await _read_history(kafka, topic))
    for policy in policies:
        key = f"{policy.name}:{policy.version}"
        digest = known.get(key)
        if digest is not None and digest != policy.digest:
            raise GraderError(f"policy {policy.name} ({policy.source}): version "
                              f"{policy.version} was first used with other rules; give the "
                              "changed policy a new version")
    new = [p for p in policies if f"{p.name}:{p.version}" not in known]
    if new:
        with quiet_retries():
            await _record(kafka, topic, new)


async def _record(kafka: KafkaTarget, topic: str, new: list[Policy]) -> None:
    """Record the versions ``new`` on the topic (partition 0), in order."""
    async with _client(kafka, "producer") as producer:
        for p in new:
            value = orjson.dumps({"name": p.name, "version": p.version, "digest": p.digest})
            # one record a batch (sent and acknowledged): tansu's end offset stays right
            await producer.send_and_wait(topic, value, key=f"{p.name}:{p.version}".encode(),
                                         partition=0)


class PolicySuperseded(WorkerStop):
    """A newer version of one of this worker's policies is rolled out: the worker stops."""

    exit_code = 3


def read_known(kafka: KafkaTarget, topic: str) -> dict[str, str]:
    """``name:version`` -> digest, from the topic's start to its end."""
    return dict(read_history(kafka, topic))


def read_history(kafka: KafkaTarget, topic: str) -> list[tuple[str, str]]:
    """(``name:version``, digest) in the topic's order, from its start to its end."""
    return run_blocking(_read_history(kafka, topic))


async def _read_history(kafka: KafkaTarget, topic: str) -> list[tuple[str, str]]:
    async with _client(kafka, "consumer") as consumer:
        return await _read_new(consumer, topic)


async def _read_new(consumer: Any, topic: str) -> list[tuple[str, str]]:
    """The records of the topic's partition from the consumer's position to the end."""
    from aiokafka import TopicPartition

    tp = TopicPartition(topic, 0)
    if tp not in consumer.assignment():
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
    end = (await consumer.end_offsets([tp]))[tp]
    history: list[tuple[str, str]] = []
    deadline = time.monotonic() + READ_TIMEOUT
    while await consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise GraderError(f"topic {topic}: not read to its end within "
                              f"{READ_TIMEOUT:g} s")
        for records in (await consumer.getmany(tp, timeout_ms=500)).values():
            for record in records:
                if record.key is not None and record.value is not None:
                    history.append((record.key.decode(), orjson.loads(record.value)["digest"]))
    return history


def versions_in_order(history: list[tuple[str, str]], name: str) -> list[str]:
    """The versions of policy ``name`` in ``history``, in the order first recorded."""
    order: list[str] = []
    for key, _digest in history:
        policy, _, version = key.rpartition(":")
        if policy == name and version not in order:
            order.append(version)
    return order


def newer_versions(history: list[tuple[str, str]], name: str, version: str) -> list[str]:
    """The versions of policy ``name`` first recorded after ``version`` in ``history``
    (all of them if ``version`` is not there)."""
    order = versions_in_order(history, name)
    return order[order.index(version) + 1:] if version in order else order


class PolicyWatch:
    """The ``policies`` topic as this worker has read it, kept up to date by :meth:`poll`.

    Created after :func:`check_and_record`, so this worker's own versions are on
    the topic; every version of the same policy after one of them is newer.
    :meth:`poll` blocks (run it in an executor); :meth:`newer_in` only reads
    what was polled, so the event loop can call it.
    """

    def __init__(self, kafka: KafkaTarget, prefix: str, policies: tuple[Policy, ...]) -> None:
        self.topic = prefix + TOPIC
        self.policies = {p.name: p.version for p in policies}
        self.history: list[tuple[str, str]] = []
        self._kafka = kafka
        self._consumer: Any = None
        self._runner: asyncio.Runner | None = None
        self._lock = threading.Lock()

    def poll(self) -> str | None:
        """Read what was added to the topic; why this worker must stop, or None.

        Blocks: its consumer runs on an event loop of the watch's own (the first
        poll is before Faust starts, the later ones in an executor thread), one
        poll at a time.
        """
        with self._lock:
            if self._runner is None:
                self._runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
            self.history += self._runner.run(self._read())
        return self.superseded()

    async def _read(self) -> list[tuple[str, str]]:
        from aiokafka.errors import KafkaError as ClientError

        if self._consumer is None:
            self._consumer = await _started(self._kafka, "consumer")
        try:
            return await _read_new(self._consumer, self.topic)
        except ClientError as exc:
            raise KafkaError(f"Kafka at {self._kafka.url}: {exc}") from None

    def superseded(self) -> str | None:
        """Why this worker must stop (a newer version of one of its policies), or None."""
        for name, version in sorted(self.policies.items()):
            newer = newer_versions(self.history, name, version)
            if newer:
                return self._why(name, version, newer[-1])
        return None

    def newer_in(self, graded_under: dict[str, tuple[str, str]]) -> str | None:
        """Why this worker must stop, if a customer graded under ``graded_under`` was graded
        under a newer version of one of its policies (or one not polled yet: first recorded
        after this worker's, since this worker's was recorded before the watch started)."""
        for name, (version, _digest) in graded_under.items():
            ours = self.policies.get(name)
            if ours is None or version == ours:
                continue
            order = versions_in_order(self.history, name)
            if ours not in order or version not in order[:order.index(ours)]:
                return self._why(name, ours, version)
        return None

    def _why(self, name: str, ours: str, newer: str) -> str:
        return (f"policy {name}: version {newer} is rolled out (the {self.topic} topic has it "
                f"after version {ours}, this worker's); start the worker with version {newer} "
                "or later")

    def close(self) -> None:
        """Stop the consumer and close the watch's event loop (waits for a poll under way)."""
        with self._lock:
            runner, consumer = self._runner, self._consumer
            self._runner = self._consumer = None
            if runner is None:
                return
            try:
                if consumer is not None:
                    runner.run(consumer.stop())
            finally:
                runner.close()


async def _started(kafka: KafkaTarget, kind: str) -> Any:
    """A started AIOKafkaProducer (acks=all; not idempotent, as in grader.kafka.produce) or
    AIOKafkaConsumer (no group); KafkaError naming the URL if it cannot start."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    auth = kafkaauth.client_auth(kafka.security, kafkaauth.ssl_context(kafka.security))
    client = (AIOKafkaProducer(bootstrap_servers=kafka.servers, client_id="grader-policies",
                               acks="all", **auth)
              if kind == "producer" else
              AIOKafkaConsumer(bootstrap_servers=kafka.servers, client_id="grader-policies",
                               group_id=None, enable_auto_commit=False,
                               auto_offset_reset="earliest", **auth))
    return await started(client, kafka)


@contextlib.asynccontextmanager
async def _client(kafka: KafkaTarget, kind: str) -> AsyncIterator[Any]:
    """:func:`_started`, stopped afterwards; a Kafka error becomes a KafkaError."""
    from aiokafka.errors import KafkaError as ClientError

    client = await _started(kafka, kind)
    try:
        yield client
    except ClientError as exc:
        raise KafkaError(f"Kafka at {kafka.url}: {exc}") from None
    finally:
        await client.stop()
