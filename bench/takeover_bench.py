"""How long a worker takes to take over a partition whose state it does not hold.

    python bench/takeover_bench.py [--broker kafka|tansu] [--customers 50000]
                                   [--templates 2000] [--events-per-customer 20]
                                   [--policies abc-100,sabcd-weighted,stars] [--keep DIR]
                                   [--event-ids uuid|serial]

With standby replicas off (docs/streaming.md, "Standby replicas"), a worker
that is given a partition it did not write (a takeover after a crash, a
scale-out, a lost data dir) reads that partition's whole customers
changelog (compacted: one record per customer) before it grades anything.

1. One broker (Apache Kafka by default, single node, KRaft); topics with one
   partition (``GRADER_PARTITIONS=1``), so the one partition holds every
   customer.
2. Templates: a `grader worker` grades a generated stream of ``--templates``
   customers (``--events-per-customer`` events each, 11 months), so their
   changelog records are real ones (state, tiers, the last outputs); it stops.
3. The changelog partition gets ``--customers`` records in all: the template
   records again, each under new customer ids (a state is decoded, renamed,
   encoded again), so the records have the sizes of real ones.
4. A worker with an empty data dir starts: the figures are from its start to
   "Worker ready", and Faust's restore (from the recovery's "Resuming flow" to
   its "Recovery complete", the worker's own log clock).
5. The same worker restarts on its data dir: its store holds the partition,
   so only the changelog's tail is read (the contrast).

Everything runs on this machine (broker, worker, producer).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import graderexe  # noqa: E402
from bench.generate_events import generate  # noqa: E402
from bench.kafkapython import kafka_module  # noqa: E402
from bench.worker_bench import (  # noqa: E402
    AS_OF,
    Process,
    cpu_model,
    describe_broker,
    quirks,
    start_server,
)
from grader.core.step import decode_record, encode_record  # noqa: E402
from grader.devtools.services import KafkaProtocolServer, free_port  # noqa: E402

CHANGELOG = "worker-customers-changelog"
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def start_worker(broker: KafkaProtocolServer, args: Any, prefix: str, data: Path,
                 log: Path) -> Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env.update({
        "GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
        "GRADER_PARTITIONS": "1", "GRADER_POLICIES": args.policies,
        "GRADER_CONFIG_DIR": str(ROOT / "config"), "GRADER_DATA_DIR": str(data),
        "GRADER_WEB_PORT": str(free_port()), "GRADER_BROKER_QUIRKS": quirks(args.broker),
        "GRADER_LIVE_TICKS": "0", "GRADER_LOG_LEVEL": "info", "GRADER_REDIS_URL": "",
    })
    return Process([*graderexe.command(args.grader), "worker"], env, log)


def logged_at(log: str, text: str) -> float:
    """The time (s since the epoch, the worker's clock) of the last line holding ``text``."""
    line = [ln for ln in log.splitlines() if text in ln][-1]
    found = STAMP.match(line)
    assert found, line
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_changelog(broker: KafkaProtocolServer, topic: str) -> dict[bytes, bytes]:
    """The latest value per key of ``topic`` (one partition)."""
    module = kafka_module()
    consumer = module.KafkaConsumer(bootstrap_servers=broker.bootstrap,
                                    enable_auto_commit=False)
    try:
        tp = module.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        latest: dict[bytes, bytes] = {}
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                latest.update((r.key, r.value) for r in records)
        return latest
    finally:
        consumer.close()


def wait_graded(broker: KafkaProtocolServer, topic: str, customers: int,
                timeout: float = 600) -> dict[bytes, bytes]:
    """The changelog once it holds ``customers`` keys, or 90% of them and stopped growing
    (a customer with nothing but tickets may have no record)."""
    deadline = time.monotonic() + timeout
    before = -1
    while True:
        latest = read_changelog(broker, topic)
        if len(latest) >= customers or (len(latest) == before and len(latest) >= customers * 0.9):
            return latest
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(latest)} of {customers} customers graded")
        before = len(latest)
        time.sleep(5)


def fill_changelog(broker: KafkaProtocolServer, topic: str, templates: list[bytes],
                   customers: int) -> int:
    """``customers`` records on partition 0 of ``topic``, cloned from ``templates`` under
    new customer ids; the bytes sent."""
    module = kafka_module()
    producer = module.KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    linger_ms=50, batch_size=1 << 20,
                                    max_request_size=8 << 20)
    sent = 0
    try:
        for n in range(customers):
            record = decode_record(templates[n % len(templates)])
            customer = f"T{n:09d}"
            record.state.customer_id = customer
            value = encode_record(record.state, record.epoch, record.pending, record.support)
            producer.send(topic, key=customer.encode(), value=value, partition=0)
            sent += len(value) + len(customer)
        producer.flush()
    finally:
        producer.close()
    return sent


def with_uuids(lines: list[bytes]) -> list[bytes]:
    """The lines with each event id replaced by a UUID, as producers make them (seeded)."""
    rng = random.Random(11)
    out = []
    for line in lines:
        record = orjson.loads(line)
        record["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        out.append(orjson.dumps(record))
    return out


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description="Time a worker's takeover of one partition.")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--templates", type=int, default=2_000)
    parser.add_argument("--events-per-customer", type=int, default=20)
    parser.add_argument("--policies", default="abc-100,sabcd-weighted,stars")
    parser.add_argument("--event-ids", choices=("uuid", "serial"), default="uuid",
                        help="the templates' event ids: UUIDs (as producers make them) or "
                             "the generator's serial numbers (e-0000123)")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and data here")
    graderexe.add_argument(parser)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the broker on the way out
    print(f"machine: {platform.platform()}, {cpu_model()}, {len(os.sched_getaffinity(0))} "
          f"CPUs, Python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"broker: {describe_broker(args.broker)}; 1 partition; policies {args.policies}; "
          f"core {graderexe.core(args.grader)}; {args.customers:,} customers from "
          f"{args.templates:,} templates of {args.events_per_customer} events each "
          f"({args.event_ids} event ids)")
    with tempfile.TemporaryDirectory() as tmp, start_server(args.broker) as broker:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prefix = f"b{uuid.uuid4().hex[:8]}."
        topic = prefix + CHANGELOG

        events = work / "templates.jsonl"
        lines = list(generate(args.templates, args.templates * args.events_per_customer,
                              seed=11, as_of=AS_OF, months=11, duplicates=0.0, bad=0.0))
        if args.event_ids == "uuid":
            lines = with_uuids(lines)
        events.write_bytes(b"\n".join(lines) + b"\n")
        graded = len({orjson.loads(line)["customer_id"] for line in lines})
        first = start_worker(broker, args, prefix, work / "data-a", work / "a.log")
        first.wait_ready(120)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
        env.update({"GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
                    "GRADER_PARTITIONS": "1", "GRADER_POLICIES": args.policies,
                    "GRADER_CONFIG_DIR": str(ROOT / "config")})
        subprocess.run([*graderexe.command(args.grader), "produce", str(events)], env=env,
                       check=True, capture_output=True)
        templates = list(wait_graded(broker, topic, graded).values())
        first.stop()
        print(f"templates: {len(templates):,} records, "
              f"{sum(map(len, templates)) / len(templates):,.0f} bytes each on average")

        started = time.monotonic()
        size = fill_changelog(broker, topic, templates, args.customers - len(templates))
        size += sum(map(len, templates))
        print(f"changelog: {args.customers:,} records, {size / 1e6:,.1f} MB, written in "
              f"{time.monotonic() - started:.1f} s")

        for name, data in (("takeover (empty data dir)", work / "data-b"),
                           ("restart on its own store", work / "data-b")):
            log_path = work / f"{name.split()[0]}.log"
            spawned = time.time()
            worker = start_worker(broker, args, prefix, data, log_path)
            worker.wait_ready(1800)
            ready = time.time()
            cpu = worker.cpu_seconds()
            log = worker.log()
            worker.stop()
            begin = logged_at(log, "Recovery]: Resuming flow")
            done = logged_at(log, "Recovery]: Recovery complete")
            restore = done - begin
            read = (f"{args.customers / restore:,.0f} records/s, {size / 1e6 / restore:,.1f} "
                    "MB/s if the whole changelog" if restore >= 0.1 else "the tail only")
            print(f"{name}: start to ready {ready - spawned:.1f} s; restore {restore:.1f} s "
                  f"({read}); worker CPU from start to ready {cpu:.1f} s; "
                  f"load average {os.getloadavg()[0]:.2f}")
        print(f"data dir after the takeover: {du(work / 'data-b') / 1e6:,.1f} MB")
        print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
