"""Measure how long a record waits when it arrives during a consumer's Fetch wait.

    python bench/tansu_fetch_wait.py [--wait-ms 1500] [--rounds 5]

Kafka completes a waiting Fetch as soon as new records arrive (long poll), so
a record reaches an idle consumer within milliseconds whatever
``fetch_max_wait_ms`` is. tansu lets the Fetch run its whole wait. This
prints, for each round, the time from the acknowledged send of one record,
produced while the consumer was idle, to its arrival. The worker's
``GRADER_BROKER_QUIRKS=tansu`` sets a 20 ms fetch wait because of it
(docs/tansu.md, docs/streaming.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grader.devtools.services import start_broker


async def rounds(bootstrap: str, wait_ms: int, count: int) -> list[float]:
    import aiokafka

    topic = f"fetch-wait-{time.monotonic_ns()}"
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(topic, b"first", partition=0)
    consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                         fetch_max_wait_ms=wait_ms,
                                         auto_offset_reset="earliest")
    await consumer.start()
    await consumer.getone()
    delays = []
    try:
        for n in range(count):
            await asyncio.sleep(0.2 + 0.1 * n)  # the consumer is waiting in a Fetch
            await producer.send_and_wait(topic, b"%d" % n, partition=0)
            sent = time.monotonic()
            await consumer.getone()
            delays.append(time.monotonic() - sent)
    finally:
        await consumer.stop()
        await producer.stop()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-ms", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with start_broker() as broker:
        delays = asyncio.run(rounds(broker.bootstrap, args.wait_ms, args.rounds))
    print(f"tansu, fetch_max_wait_ms={args.wait_ms}: record produced during an idle fetch "
          f"arrived after " + ", ".join(f"{d * 1000:.0f}" for d in delays) + " ms "
          f"(median {statistics.median(delays) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
