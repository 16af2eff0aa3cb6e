"""Benchmark `grader worker` against a plain Faust baseline, on tansu or Apache Kafka.

    python bench/worker_bench.py [--broker tansu|kafka] [--events 60000] [--customers 6000]
                                 [--partitions 4] [--policies abc-100,sabcd-weighted,stars]
                                 [--fraction 0.5] [--rate R] [--seconds 20] [--rounds 1]
                                 [--skip-baseline] [--skip-latency] [--keep DIR]
                                 [--at-risk-ab]

One broker is started (tansu in memory, or a single-node Apache Kafka in
KRaft mode, grader.devtools.kafkabroker), and on it, with the same generated input,
two systems are measured one after the other: ``grader`` (one `grader
worker`, ``GRADER_BROKER_QUIRKS=tansu`` on tansu, ``none`` on Kafka) and
``baseline`` (bench/faust_baseline.py: a plain Faust agent that parses each
message, updates one table entry and sends one record).

1. **Sustained throughput.** Fresh input topics are filled first (a generated
   file: payments, refunds, duplicates, bad lines), then one process starts.
   The figure is the rate between its first and last "graded / processed N
   messages since start" log lines (every 10,000 messages), so neither its
   start-up nor Faust's commit interval counts. The run ends when its group
   has committed every input offset.
2. **Latency at one offered rate for both** (``--rate``, else ``--fraction``,
   default half, of the slower system's throughput in the first round, so
   that neither runs at its limit). A fresh topic
   prefix and process; events are produced at a steady rate for
   ``--seconds``; a consumer reads the outputs. For grader the latency of a
   tier change is the time it reached that consumer minus the producer's
   timestamp of the event that caused it (``cause.event_id``); for the
   baseline, every event gives one record naming its ``event_id``. Both on
   this machine's clock.

``--at-risk-ab`` measures, instead of the baseline, the same worker without
the tier at risk (``GRADER_BENCH_WITHOUT_AT_RISK=1``; throughput only, with
``--skip-latency``), and prints the ratio: the cost of issue 23 in the worker.

With ``--rounds N`` this is repeated N times, the order of the two systems
alternating (grader first in odd rounds), and the medians are printed too.

Everything runs on this machine (broker, worker, producer, consumer), so the
figures are for the whole pipeline on the machine's cores: compare grader
with the baseline of the same run. Report them with the machine line.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import graderexe  # noqa: E402
from bench.faust_baseline import OUTPUT as BASELINE_OUTPUT  # noqa: E402
from bench.generate_events import generate  # noqa: E402
from bench.kafkapython import kafka_module  # noqa: E402
from grader.devtools.services import KafkaProtocolServer, free_port, start_broker  # noqa: E402
from grader.kafka.produce import route  # noqa: E402
from grader.stream.app import AT_RISK_SWITCH  # noqa: E402

AS_OF = "2026-11-22T00:00:00+08:00"
SYSTEMS = ("grader", "baseline")


class Process:
    """One worker process (grader or the baseline) under a topic prefix; its log goes to a file."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        """Until the process logs that it is ready (partitions assigned, tables recovered)."""
        deadline = time.monotonic() + timeout
        while "Worker ready" not in self.log():
            assert self.process.poll() is None, self.log()[-3000:]
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.log_path.name} not ready:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def quirks(broker_name: str) -> str:
    """GRADER_BROKER_QUIRKS for the broker: tansu's workarounds on tansu only."""
    return "tansu" if broker_name == "tansu" else "none"


def start_grader(broker: KafkaProtocolServer, args: Any, prefix: str, workdir: Path,
                 at_risk: bool = True) -> Process:
    """One `grader worker` on ``prefix``; its consumer group is ``prefix`` + "worker".
    ``at_risk`` False: without the tier at risk (grader.stream.app.AT_RISK_SWITCH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    if not at_risk:
        env[AT_RISK_SWITCH] = "1"
    env.update({
        "GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
        "GRADER_PARTITIONS": str(args.partitions), "GRADER_POLICIES": args.policies,
        "GRADER_CONFIG_DIR": str(ROOT / "config"),
        "GRADER_DATA_DIR": str(workdir / f"{prefix}data"),
        "GRADER_WEB_PORT": str(free_port()), "GRADER_BROKER_QUIRKS": quirks(args.broker),
        "GRADER_LIVE_TICKS": "0", "GRADER_LOG_LEVEL": "info",
        "GRADER_REDIS_URL": "",  # no support queues: the figures are for Kafka outputs
    })
    return Process([*graderexe.command(args.grader), "worker"], env, workdir / f"{prefix}log")


def start_baseline(broker: KafkaProtocolServer, args: Any, prefix: str,
                   workdir: Path) -> Process:
    """bench/faust_baseline.py on ``prefix``; its consumer group is ``prefix`` + "baseline"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    command = [sys.executable, str(ROOT / "bench" / "faust_baseline.py"), "--url", broker.url,
               "--prefix", prefix, "--partitions", str(args.partitions),
               "--data-dir", str(workdir / f"{prefix}data"), "--web-port", str(free_port()),
               "--quirks", quirks(args.broker)]
    return Process(command, env, workdir / f"{prefix}log")


STARTERS: dict[str, Callable[[KafkaProtocolServer, Any, str, Path], Process]] = {
    "grader": start_grader, "baseline": start_baseline,
    "grader-without-at-risk": lambda *a: start_grader(*a, at_risk=False)}
GROUPS = {"grader": "worker", "baseline": "baseline", "grader-without-at-risk": "worker"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    """The 1-minute load average, for the record."""
    return f"{os.getloadavg()[0]:.2f}"


def routed(lines: list[bytes]) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic suffix, key, line) of each routable line (others are not sent)."""
    for line in lines:
        where = route(line)
        if isinstance(where, tuple):
            yield where[0], where[1], line


def create_topics(broker: KafkaProtocolServer, prefix: str, partitions: int) -> None:
    """grader's topics under ``prefix``, and the baseline's output topic."""
    from grader.core.topology import TopicSpec, load_topics
    from grader.kafka.admin import ensure_topics

    specs = list(load_topics(prefix, partitions).values())
    specs.append(TopicSpec(BASELINE_OUTPUT, prefix + BASELINE_OUTPUT, "output", partitions,
                           "delete", {}))
    ensure_topics(broker.url, specs)


def fill(broker: KafkaProtocolServer, prefix: str,
         lines: list[bytes]) -> dict[tuple[str, int], int]:
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
    """(seconds, messages) of each progress line of a worker or baseline log:
    "graded N messages since start" (grader) or "processed N messages since start"."""
    marks = []
    for match in re.finditer(r"^\[(\S+ \S+)\].*(?:graded|processed) (\d+) messages since start",
                             log, re.M):
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        marks.append((when, int(match.group(2))))
    return marks


def throughput(system: str, broker: KafkaProtocolServer, args: Any, lines: list[bytes],
               workdir: Path) -> float:
    """Sustained events/s of one process of ``system`` draining pre-filled input topics."""
    kafka = kafka_module()
    prefix = f"wb{uuid.uuid4().hex[:6]}."
    create_topics(broker, prefix, args.partitions)
    ends = fill(broker, prefix, lines)
    total = sum(ends.values())
    admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    worker = STARTERS[system](broker, args, prefix, workdir)
    samples: list[tuple[float, int]] = []
    broker_cpu = cpu_seconds(broker.process.pid)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = committed(admin, prefix + GROUPS[system], ends)
            samples.append((time.monotonic(), done))
            if done >= total:
                worker_cpu = worker.cpu_seconds()
                broker_cpu = cpu_seconds(broker.process.pid) - broker_cpu
                break
            assert worker.process.poll() is None, worker.log()[-3000:]
            time.sleep(0.1)
        else:
            raise SystemExit(f"{system} did not finish: {samples[-1][1]} of {total} committed")
    finally:
        worker.stop()
        admin.close()

    marks = progress_marks(worker.log())
    if len(marks) < 2:
        raise SystemExit(f"too few progress lines in the {system} log: use more --events")
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    rate = (n_last - n_first) / (t_last - t_first)
    print(f"  {system} throughput: {total} input messages, {rate:,.0f} events/s sustained "
          f"(progress lines at {n_first:,} and {n_last:,} messages), all committed "
          f"{samples[-1][0] - samples[0][0]:.1f} s after the process started; load {load()}")
    print(f"    CPU per input message: {system} {worker_cpu / total * 1e6:.0f} us (including "
          f"its start-up), broker {broker_cpu / total * 1e6:.0f} us")
    return rate


@dataclass(frozen=True)
class Latency:
    """One latency run: the achieved offered rate and percentiles in ms."""

    rate: float
    count: int
    p50: float
    p99: float
    worst: float
    sent_p50: float
    sent_p99: float


def percentile(sorted_values: list[float], q: float) -> float:
    """The value at quantile ``q`` of an ascending list (nearest rank, as before)."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def output_causes(system: str, value: bytes) -> str | None:
    """The event_id behind one output record of ``system``."""
    doc = orjson.loads(value)
    cause = doc["cause"].get("event_id") if system == "grader" else doc.get("event_id")
    return cause if isinstance(cause, str) else None


def latency(system: str, broker: KafkaProtocolServer, args: Any, lines: list[bytes],
            rate: float, workdir: Path) -> Latency:
    """p50/p99 from an event's production to its output being read, at ``rate`` events/s."""
    kafka = kafka_module()
    prefix = f"wl{uuid.uuid4().hex[:6]}."
    create_topics(broker, prefix, args.partitions)
    worker = STARTERS[system](broker, args, prefix, workdir)
    worker.wait_ready()
    seen: dict[str, float] = {}  # cause event_id -> first arrival of an output record (s)
    stamped: dict[str, float] = {}  # cause event_id -> that record's timestamp (s)
    stop = threading.Event()
    topic = prefix + ("tier-changes" if system == "grader" else BASELINE_OUTPUT)

    def consume() -> None:
        consumer = kafka.KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                       auto_offset_reset="earliest", fetch_max_wait_ms=10)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=50).values():
                arrived = time.time()
                for record in batch:
                    cause = output_causes(system, record.value)
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
    for n, (suffix, key, line) in enumerate(todo[:count]):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamp = time.time()
        producer.send(prefix + suffix, key=key, value=line, timestamp_ms=int(stamp * 1000))
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
        raise SystemExit(f"no output of {system} was seen")
    made = sorted((stamped[e] - sent[e]) * 1000 for e in stamped if e in sent)
    result = Latency(achieved, len(waits), statistics.median(waits), percentile(waits, 0.99),
                     waits[-1], statistics.median(made), percentile(made, 0.99))
    what = "tier changes" if system == "grader" else "output records"
    print(f"  {system} latency at {achieved:,.0f} events/s for {args.seconds:g} s: "
          f"{result.count} {what}, p50 {result.p50:.0f} ms, p99 {result.p99:.0f} ms, "
          f"max {result.worst:.0f} ms (produced -> consumed); load {load()}")
    print(f"    of which produced -> the {system}'s send: p50 {result.sent_p50:.0f} ms, "
          f"p99 {result.sent_p99:.0f} ms")
    return result


def start_server(name: str) -> AbstractContextManager[KafkaProtocolServer]:
    """The broker to measure on: tansu in memory, or Apache Kafka (single node, KRaft)."""
    if name == "tansu":
        return start_broker()
    from grader.devtools.kafkabroker import kafka_available, start_kafka

    why = kafka_available()
    if why is not None:
        raise SystemExit(f"Apache Kafka cannot run here: {why}")
    return start_kafka()


def describe_broker(name: str) -> str:
    if name == "tansu":
        return "tansu in memory"
    from grader.devtools.kafkabroker import kafka_version

    return f"Apache Kafka {kafka_version()} (single node, KRaft)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark grader worker against a plain Faust baseline.")
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=6_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--policies", default="abc-100,sabcd-weighted,stars")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="latency runs at this fraction of the slower system's "
                             "throughput (first round)")
    parser.add_argument("--rate", type=float, default=None,
                        help="latency runs at this rate instead (events/s)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat both systems this many times, alternating their order")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--at-risk-ab", action="store_true",
                        help="instead of the baseline, grader without the tier at risk "
                             "(its cost: docs/performance.md)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the worker logs in this directory")
    graderexe.add_argument(parser)
    args = parser.parse_args()
    systems = ("grader",) if args.skip_baseline else SYSTEMS
    if args.at_risk_ab:
        systems = ("grader", "grader-without-at-risk")
    lines = list(generate(args.customers, args.events, seed=7, as_of=AS_OF, months=11))
    fresh = [] if args.skip_latency else list(
        generate(args.customers, args.events, seed=8, as_of=AS_OF, months=11))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.platform()}, {platform.machine()}, {cpu_model()}, "
          f"{cpus} CPUs (os.cpu_count {os.cpu_count()}), Python {platform.python_version()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"broker: {describe_broker(args.broker)}, GRADER_BROKER_QUIRKS="
          f"{quirks(args.broker)}; {args.partitions} partitions; policies {args.policies}; "
          f"core {graderexe.core(args.grader)}; {args.events} events, {args.customers} customers")
    rates: dict[str, list[float]] = {s: [] for s in systems}
    lats: dict[str, list[Latency]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp, start_server(args.broker) as broker:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        offered = args.rate
        for round_no in range(1, args.rounds + 1):
            order = systems if round_no % 2 else tuple(reversed(systems))
            print(f"round {round_no}: {', '.join(order)}")
            for system in order:
                rates[system].append(throughput(system, broker, args, lines, workdir))
            if args.skip_latency:
                continue
            if offered is None:
                offered = min(rates[s][0] for s in systems) * args.fraction
            for system in order:
                lats[system].append(latency(system, broker, args, fresh, offered, workdir))
    summary(args, systems, rates, lats)


def summary(args: Any, systems: tuple[str, ...], rates: dict[str, list[float]],
            lats: dict[str, list[Latency]]) -> None:
    """The figures of the run side by side (medians over rounds when there are several)."""
    def med(values: list[float]) -> float:
        return statistics.median(values)

    how = "median of " + str(args.rounds) + " rounds" if args.rounds > 1 else "one round"
    print(f"summary on {args.broker} ({how}; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    parts = [f"events/s {s} {med(rates[s]):,.0f} ({' / '.join(f'{r:,.0f}' for r in rates[s])})"
             for s in systems]
    print("  " + "; ".join(parts))
    if "grader-without-at-risk" in systems:
        ratios = [g / b for g, b in zip(rates["grader"], rates["grader-without-at-risk"],
                                        strict=True)]
        print(f"  ratio with/without the tier at risk events/s: {med(ratios):.3f} "
              f"({' / '.join(f'{r:.3f}' for r in ratios)})")
    if "baseline" in systems:
        ratios = [g / b for g, b in zip(rates["grader"], rates["baseline"], strict=True)]
        print(f"  ratio grader/baseline events/s: {med(ratios):.2f} "
              f"({' / '.join(f'{r:.2f}' for r in ratios)})")
    for system in systems:
        if lats[system]:
            runs = lats[system]
            print(f"  latency {system} at {med([r.rate for r in runs]):,.0f} events/s offered: "
                  f"p50 {med([r.p50 for r in runs]):.0f} ms, p99 {med([r.p99 for r in runs]):.0f}"
                  f" ms (p99 per round: {' / '.join(f'{r.p99:.0f}' for r in runs)} ms)")
    if "baseline" in systems and lats["grader"] and lats["baseline"]:
        g, b = lats["grader"], lats["baseline"]
        print(f"  ratio grader/baseline latency: p50 "
              f"{med([x.p50 for x in g]) / med([x.p50 for x in b]):.2f}, p99 "
              f"{med([x.p99 for x in g]) / med([x.p99 for x in b]):.2f}")


if __name__ == "__main__":
    main()
