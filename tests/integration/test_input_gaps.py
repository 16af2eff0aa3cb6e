"""Offsets of an input partition that hold no record: the worker's commits go past them.

A producer that writes the input topics transactionally leaves a control
record (the commit marker) after each transaction: an offset no consumer is
handed. The worker commits an input partition only over offsets whose record
it graded (grader.stream.progress.SourceProgress), so without the repair of
stalled partitions (grader.stream.faust_patches.seeking,
``ResumingConsumer.repair_stalled``), which skips offsets a fetch shows to
hold no record, its committed offset would stop at the first marker for good,
and every restart would read the partition again from there. Apache Kafka
only: tansu has no transactions.
"""

from __future__ import annotations

import asyncio
import uuid

import aiokafka
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from grader.core.topology import partition_of
from tests.integration.conftest import Server, Stream, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4  # the worker's (tests/integration/conftest.py worker_env)


def sale(customer: str, n: int) -> bytes:
    return orjson.dumps({"event_id": str(uuid.uuid4()), "type": "sale", "customer_id": customer,
                         "occurred_at": f"2026-10-{n + 1:02d}T10:00:00+08:00",
                         "amount": f"{1000 + n}", "currency": "CNY"})


async def produce_in_transactions(broker: Server, topic: str, customer: str,
                                  transactions: int, each: int) -> None:
    """``transactions`` committed transactions of ``each`` sales of ``customer``."""
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                         transactional_id=f"gaps-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        n = 0
        for _ in range(transactions):
            async with producer.transaction():
                for _ in range(each):
                    await producer.send_and_wait(topic, sale(customer, n),
                                                 key=customer.encode())
                    n += 1
    finally:
        await producer.stop()


def committed(stream: Stream, tp: TopicPartition) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=stream.broker.bootstrap,
                             group_id=f"{stream.prefix}worker", enable_auto_commit=False)
    try:
        return consumer.committed(tp)
    finally:
        consumer.close()


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
def test_commits_go_past_the_markers_of_a_transactional_producer(stream: Stream) -> None:
    worker = stream.start_worker()
    worker.wait_ready()
    customer = "GAP-1"
    tp = TopicPartition(stream.prefix + "transactions",
                        partition_of(customer.encode(), PARTITIONS))
    # offsets 0-2, a marker at 3, 4-6, a marker at 7, 8-10, a marker at 11
    asyncio.run(produce_in_transactions(stream.broker, tp.topic, customer, 3, 3))
    # The last marker has no record after it, so nothing shows it holds none: the
    # committed offset may rest on it (a restart reads nothing again from there).
    wait_for(lambda: (committed(stream, tp) or 0) >= 11, 60,
             "the committed offset at 11 or past, over the transactions' markers")
    assert "hold no record; skipped" in worker.log()
    assert worker.stop() == 0
