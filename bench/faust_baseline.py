"""A plain Faust app: the baseline that bench/worker_bench.py measures `grader worker` against.

    python bench/faust_baseline.py --url kafka://HOST:PORT --prefix P --partitions 4
                                   --data-dir DIR --web-port N [--quirks tansu|none]

One agent consumes the same topics as the worker's agent (``P`` + the four
input topics, the repartition and the ticks topic; raw bytes), and for each
message, one at a time, the usual Faust idiom:

1. parses the value with orjson (a line that is not JSON is kept as ``None``);
2. updates one table: ``counts[key]``, the number of messages seen for the
   message key (the customer id), read and written back as bytes, in a
   Faust table with the same store as the worker (RocksDB when ``rocksdict``
   is installed, else memory) and the same partition count;
3. sends one record to ``P`` + ``baseline-out``, keyed by the customer id,
   whose value names the event (``event_id``) so that the benchmark can
   time it as it times the worker's tier changes.

Nothing else: no batching, no validation, no dedup, no waiting for the
broker's acknowledgements before the next message. Faust's own
at-least-once machinery decides when offsets are committed (every
``broker_commit_every`` messages or ``broker_commit_interval`` seconds, after
flushing its producer).

What it shares with the worker, so that the ratio is about the per-message
work and not the setup: the Faust app settings that depend on the broker
(grader.stream.options: on tansu a 6 s session, a 1 s heartbeat and a 20 ms
consumer fetch wait, since tansu does not end a waiting fetch early; on
Kafka a 10 s session and Faust's fetch wait), uvloop, and the worker's
garbage-collector thresholds (grader.stream.worker).

Progress is logged exactly as the worker logs it: one line ``processed N
messages since start`` each time N passes a multiple of 10,000, which
worker_bench.py's ``progress_marks`` reads. Faust logs ``Worker ready`` once
its partitions are assigned and its table recovered.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grader.core.topology import INPUTS, REPARTITION, TICKS  # noqa: E402
from grader.stream.options import StreamOptions  # noqa: E402
from grader.stream.worker import tune_gc, use_uvloop  # noqa: E402

log = logging.getLogger("faust_baseline")
OUTPUT = "baseline-out"  # topic suffix of the baseline's one record per message
LOG_EVERY = 10_000  # messages between two progress lines, as the worker
RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}


def fetch_wait_transport(app: Any, fetch_max_wait_ms: int) -> Any:
    """Faust's aiokafka transport, with the consumer's fetch wait set (Faust fixes 1,500 ms)."""
    from faust.transport.drivers import aiokafka as driver

    class FetchWaitThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by its Fetcher at start
            return consumer

    class FetchWaitConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return FetchWaitThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = FetchWaitConsumer

    return Transport(app.conf.broker_consumer, app)


def create_app(url: str, prefix: str, partitions: int, data_dir: Path, web_port: int,
               options: StreamOptions) -> Any:
    """The baseline's Faust app: one table, one agent, one output topic."""
    import faust

    store = "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"
    app = faust.App(
        f"{prefix}baseline", broker=url, store=store, datadir=str(data_dir),
        web_bind="127.0.0.1", web_host="127.0.0.1", web_port=web_port,
        topic_partitions=partitions, autodiscover=False, consumer_auto_offset_reset="earliest",
        **options.faust_settings,
    )
    if options.fetch_max_wait_ms is not None:
        app.transport = fetch_wait_transport(app, options.fetch_max_wait_ms)
    counts = app.Table("counts", partitions=partitions, key_type=bytes, value_type=bytes)
    source = app.topic(*(prefix + t for t in (*INPUTS, REPARTITION, TICKS)),
                       partitions=partitions, **RAW)
    output = app.topic(prefix + OUTPUT, partitions=partitions, **RAW)

    @app.agent(source, name="baseline")
    async def process(stream: Any) -> None:
        done = 0
        async for event in stream.events():
            key: bytes = event.key or b""
            try:
                doc = orjson.loads(event.value)
            except orjson.JSONDecodeError:
                doc = None
            if not isinstance(doc, dict):
                doc = {}
            customer = doc.get("customer_id")
            customer_key = customer.encode() if isinstance(customer, str) else key
            count = int(counts.get(key) or b"0") + 1
            counts[key] = b"%d" % count
            await output.send(key=customer_key, value=orjson.dumps(
                {"customer_id": customer, "event_id": doc.get("event_id"), "count": count}))
            done += 1
            if done % LOG_EVERY == 0:
                log.info("processed %d messages since start", done)

    @app.task  # type: ignore[untyped-decorator]
    async def report_loop() -> None:
        import asyncio

        loop = type(asyncio.get_running_loop())
        log.info("baseline: store %s, event loop %s.%s", store, loop.__module__,
                 loop.__qualname__)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description="A plain Faust baseline for worker_bench.py.")
    parser.add_argument("--url", required=True, help="kafka://host:port")
    parser.add_argument("--prefix", required=True, help="topic prefix (as GRADER_TOPIC_PREFIX)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--quirks", choices=("none", "tansu"), default="none",
                        help="broker quirks, as GRADER_BROKER_QUIRKS")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    use_uvloop()
    import faust

    app = create_app(args.url, args.prefix, args.partitions, args.data_dir, args.web_port,
                     StreamOptions(broker_quirks=args.quirks))
    tune_gc()
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
