"""What grader/stream/faust_patches/seeking.py fixes in Faust and aiokafka, shown on a broker.

Each test runs the dependency as it is ("faust_as_is", asserting its wrong
behaviour, so a release that fixes it shows up as a failing test and the
patch can go) and with the patch ("with_patch"). grader's worker is out of
the picture: a bare Faust App whose transport is, or is not, grader's
(``transport_for``), and a plain aiokafka consumer where aiokafka is the one
at fault. Faust's consumer thread is not started: its methods run on the
test's loop against an aiokafka consumer the test started (``on_this_loop``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka import TopicPartition
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from grader.stream.faust_patches.seeking import GraderConsumerThread, transport_for
from grader.stream.progress import SourceProgress
from tests.integration.conftest import Server


def new_topic(broker: Server, partitions: int) -> str:
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    return topic


def produce(broker: Server, topic: str, partition: int, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for n in range(count):
        producer.send(topic, value=b"%d" % n, partition=partition)
    producer.flush()
    producer.close()


async def commit(broker: Server, group: str, offsets: dict[Any, int]) -> None:
    """Commit ``offsets`` for ``group`` from a consumer of its own."""
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group,
                                         enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def faust_app(broker: Server, patched: bool, topic: str, **options: Any) -> Any:
    """A Faust App, with grader's transport (``topic`` its input) when ``patched``."""
    app = faust.App(f"seek-{uuid.uuid4().hex[:8]}", broker=broker.url)
    if patched:
        app.transport = transport_for(app, [topic], [broker.bootstrap], {},
                                      options.get("true_end_offsets", False),
                                      options.get("fetch_max_wait_ms"),
                                      SourceProgress(stall_after=2.0))
    return app


def on_this_loop(thread: Any, consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Run ``thread``'s calls on the caller's loop, with ``consumer`` as its aiokafka consumer."""
    async def call_thread(fun: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        return await fun(*args, **kw)

    thread._consumer = consumer
    thread.call_thread = call_thread


def run_with(app: Any, test: Callable[[], Awaitable[None]]) -> None:
    """``test()`` on Faust's loop, then the loops Faust made closed (as test_progress.py)."""
    loop = app.loop
    try:
        loop.run_until_complete(test())
    finally:
        loop.close()
        app.consumer._thread.thread_loop.close()
        asyncio.set_event_loop(None)


kafka_only = pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
as_is_or_patched = pytest.mark.parametrize("patched", [False, True],
                                           ids=["faust_as_is", "with_patch"])


@kafka_only
def test_aiokafka_seek_to_committed_skips_a_never_committed_partition(broker: Server) -> None:
    """aiokafka alone: a partition without a committed offset keeps its position."""
    topic = new_topic(broker, 1)
    produce(broker, topic, 0, 10)
    tp = TopicPartition(topic, 0)

    async def run() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=broker.bootstrap,
                                             group_id=f"g-{uuid.uuid4().hex[:8]}",
                                             enable_auto_commit=False,
                                             auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([tp])
            fetched = await consumer.getmany(tp, timeout_ms=10_000)
            assert [r.offset for r in fetched[tp]] == list(range(10))
            assert await consumer.seek_to_committed() == {tp: None}
            # the records fetched are not fetched again: auto_offset_reset="earliest"
            # would read them, seek_to_committed leaves the position past them
            assert await consumer.position(tp) == 10
        finally:
            await consumer.stop()

    asyncio.run(run())


@kafka_only
@as_is_or_patched
def test_seek_to_committed_rewinds_what_was_fetched(broker: Server, patched: bool) -> None:
    """Faust's perform_seek after an assignment: records fetched before it are read again.

    Partition 0 was committed at 4, partition 1 never; both were fetched to
    their end (10, from 4 and from 0), as Faust fetches while its tables recover and drops what
    the flow control clears. Faust's seek (aiokafka's seek_to_committed) moves
    partition 0 back to 4 and leaves partition 1 at 10: its records 0-9 are
    never delivered. grader's thread (GraderConsumerThread) moves it to its
    beginning.
    """
    topic = new_topic(broker, 2)
    produce(broker, topic, 0, 10)
    produce(broker, topic, 1, 10)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    app = faust_app(broker, patched, topic)
    faust_consumer = app.consumer

    async def run() -> None:
        await commit(broker, app.conf.id, {tps[0]: 4})
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=broker.bootstrap,
                                             group_id=app.conf.id, enable_auto_commit=False,
                                             auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign(tps)
            fetched: dict[Any, list[int]] = {tp: [] for tp in tps}
            for _ in range(50):
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    fetched[tp] += [r.offset for r in records]
                if fetched == {tps[0]: list(range(4, 10)), tps[1]: list(range(10))}:
                    break
            assert fetched == {tps[0]: list(range(4, 10)), tps[1]: list(range(10))}
            on_this_loop(faust_consumer._thread, consumer)
            if patched:
                faust_consumer.sought = {}
            committed = await faust_consumer._thread.seek_to_committed()
            assert committed == {tps[0]: 4, tps[1]: None}
            positions = [await consumer.position(tp) for tp in tps]
            if patched:
                assert positions == [4, 0]
                assert faust_consumer.sought == {tps[0]: 4, tps[1]: 0}
            else:
                # when this fails, aiokafka rewinds never-committed partitions:
                # GraderConsumerThread.seek_to_committed may go
                assert positions == [4, 10], "aiokafka now rewinds a never-committed partition"
        finally:
            await consumer.stop()

    run_with(app, run)


tansu_only = pytest.mark.parametrize("broker", ["tansu"], ids=["on_tansu"], indirect=True)


@tansu_only
@as_is_or_patched
def test_end_offsets_of_a_batched_partition(broker: Server, patched: bool) -> None:
    """Faust's highwaters (which its table recovery reads up to) on tansu.

    Partition 0 holds 3 records sent one by one, then a batch of 9 (offsets
    3-11). tansu's ListOffsets answers 4, the last batch's base + 1: Faust's
    recovery would stop there and lose offsets 4-11. With ``true_end_offsets``
    (ResumingConsumer.highwaters) it is 12.
    """
    topic = new_topic(broker, 1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200)
    for n in range(3):
        producer.send(topic, value=b"%d" % n, partition=0)
        producer.flush()
    batch = [producer.send(topic, value=b"%d" % n, partition=0) for n in range(9)]
    producer.flush()
    producer.close()
    assert [f.get().offset for f in batch] == list(range(3, 12))
    tp = TopicPartition(topic, 0)
    app = faust_app(broker, patched, topic, true_end_offsets=True)

    async def run() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            on_this_loop(app.consumer._thread, consumer)
            ends = await app.consumer.highwaters(tp)
            if patched:
                assert ends == {tp: 12}
            else:
                # when this fails, tansu answers the true end: the quirk may go
                assert ends == {tp: 4}, "tansu's ListOffsets now answers the true end"
        finally:
            await consumer.stop()

    run_with(app, run)


@tansu_only
@as_is_or_patched
def test_the_fetch_wait_reaches_aiokafkas_fetcher(broker: Server, patched: bool) -> None:
    """Faust gives aiokafka fetch_max_wait_ms=1500 whatever its settings; tansu holds
    every empty Fetch that long (bench/tansu_fetch_wait.py measures it). With
    ``fetch_max_wait_ms`` (GraderConsumerThread._create_worker_consumer) the
    consumer's Fetcher, made when it starts, waits 20 ms."""
    app = faust_app(broker, patched, "src", fetch_max_wait_ms=20)
    thread = app.consumer._thread
    assert isinstance(thread, GraderConsumerThread) == patched  # transport_for's doing

    async def run() -> None:
        consumer = thread._create_worker_consumer(app.transport)
        await consumer.start()
        try:
            assert consumer._fetcher._fetch_max_wait_ms == (20 if patched else 1500)
        finally:
            await consumer.stop()

    run_with(app, run)
