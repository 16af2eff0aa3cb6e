"""The Faust app of `grader worker`: one agent, two tables, the Kafka sink.

The composition root is :func:`create_app`. One agent consumes the four input
topics and the ticks topic (all co-partitioned), so one customer's messages
are handled one at a time and a tick never races an event for the same
customer. For each message, :class:`Processor` calls grader.stream.step,
publishes the outputs and waits for their acknowledgements, and only then
stores the new state (docs/streaming.md, "Ordering").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import faust
from aiokafka.partitioner import murmur2

from grader.clock import format_instant
from grader.core import Grading
from grader.settings import Settings
from grader.sinks.kafka import FaustKafkaSink, OutputSink
from grader.stream import step
from grader.stream.options import StreamOptions
from grader.stream.seeking import transport_for
from grader.stream.topology import CUSTOMER_TIERS, DEAD_LETTERS, INPUTS, TICKS, TIER_CHANGES

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
TICK_BATCH = 500  # customers re-graded between two waits for acknowledgements


def now_us() -> int:
    """The wall clock in microseconds."""
    return time.time_ns() // 1000


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (murmur2) gives ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def table_store() -> str:
    """``rocksdb://`` when a RocksDB binding is installed, else ``memory://``."""
    import importlib.util

    if importlib.util.find_spec("rocksdict") or importlib.util.find_spec("rocksdb"):
        return "rocksdb://"
    return "memory://"


class Processor:
    """Handles each consumed message: step, publish (acknowledged), then store."""

    def __init__(self, grading: Grading, customers: Any, clocks: Any, sink: OutputSink,
                 ticks_topic: str, partitions: int) -> None:
        self.grading = grading
        self.customers = customers  # table: customer_id bytes -> codec bytes
        self.clocks = clocks  # table: b"p<partition>" -> latest tick as_of (decimal µs)
        self.sink = sink
        self.ticks_topic = ticks_topic
        self.partitions = partitions

    async def on_message(self, msg: step.Incoming) -> None:
        """Handle one message from an input topic or the ticks topic."""
        if msg.topic == self.ticks_topic:
            await self.on_tick(msg)
            return
        key = msg.key
        owner = partition_of(key, self.partitions) if key else None
        stored = self.customers.get(key) if key else None
        outcome = step.handle_event(msg, stored, self.clock(msg.partition), self.grading,
                                    now_us(), owner)
        await self.sink.publish(outcome.outputs)
        if outcome.state is not None:
            self.customers[key] = outcome.state

    async def on_tick(self, msg: step.Incoming) -> None:
        """Re-grade every customer of the tick's partition, then raise its clock."""
        as_of = step.parse_tick(msg.value)
        if not isinstance(as_of, int):
            await self.sink.publish([step.dead_letter(msg, as_of)])
            return
        keys = list(self.keys_of(msg.partition))
        for start in range(0, len(keys), TICK_BATCH):
            await self.tick_batch(keys[start:start + TICK_BATCH], as_of)
        if as_of > self.clock(msg.partition):
            self.clocks[b"p%d" % msg.partition] = b"%d" % as_of
        log.info("tick as of %s: %d customers of partition %d", format_instant(as_of), len(keys),
                 msg.partition)

    async def tick_batch(self, keys: list[bytes], as_of: int) -> None:
        now = now_us()
        outcomes = [(key, step.handle_tick(self.customers[key], as_of, self.grading, now))
                    for key in keys]
        await self.sink.publish([out for _, outcome in outcomes for out in outcome.outputs])
        for key, outcome in outcomes:
            if outcome.state is not None:
                self.customers[key] = outcome.state

    def keys_of(self, partition: int) -> Iterator[bytes]:
        """The stored customers whose key belongs to ``partition``."""
        for key in list(self.customers.keys()):
            if partition_of(key, self.partitions) == partition:
                yield key

    def clock(self, partition: int) -> int:
        """The latest tick seen on ``partition`` (0 if none)."""
        value = self.clocks.get(b"p%d" % partition)
        return int(value) if value else 0


def create_app(settings: Settings, grading: Grading, options: StreamOptions,
               sink: OutputSink | None = None) -> faust.App:
    """The worker's Faust app, wired to its topics, tables and sink."""
    prefix, partitions = settings.topic_prefix, settings.partitions
    app = faust.App(
        f"{prefix}worker", broker=settings.kafka_url, store=table_store(),
        datadir=str(settings.data_dir), web_bind=settings.web_host, web_host=settings.web_host,
        web_port=settings.web_port, topic_partitions=partitions, autodiscover=False,
        table_cleanup_interval=3600.0, consumer_auto_offset_reset="earliest",
        **options.faust_settings,
    )
    if table_store() == "memory://":
        log.warning("no RocksDB binding installed: tables use the memory store and are "
                    "rebuilt from their changelog topics at every start")
    # key_type/value_type bytes make Faust use the "raw" codec for the changelog too.
    customers = app.Table("customers", partitions=partitions, key_type=bytes, value_type=bytes)
    clocks = app.Table("clocks", partitions=partitions, key_type=bytes, value_type=bytes)
    source_names = [prefix + t for t in (*INPUTS, TICKS)]
    app.transport = transport_for(app, source_names)
    source = app.topic(*source_names, partitions=partitions, **RAW)
    outputs = {s: app.topic(prefix + s, **RAW) for s in (TIER_CHANGES, CUSTOMER_TIERS,
                                                         DEAD_LETTERS)}
    ticks = app.topic(prefix + TICKS, partitions=partitions, **RAW)
    processor = Processor(grading, customers, clocks, sink or FaustKafkaSink(outputs),
                          prefix + TICKS, partitions)

    @app.agent(source, name="grade")
    async def grade(stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            await processor.on_message(step.Incoming(m.topic, m.partition, m.offset, m.key,
                                                     m.value))

    if options.live_ticks:
        for tz in grading.timezones:
            app.crontab("0 0 * * *", timezone=ZoneInfo(tz), on_leader=True)(
                _live_tick(ticks, partitions))
    return app


def _live_tick(ticks: Any, partitions: int) -> Any:
    async def live_tick() -> None:
        """Local midnight (so also each month start): tick every partition as of now."""
        value = step.tick_message(now_us(), f"live-{uuid.uuid4()}")
        for partition in range(partitions):
            await ticks.send(key=None, value=value, partition=partition)
        log.info("live tick sent to %d partitions", partitions)

    return live_tick
