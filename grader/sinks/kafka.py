"""Publishing the worker's outputs to Kafka, behind a small Protocol.

The worker needs one thing from a sink: publish these outputs and return only
once the broker has acknowledged every one of them (docs/streaming.md,
"Ordering"). Tests pass a fake sink that records what it was given.

:class:`BatchSender` does the sending for the outputs and for the table's
changelog records: it groups records by topic and partition into aiokafka
record batches and waits for each batch's acknowledgement. Going through
Faust's ``topic.send`` instead costs a future, a pending message and a
producer call per record; with about one output per input event that was
half of the worker's time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from grader.core.step import Output
from grader.core.topology import partition_of

Record = tuple[str, int, bytes | None, bytes]  # (topic, partition, key, value)
MAX_BATCH_BYTES = 512 * 1024
LEASE_POLL = 0.2  # seconds between two checks of the lease while waiting for the broker


class Lease(Protocol):
    """What the sender needs of the worker's lease on its partitions (grader.stream.lease):
    a check before a write, which gives up (exits) once the lease has run out."""

    def check(self, what: str) -> None:
        """Give up unless the lease holds; ``what``: the write."""

    async def ready(self, what: str) -> None:
        """:meth:`check`, after waiting for a new assignment's lease to be confirmed."""


class OutputSink(Protocol):
    """Where tier changes, snapshots and dead letters go."""

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Send ``outputs`` (in order per key) and wait until all are acknowledged."""


class BatchSender:
    """An aiokafka producer (acks=all) that sends lists of records as record batches.

    ``auth`` holds the producer's security keyword arguments
    (:func:`grader.kafka.auth.client_auth`; none: PLAINTEXT).

    With a ``lease`` (grader.stream.lease; the worker's), nothing is sent once it has
    run out: it is checked before a send, and while waiting for the acknowledgements
    (every ``LEASE_POLL`` s); ``guard`` gets the producer's aiokafka client before it
    starts (the worker's checks the lease when each produce request is written to its
    socket: grader.stream.faust_patches.lease_hooks.guard_producer).
    """

    def __init__(self, bootstrap_servers: list[str],
                 auth: Mapping[str, Any] | None = None, lease: Lease | None = None,
                 guard: Callable[[Any], None] | None = None) -> None:
        self._servers = bootstrap_servers
        self._auth = dict(auth or {})
        self._lease = lease
        self._guard = guard
        self._producer: Any = None
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is None:
                import aiokafka

                producer = aiokafka.AIOKafkaProducer(
                    bootstrap_servers=self._servers, acks="all",
                    max_batch_size=MAX_BATCH_BYTES, max_request_size=4 * MAX_BATCH_BYTES,
                    **self._auth)
                if self._guard is not None:
                    self._guard(producer.client)
                await producer.start()
                self._producer = producer
        return self._producer

    async def send(self, records: Sequence[Record]) -> dict[tuple[str, int], int]:
        """Send ``records`` (order kept per partition) and wait for every acknowledgement.

        Returns the offset of the last record written to each (topic, partition).
        """
        if not records:
            return {}
        if self._lease is not None:
            await self._lease.ready(f"sending {len(records)} records")
        producer = await self._started()
        batches: dict[tuple[str, int], Any] = {}
        counts: dict[tuple[str, int], int] = {}
        pending = []  # (topic, partition, records in the batch, its future)
        for topic, partition, key, value in records:
            tp = (topic, partition)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
                counts[tp] = 0
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append((tp, counts[tp],
                                await producer.send_batch(batch, topic, partition=partition)))
                batch = batches[tp] = producer.create_batch()
                counts[tp] = 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record for {topic} is larger than {MAX_BATCH_BYTES} B")
            counts[tp] += 1
        for (topic, partition), batch in batches.items():
            pending.append(((topic, partition), counts[(topic, partition)],
                            await producer.send_batch(batch, topic, partition=partition)))
        if self._lease is not None:
            await self._acknowledged([future for _tp, _n, future in pending], self._lease)
        sent = await asyncio.gather(*(future for _tp, _n, future in pending))
        last: dict[tuple[str, int], int] = {}
        for (tp, count, _future), metadata in zip(pending, sent, strict=True):
            last[tp] = max(last.get(tp, -1), metadata.offset + count - 1)  # offset: the base
        return last

    @staticmethod
    async def _acknowledged(futures: list[Any], lease: Lease) -> None:
        """Wait for ``futures``, checking ``lease`` meanwhile: a request queued behind a
        broken network must not wait for the network to heal (the exit drops it)."""
        waiting = set(futures)
        while waiting:
            _done, waiting = await asyncio.wait(waiting, timeout=LEASE_POLL)
            if waiting:
                lease.check("waiting for the broker's acknowledgements")

    async def stop(self) -> None:
        """Flush and close the producer, if it was started."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class KafkaSink:
    """Publishes outputs to ``{prefix}{suffix}``, partitioned like the Java client."""

    def __init__(self, sender: BatchSender, prefix: str, partitions: int) -> None:
        self._sender = sender
        self._prefix = prefix
        self._partitions = partitions

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Send all, then wait for every acknowledgement (a send error raises)."""
        await self._sender.send([
            (self._prefix + out.topic,
             partition_of(out.key, self._partitions) if out.key else 0, out.key, out.value)
            for out in outputs])


class RecordingSink:
    """A fake sink that keeps what it was given, for tests without a broker."""

    def __init__(self) -> None:
        self.published: list[Output] = []

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Record ``outputs``."""
        self.published.extend(outputs)
