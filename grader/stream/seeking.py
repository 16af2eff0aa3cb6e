"""A Faust transport whose consumer fixes what Faust's rebalances and recovery rely on.

**Seeking to committed offsets** (:class:`GraderConsumerThread`).
After an assignment Faust recovers its tables, resumes its streams, and then
calls ``seek_to_committed`` to rewind what it fetched but did not hand to a
stream during the rebalance. aiokafka's ``seek_to_committed`` only seeks
partitions whose committed offset is > 0, so on a partition that was never
committed those records are never delivered. The rebalance test in
tests/integration/test_stream.py lost the tick of the partitions the first
worker kept. (Related: faust-streaming/faust#221, robinhood/faust#115.)

The fix: such a source partition goes back to its beginning (what
``auto_offset_reset="earliest"`` means). Records a stream had already
handled before are then graded again as duplicates, which the customer's
state ignores. (Session 1 sought to "Faust's read offset + 1" instead; that
skips records that were read and then dropped from the stream's queue by a
second rebalance, and the rebalance test lost events that way.) Also,
aiokafka's seek stops at the first partition that a newer rebalance took
away while it awaited committed offsets; here each partition still assigned
is sought on its own, and one that moved is left to that newer rebalance.

**True end offsets** (only with ``true_end_offsets``, the tansu quirk).
Faust restores a table by reading its changelog up to the end offset that
ListOffsets reports. tansu reports the base offset of a partition's last
record batch + 1, not the last offset + 1, so a restore would stop at the
first record of the last batch and lose the rest. With the quirk on, each
end offset is checked by fetching from the offset before it: the records
returned (the whole last batch) show the true end. On Apache Kafka the fetch
returns one record and the end offset is unchanged.

**Fetch wait** (only with ``fetch_max_wait_ms``, the tansu quirk). Faust
fixes the consumer's ``fetch_max_wait_ms`` at 1,500 ms. Kafka answers a
waiting Fetch as soon as new records arrive; tansu waits the full time
(measured: a record produced while a fetch waited arrived 1.1-1.4 s later),
so every quiet moment would add up to 1.5 s of latency. With the quirk on,
the worker's consumer waits at most ``fetch_max_wait_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka
from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as driver

log = logging.getLogger(__name__)


class GraderConsumerThread(driver.AIOKafkaConsumerThread):
    """The aiokafka consumer thread: a seek that survives a moving assignment.

    aiokafka's ``seek_to_committed`` walks the assigned partitions, awaiting
    each committed offset; when a rebalance changes the assignment meanwhile,
    it raises IllegalStateError halfway and leaves the remaining partitions
    where they were. Faust logs that ("exception performing seek") and goes
    on, so records fetched during the rebalance and dropped were never read
    again, and Faust's gap bookkeeping then committed past them: the
    join-then-leave rebalance test lost events that way. Here every
    partition still assigned is sought, each on its own: to its committed
    offset, or, for a never-committed source partition, to its beginning.
    """

    consumer: ResumingConsumer  # set by Faust's ConsumerThread; holds the options

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if self.consumer.fetch_max_wait_ms is not None:
            # read by its Fetcher at start
            consumer._fetch_max_wait_ms = self.consumer.fetch_max_wait_ms
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_each_to_committed)  # type: ignore[no-any-return]

    async def _seek_each_to_committed(self) -> dict[Any, int]:
        consumer = self._ensure_consumer()
        committed: dict[Any, int] = {}
        for tp in sorted(consumer.assignment()):
            offset = await consumer.committed(tp)
            try:
                if offset is not None and offset > 0:
                    consumer.seek(tp, offset)
                elif tp.topic in self.consumer.source_topics:
                    await consumer.seek_to_beginning(tp)
            except IllegalStateError:  # moved by a newer rebalance, which seeks again
                log.info("partition %s moved while seeking", tp)
                continue
            committed[tp] = offset
        return committed


class ResumingConsumer(driver.Consumer):
    """A consumer whose thread seeks robustly and, on tansu, checks end offsets."""

    source_topics: frozenset[str] = frozenset()
    servers: tuple[str, ...] = ()  # bootstrap servers, for the end-offset check
    true_end_offsets: bool = False
    fetch_max_wait_ms: int | None = None

    def _new_consumer_thread(self) -> Any:
        return GraderConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def highwaters(self, *partitions: Any) -> Mapping[Any, int]:
        """End offsets; with ``true_end_offsets``, checked by a fetch (module docstring)."""
        ends: Mapping[Any, int] = await super().highwaters(*partitions)
        if not self.true_end_offsets:
            return ends
        return await fetched_ends(list(self.servers), ends)


async def fetched_ends(servers: list[str], ends: Mapping[Any, int],
                       timeout: float = 10.0) -> dict[Any, int]:
    """``ends`` raised to one past the last offset a fetch from ``end - 1`` returns."""
    checked = {tp: end for tp, end in ends.items() if end}
    if not checked:
        return dict(ends)
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=servers, group_id=None,
                                         enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(checked))
        for tp, end in checked.items():
            consumer.seek(tp, end - 1)
        true = dict(ends)
        waiting = set(checked)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                if records:
                    true[tp] = max(true[tp], records[-1].offset + 1)
                    waiting.discard(tp)
        if waiting:
            raise RuntimeError(f"no record at end offset - 1 of {sorted(map(str, waiting))}")
        return true
    finally:
        await consumer.stop()


def transport_for(app: Any, source_topics: Iterable[str], servers: Iterable[str],
                  true_end_offsets: bool, fetch_max_wait_ms: int | None) -> Any:
    """A Kafka transport for ``app`` whose consumer is a ResumingConsumer."""
    consumer = type("GraderConsumer", (ResumingConsumer,),
                    {"source_topics": frozenset(source_topics), "servers": tuple(servers),
                     "true_end_offsets": true_end_offsets,
                     "fetch_max_wait_ms": fetch_max_wait_ms})
    transport = type("GraderTransport", (driver.Transport,), {"Consumer": consumer})
    return transport(app.conf.broker_consumer, app)
