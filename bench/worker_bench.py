"""Benchmark `grader worker` on the local tansu broker: throughput, then latency.

    python bench/worker_bench.py [--events 60000] [--customers 6000] [--partitions 4]
                                 [--policies abc-100,sabcd-weighted,stars] [--fraction 0.5]
                                 [--seconds 20]

1. **Sustained throughput.** The input topics are filled first (a generated
   file: payments, refunds, duplicates, bad lines), then one worker starts.
   The figure is the rate between the worker's first and last "graded N
   messages since start" log lines (every 10,000 messages), so neither its
   start-up nor Faust's commit interval counts. The run ends when the group
   has committed every input offset.
2. **Latency at a fraction of that rate** (default half). A fresh topic
   prefix and worker; events are produced at a steady rate for ``--seconds``;
   a consumer reads tier-changes. The latency of a tier change is the time
   it reached that consumer minus the producer's timestamp of the event that
   caused it (``cause.event_id``), both on this machine's clock.

Everything runs on this machine (broker, worker, producer, consumer), so the
figures are for the whole pipeline on 2 cores. Report them with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate_events import generate  # noqa: E402
from grader import nativecore  # noqa: E402
from grader.services import Broker, free_port, start_broker  # noqa: E402
from grader.stream.admin import kafka_module  # noqa: E402
from grader.stream.produce import route  # noqa: E402

AS_OF = "2026-11-22T00:00:00+08:00"


class Worker:
    """One `grader worker` process under a topic prefix; its log goes to a file."""

    def __init__(self, broker: Broker, prefix: str, partitions: int, policies: str,
                 workdir: Path) -> None:
        self.prefix = prefix
        self.log_path = workdir / f"{prefix}log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
        env.update({
            "GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
            "GRADER_PARTITIONS": str(partitions), "GRADER_POLICIES": policies,
            "GRADER_CONFIG_DIR": str(ROOT / "config"),
            "GRADER_DATA_DIR": str(workdir / f"{prefix}data"),
            "GRADER_WEB_PORT": str(free_port()), "GRADER_BROKER_QUIRKS": "tansu",
            "GRADER_LIVE_TICKS": "0", "GRADER_LOG_LEVEL": "info",
        })
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "grader", "worker"], env=env,
                                            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker logs that it is ready (partitions assigned, tables recovered)."""
        deadline = time.monotonic() + timeout
        while "Worker ready" not in self.log_path.read_text(errors="replace"):
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            if time.monotonic() > deadline:
                raise SystemExit(f"worker not ready:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker process has used so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def routed(lines: list[bytes]) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic suffix, key, line) of each routable line (others are not sent)."""
    for line in lines:
        where = route(line)
        if isinstance(where, tuple):
            yield where[0], where[1], line


def create_topics(broker: Broker, prefix: str, partitions: int) -> None:
    from grader.stream.admin import ensure_topics
    from grader.stream.topology import load_topics

    ensure_topics(broker.url, load_topics(prefix, partitions).values())


def fill(broker: Broker, prefix: str, lines: list[bytes]) -> dict[tuple[str, int], int]:
    """Send every routable line; the end offset of each partition written to."""
    kafka = kafka_module()
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    futures = [producer.send(prefix + topic, key=key, value=line)
               for topic, key, line in routed(lines)]
    producer.flush()
    producer.close()
    ends: dict[tuple[str, int], int] = {}
    for future in futures:
        meta = future.get()
        where = (meta.topic, meta.partition)
        ends[where] = max(ends.get(where, 0), meta.offset + 1)
    return ends


def committed(admin: Any, group: str, ends: dict[tuple[str, int], int]) -> int:
    """How many input messages the group has committed (offsets summed, capped at ends)."""
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    except kafka_module().errors.KafkaError:  # not yet known to the coordinator
        return 0
    total = 0
    for tp, meta in offsets.items():
        end = ends.get((tp.topic, tp.partition))
        if end is not None and meta.offset > 0:
            total += min(meta.offset, end)
    return total


def progress_marks(log: str) -> list[tuple[float, int]]:
    """(seconds, messages) of each "graded N messages since start" line of a worker log."""
    import re
    from datetime import datetime

    marks = []
    for match in re.finditer(r"^\[(\S+ \S+)\].*graded (\d+) messages since start", log, re.M):
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        marks.append((when, int(match.group(2))))
    return marks


def throughput(broker: Broker, args: Any, lines: list[bytes], workdir: Path) -> float:
    """Sustained events/s of one worker draining pre-filled input topics."""
    kafka = kafka_module()
    prefix = f"wb{uuid.uuid4().hex[:6]}."
    create_topics(broker, prefix, args.partitions)
    ends = fill(broker, prefix, lines)
    total = sum(ends.values())
    admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    worker = Worker(broker, prefix, args.partitions, args.policies, workdir)
    samples: list[tuple[float, int]] = []
    broker_cpu = cpu_seconds(broker.process.pid)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = committed(admin, f"{prefix}worker", ends)
            samples.append((time.monotonic(), done))
            if done >= total:
                worker_cpu = worker.cpu_seconds()
                broker_cpu = cpu_seconds(broker.process.pid) - broker_cpu
                break
            assert worker.process.poll() is None, worker.log_path.read_text()[-3000:]
            time.sleep(0.1)
        else:
            raise SystemExit(f"worker did not finish: {samples[-1][1]} of {total} committed")
    finally:
        worker.stop()
        admin.close()

    marks = progress_marks(worker.log_path.read_text(errors="replace"))
    if len(marks) < 2:
        raise SystemExit("too few progress lines in the worker log: use more --events")
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    rate = (n_last - n_first) / (t_last - t_first)
    print(f"throughput: {total} input messages, {rate:,.0f} events/s sustained (from the "
          f"worker's progress lines at {n_first:,} and {n_last:,} messages), all committed "
          f"{samples[-1][0] - samples[0][0]:.1f} s after the worker started")
    print(f"CPU per input message: worker {worker_cpu / total * 1e6:.0f} us (including its "
          f"start-up), broker {broker_cpu / total * 1e6:.0f} us")
    return rate


def latency(broker: Broker, args: Any, lines: list[bytes], rate: float, workdir: Path) -> None:
    """p50/p99 from an event's production to its tier change, at ``rate`` events/s."""
    kafka = kafka_module()
    prefix = f"wl{uuid.uuid4().hex[:6]}."
    create_topics(broker, prefix, args.partitions)
    worker = Worker(broker, prefix, args.partitions, args.policies, workdir)
    worker.wait_ready()
    seen: dict[str, float] = {}  # cause event_id -> first arrival of a tier change (s)
    stamped: dict[str, float] = {}  # cause event_id -> the tier change's record timestamp (s)
    stop = threading.Event()

    def consume() -> None:
        consumer = kafka.KafkaConsumer(prefix + "tier-changes", bootstrap_servers=broker.bootstrap,
                                       auto_offset_reset="earliest", fetch_max_wait_ms=10)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=50).values():
                arrived = time.time()
                for record in batch:
                    cause = orjson.loads(record.value)["cause"].get("event_id")
                    if cause:
                        seen.setdefault(cause, arrived)
                        stamped.setdefault(cause, record.timestamp / 1000)
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = kafka.KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=1)
    sent: dict[str, float] = {}
    todo = list(routed(lines))
    count = min(len(todo), int(rate * args.seconds))
    start = time.monotonic()
    for n, (topic, key, line) in enumerate(todo[:count]):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamp = time.time()
        producer.send(prefix + topic, key=key, value=line, timestamp_ms=int(stamp * 1000))
        event_id = orjson.loads(line).get("event_id")
        if isinstance(event_id, str):
            sent.setdefault(event_id, stamp)
    producer.flush()
    producer.close()
    achieved = count / (time.monotonic() - start)
    time.sleep(3)
    stop.set()
    reader.join()
    worker.stop()
    waits = sorted((seen[e] - sent[e]) * 1000 for e in seen if e in sent)
    if not waits:
        raise SystemExit("no tier change was seen")
    p50 = statistics.median(waits)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    print(f"latency at {achieved:,.0f} events/s for {args.seconds} s: {len(waits)} tier changes, "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {waits[-1]:.0f} ms (produced -> consumed)")
    made = sorted((stamped[e] - sent[e]) * 1000 for e in stamped if e in sent)
    print(f"  of which produced -> the worker's send of the tier change: "
          f"p50 {statistics.median(made):.0f} ms, "
          f"p99 {made[min(len(made) - 1, int(0.99 * len(made)))]:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark grader worker on tansu.")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=6_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--policies", default="abc-100,sabcd-weighted,stars")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="latency run at this fraction of the measured throughput")
    parser.add_argument("--rate", type=float, default=None,
                        help="latency run at this rate instead (events/s)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the worker logs in this directory")
    args = parser.parse_args()
    lines = list(generate(args.customers, args.events, seed=7, as_of=AS_OF, months=11))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}; "
          f"tansu in memory; {args.partitions} partitions; policies {args.policies}; "
          f"core {nativecore.status()}")
    with tempfile.TemporaryDirectory() as tmp, start_broker() as broker:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rate = throughput(broker, args, lines, workdir)
        if not args.skip_latency:
            fresh = list(generate(args.customers, args.events, seed=8, as_of=AS_OF, months=11))
            latency(broker, args, fresh, args.rate or rate * args.fraction, workdir)


if __name__ == "__main__":
    main()
