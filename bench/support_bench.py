"""Latency from a tier-changing event to its tickets' new place in Redis (issue 12).

    python bench/support_bench.py [--broker tansu|kafka] [--rate 1000] [--seconds 30]
                                  [--changes 10] [--customers 2000] [--tickets 5]
                                  [--warmup 3] [--partitions 4] [--linger-ms 1]
                                  [--poll-ms 1] [--target-ms 500] [--keep DIR]

One broker (tansu in memory, or a single-node Apache Kafka, as in
bench/worker_bench.py), one Redis (``grader.devtools.services.start_redis``) and one
``grader worker`` with ``GRADER_POLICIES=abc-100`` (the support policy:
tiers A/B/C, served A, B, C) writing the support queues under a fresh
``GRADER_REDIS_PREFIX``.

1. **Fill.** ``--customers`` customers each get one small sale (graded B:
   ``monthly_avg_sales(12)`` <= 5,000 gives 30 points, no invoices 30) and
   ``--tickets`` open tickets spread over four queues, so 2,000 x 5 = 10,000
   open tickets; the bench waits until the queues hold exactly that many, all
   in band 1 (tier B: ``score >> 48 == 1``).
2. **Steady traffic.** ``--rate`` events/s for ``--warmup`` + ``--seconds``
   seconds, paced on this machine's clock: small sales (60%), interactions
   (20%), and ticket events (20%: a new ticket opened, or, once 100 such
   tickets are open, the oldest closed, so about 10,100 tickets stay open).
   Every ``rate / changes``-th event (only after the warm-up) is instead a
   sale of 300,000 CNY to a customer still in B: its 12-month average passes
   20,000, so it moves to A (band 0). Each such customer is used once.
   Events are sent by confluent-kafka (librdkafka, ``acks=all``,
   ``linger.ms`` 1, the murmur2 partitioner so no event is forwarded through
   the repartition topic): kafka-python cost about 4 times more CPU, which
   on a 2-core machine is taken from what is measured.
3. **Watching.** A separate process polls Redis (one pipelined ``ZSCORE`` per
   watched ticket, every ``--poll-ms``) for the customers whose big sale has
   been sent, and notes the first time all of that customer's fill tickets
   are in band 0 (the worker's Lua script moves all a customer's tickets in
   one atomic step, so these stand for all of them).

The latency of one tier change is that time minus the time just before the
producer's ``send`` of the sale, both ``time.time()`` on this machine. Its
resolution is the poll interval plus one Redis round trip (printed). The
time from the sale's send to the timestamp of the worker's ``tier-changes``
record for it (read back after the run) is printed too: the part of the
latency before the worker publishes to Kafka (it writes Redis after those
records are acknowledged).

Also printed: the CPU per event of the worker, broker, Redis and this
bench's own two processes over the steady phase, the cores each server used
in every 5 s, the worker's batches and event outcomes (its ``/metrics``),
and the latency by 5 s of sending (a trend over the run shows up there).

Everything (broker, Redis, worker, producer, watcher) runs on this machine;
report the figures with the machine line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import graderexe  # noqa: E402
from bench.kafkapython import kafka_module  # noqa: E402
from bench.worker_bench import (  # noqa: E402
    Process,
    committed,
    cpu_model,
    cpu_seconds,
    describe_broker,
    load,
    percentile,
    quirks,
    start_server,
)
from grader.core.events import TOPIC_OF_TYPE  # noqa: E402
from grader.core.support import TIME_BITS  # noqa: E402
from grader.devtools.services import KafkaProtocolServer, free_port, start_redis  # noqa: E402

POLICY = "abc-100"
QUEUES = ("billing", "support", "delivery", "returns")
BIG_SALE = 300_000  # CNY: one such sale puts monthly_avg_sales(12) >= 20,000, so tier A
BAND_B, BAND_A = 1, 0  # support_priority A, B, C
EXTRA_OPEN = 100  # tickets opened during the steady phase kept open at a time


def stamp_of(t: float) -> str:
    """An RFC 3339 instant in UTC to the millisecond."""
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def event(event_id: str, etype: str, customer: str, t: float, **fields: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": etype, "customer_id": customer,
                         "occurred_at": stamp_of(t), **fields})


def customer_id(n: int) -> str:
    return f"S{n:06d}"


def fill_tickets(n: int, tickets: int) -> list[tuple[str, str]]:
    """(queue, ticket id) of customer ``n``'s fill tickets."""
    return [(QUEUES[(n + i) % len(QUEUES)], f"F{n:06d}-{i}") for i in range(tickets)]


def watch(url: str, prefix: str, inbox: Any, outbox: Any, poll: float, grace: float) -> None:
    """The watcher process: until told to stop (None) and nothing is pending, poll the
    fill tickets of each customer sent a big sale until all are in band A.

    ``inbox`` gives (event_id, sent_at, [(queue, ticket_id)]); ``outbox`` gets
    ([(event_id, sent_at, seen_at)], [event_ids never seen], polls, seconds polling,
    its CPU seconds).
    """
    import redis

    client = redis.Redis.from_url(url)
    pending: dict[str, tuple[float, list[tuple[str, str]]]] = {}
    done: list[tuple[str, float, float]] = []
    polls, polling, deadline = 0, 0.0, None
    while True:
        try:
            while True:
                item = inbox.get_nowait()
                if item is None:
                    deadline = time.time() + grace
                else:
                    pending[item[0]] = (item[1], item[2])
        except queue.Empty:
            pass
        if pending:
            asked = time.time()
            pipe = client.pipeline(transaction=False)
            order = list(pending.items())
            for _eid, (_sent, tickets) in order:
                for queue_name, ticket_id in tickets:
                    pipe.zscore(f"{prefix}queue:{queue_name}", ticket_id)
            scores = pipe.execute()
            now = time.time()
            polls += 1
            polling += now - asked
            at = 0
            for eid, (sent, tickets) in order:
                mine = scores[at:at + len(tickets)]
                at += len(tickets)
                if all(s is not None and int(s) >> TIME_BITS == BAND_A for s in mine):
                    done.append((eid, sent, now))
                    del pending[eid]
        if deadline is not None and (not pending or time.time() > deadline):
            break
        time.sleep(poll)
    times = os.times()
    outbox.put((done, sorted(pending), polls, polling, times.user + times.system))
    client.close()


def create_topics(broker: KafkaProtocolServer, prefix: str, partitions: int) -> None:
    from grader.core.topology import load_topics
    from grader.kafka.admin import ensure_topics

    ensure_topics(broker.url, load_topics(prefix, partitions).values())


def start_worker(broker: KafkaProtocolServer, redis_url: str, args: Any, prefix: str,
                 workdir: Path) -> Process:
    """One `grader worker` on ``prefix`` writing the support queues under ``prefix``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env.update({
        "GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
        "GRADER_PARTITIONS": str(args.partitions), "GRADER_POLICIES": POLICY,
        "GRADER_CONFIG_DIR": str(ROOT / "config"),
        "GRADER_DATA_DIR": str(workdir / f"{prefix}data"),
        "GRADER_WEB_PORT": str(free_port()), "GRADER_BROKER_QUIRKS": quirks(args.broker),
        "GRADER_LIVE_TICKS": "0", "GRADER_LOG_LEVEL": "info",
        "GRADER_REDIS_URL": redis_url, "GRADER_REDIS_PREFIX": prefix,
    })
    worker = Process([*graderexe.command(args.grader), "worker"], env, workdir / f"{prefix}log")
    worker.web_port = int(env["GRADER_WEB_PORT"])  # type: ignore[attr-defined]
    return worker


class Sender:
    """A librdkafka producer (confluent-kafka: far less CPU than kafka-python, which matters
    on a shared 2-core machine) with the Java client's murmur2 partitioner, so no event
    needs forwarding through the repartition topic; remembers each partition's end."""

    def __init__(self, broker: KafkaProtocolServer, prefix: str, linger_ms: float) -> None:
        import confluent_kafka

        self.prefix = prefix
        self.producer = confluent_kafka.Producer({
            "bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": linger_ms,
            "partitioner": "murmur2_random"})
        self.ends: dict[tuple[str, int], int] = {}
        self.errors: list[str] = []
        self.sent = 0

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        where = (msg.topic(), msg.partition())
        self.ends[where] = max(self.ends.get(where, 0), msg.offset() + 1)

    def send(self, line: bytes, etype: str, customer: str) -> None:
        self.producer.produce(self.prefix + TOPIC_OF_TYPE[etype], key=customer.encode(),
                              value=line, on_delivery=self._delivered)
        self.producer.poll(0)
        self.sent += 1

    def close(self) -> dict[tuple[str, int], int]:
        left = self.producer.flush(60)
        if left or self.errors:
            raise SystemExit(f"producer: {left} messages not delivered, errors "
                             f"{self.errors[:3]}")
        return self.ends


def queue_counts(client: Any, prefix: str) -> tuple[int, int]:
    """(open tickets in the queues, of which in band B)."""
    total = sum(client.zcard(f"{prefix}queue:{q}") for q in QUEUES)
    low, high = BAND_B << TIME_BITS, ((BAND_B + 1) << TIME_BITS) - 1
    in_b = sum(client.zcount(f"{prefix}queue:{q}", low, high) for q in QUEUES)
    return total, in_b


def fill(broker: KafkaProtocolServer, client: Any, args: Any, prefix: str,
         worker: Process) -> dict[tuple[str, int], int]:
    """Grade every customer B with ``args.tickets`` open tickets each; wait for Redis."""
    sender = Sender(broker, prefix, linger_ms=5)
    now = time.time()
    for n in range(args.customers):
        cid = customer_id(n)
        sender.send(event(f"fill-sale-{n}", "sale", cid, now, amount=100, currency="CNY"),
                    "sale", cid)
        for queue_name, ticket_id in fill_tickets(n, args.tickets):
            sender.send(event(f"fill-open-{ticket_id}", "ticket_opened", cid, now,
                              ticket_id=ticket_id, queue=queue_name, subject="fill"),
                        "ticket_opened", cid)
    ends = sender.close()
    want = args.customers * args.tickets
    deadline = time.monotonic() + 600
    while True:
        total, in_b = queue_counts(client, prefix)
        if total == want and in_b == want:
            break
        assert worker.process.poll() is None, worker.log()[-3000:]
        if time.monotonic() > deadline:
            raise SystemExit(f"fill: Redis holds {total} open tickets ({in_b} in band B), "
                             f"not {want}")
        time.sleep(0.2)
    print(f"fill: {sender.sent:,} events ({args.customers:,} customers graded B, "
          f"{want:,} open tickets) in Redis {time.time() - now:.1f} s after the first send; "
          f"load {load()}")
    return ends


def steady(broker: KafkaProtocolServer, args: Any, prefix: str, inbox: Any,
           movers: list[int]) -> tuple[dict[tuple[str, int], int], dict[str, Any]]:
    """Send ``args.rate`` events/s; every ``rate/changes``-th after the warm-up a big sale."""
    rng = random.Random(12)
    sender = Sender(broker, prefix, linger_ms=args.linger_ms)
    every = max(1, round(args.rate / args.changes))
    warm = int(args.rate * args.warmup)
    count = warm + int(args.rate * args.seconds)
    extra: deque[tuple[str, str, str]] = deque()  # (customer, ticket, queue) opened here
    extra_no = 0
    mover = iter(movers)
    big: dict[str, str] = {}  # event_id -> customer
    behind = 0.0
    start = time.monotonic()
    measured_from = 0.0
    for n in range(count):
        due = start + n / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        if n == warm:
            measured_from = time.monotonic()
        if n >= warm and (n - warm) % every == every // 2:
            who = next(mover)
            cid, eid = customer_id(who), f"big-{who}"
            line = event(eid, "sale", cid, time.time(), amount=BIG_SALE, currency="CNY")
            sent_at = time.time()
            sender.send(line, "sale", cid)
            inbox.put((eid, sent_at, fill_tickets(who, args.tickets)))
            big[eid] = cid
            continue
        cid = customer_id(rng.randrange(args.customers))
        roll = rng.random()
        now = time.time()
        if roll < 0.6:
            sender.send(event(f"s{n}", "sale", cid, now, amount=rng.randint(1, 300),
                              currency="CNY"), "sale", cid)
        elif roll < 0.8:
            sender.send(event(f"s{n}", "interaction", cid, now, kind="call"),
                        "interaction", cid)
        elif len(extra) >= EXTRA_OPEN:
            owner, ticket_id, queue_name = extra.popleft()
            sender.send(event(f"s{n}", "ticket_closed", owner, now, ticket_id=ticket_id,
                              queue=queue_name), "ticket_closed", owner)
        else:
            extra_no += 1
            ticket_id, queue_name = f"X{extra_no:07d}", QUEUES[extra_no % len(QUEUES)]
            sender.send(event(f"s{n}", "ticket_opened", cid, now, ticket_id=ticket_id,
                              queue=queue_name, subject="steady"), "ticket_opened", cid)
            extra.append((cid, ticket_id, queue_name))
    ended = time.monotonic()
    ends = sender.close()
    return ends, {"count": count, "rate": count / (ended - start),
                  "measured_rate": (count - warm) / (ended - measured_from),
                  "behind": behind, "big": big, "extra_open": len(extra)}


def tier_change_stamps(broker: KafkaProtocolServer, prefix: str,
                       causes: set[str]) -> tuple[dict[str, float], int]:
    """cause event_id -> timestamp (s) of the worker's tier-changes record, read back;
    and how many events the worker forwarded through the repartition topic (expected 0)."""
    kafka = kafka_module()
    consumer = kafka.KafkaConsumer(prefix + "tier-changes", prefix + "repartition",
                                   bootstrap_servers=broker.bootstrap,
                                   auto_offset_reset="earliest", consumer_timeout_ms=3000)
    stamps: dict[str, float] = {}
    forwarded = 0
    for record in consumer:
        if record.topic.endswith("repartition"):
            forwarded += 1
            continue
        cause = orjson.loads(record.value)["cause"].get("event_id")
        if cause in causes:
            stamps.setdefault(cause, record.timestamp / 1000)
    consumer.close()
    return stamps, forwarded


def scrape(port: int) -> dict[str, float]:
    """A few of the worker's /metrics, summed over their labels."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"(grader_batch_seconds_(?:count|sum)|grader_redis_errors_total|"
                         r"grader_events_total)(\{[^}]*\})? (\S+)$", line)
        if match:
            name = match.group(1)
            outcome = re.search(r'outcome="(\w+)"', match.group(2) or "")
            if outcome:
                name += ":" + outcome.group(1)
            out[name] = out.get(name, 0.0) + float(match.group(3))
    return out


class CpuSampler(threading.Thread):
    """Every 5 s, the CPU the worker, broker and Redis used since the last sample."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[dict[str, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        last = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        while not self.stopped.wait(5):
            now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
            self.samples.append({name: (now[name] - last[name]) / 5 for name in now})
            last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker", choices=("tansu", "kafka"), default="tansu")
    parser.add_argument("--rate", type=float, default=1000, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=30, help="measured seconds")
    parser.add_argument("--changes", type=float, default=10,
                        help="tier-changing events/s among --rate")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--tickets", type=int, default=5, help="open tickets per customer")
    parser.add_argument("--warmup", type=float, default=3,
                        help="seconds of the same traffic, without tier changes, first")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--linger-ms", type=float, default=1,
                        help="the producer's linger.ms in the steady phase")
    parser.add_argument("--poll-ms", type=float, default=1)
    parser.add_argument("--target-ms", type=float, default=500)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the worker log in this directory")
    graderexe.add_argument(parser)
    args = parser.parse_args()
    every = max(1, round(args.rate / args.changes))
    changes = len(range(every // 2, int(args.rate * args.seconds), every))
    if changes > args.customers:
        raise SystemExit(f"{changes} tier changes need as many customers: raise --customers")
    import redis

    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.platform()}, {platform.machine()}, {cpu_model()}, {cpus} CPUs "
          f"(os.cpu_count {os.cpu_count()}), Python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    print(f"broker: {describe_broker(args.broker)}, GRADER_BROKER_QUIRKS={quirks(args.broker)};"
          f" {args.partitions} partitions; policy {POLICY}; core {graderexe.core(args.grader)}")
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, start_server(args.broker) as broker, \
            start_redis() as redis_server:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        prefix = f"sb{uuid.uuid4().hex[:6]}."
        client = redis.Redis.from_url(redis_server.url)
        print(f"redis: {client.info('server')['redis_version']} at {redis_server.url}, "
              f"prefix {prefix}")
        create_topics(broker, prefix, args.partitions)
        worker = start_worker(broker, redis_server.url, args, prefix, workdir)
        try:
            worker.wait_ready()
            fill_ends = fill(broker, client, args, prefix, worker)
            inbox, outbox = ctx.Queue(), ctx.Queue()
            watcher = ctx.Process(target=watch, args=(redis_server.url, prefix, inbox, outbox,
                                                      args.poll_ms / 1000, 30.0))
            watcher.start()
            movers = random.Random(5).sample(range(args.customers), changes)
            cpu_before = {"worker": worker.cpu_seconds(),
                          "broker": cpu_seconds(broker.process.pid),
                          "redis": cpu_seconds(redis_server.process.pid)}
            started = time.monotonic()
            times = os.times()
            own_cpu = times.user + times.system
            metrics_before = scrape(worker.web_port)  # type: ignore[attr-defined]
            sampler = CpuSampler({"worker": worker.process.pid,
                                  "broker": broker.process.pid,
                                  "redis": redis_server.process.pid})
            sampler.start()
            ends, run = steady(broker, args, prefix, inbox, movers)
            sampler.stopped.set()
            inbox.put(None)
            done, missed, polls, polling, watcher_cpu = outbox.get(timeout=120)
            times = os.times()
            producer_cpu = times.user + times.system - own_cpu
            watcher.join()
            open_now = queue_counts(client, prefix)[0]
            for where, end in fill_ends.items():
                ends[where] = max(ends.get(where, 0), end)
            admin = kafka_module().KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            total, lag_deadline = sum(ends.values()), time.monotonic() + 120
            while committed(admin, prefix + "worker", ends) < total:
                if time.monotonic() > lag_deadline:
                    break
                time.sleep(0.1)
            all_in = time.monotonic() - started
            admin.close()
            cpu = {"worker": worker.cpu_seconds() - cpu_before["worker"],
                   "broker": cpu_seconds(broker.process.pid) - cpu_before["broker"],
                   "redis": cpu_seconds(redis_server.process.pid) - cpu_before["redis"]}
            metrics = scrape(worker.web_port)  # type: ignore[attr-defined]
            metrics = {k: v - metrics_before.get(k, 0.0) for k, v in metrics.items()}
            stamps, forwarded = tier_change_stamps(broker, prefix, set(run["big"]))
        finally:
            worker.stop()
        warnings = [line for line in worker.log().splitlines() if "WARNING" in line
                    or "ERROR" in line]
        client.close()

    lat = sorted((seen - sent) * 1000 for _eid, sent, seen in done)
    to_kafka = sorted((stamps[eid] - sent) * 1000 for eid, sent, _seen in done if eid in stamps)
    print(f"steady: offered {args.rate:,.0f} events/s for {args.warmup:g} s warm-up + "
          f"{args.seconds:g} s; achieved {run['rate']:,.0f} events/s overall, "
          f"{run['measured_rate']:,.0f} while measuring ({run['count']:,} events; the producer "
          f"was at most {run['behind'] * 1000:.0f} ms behind schedule); every event committed "
          f"{all_in - (run['count'] / run['rate']):.1f} s after the last send")
    print(f"open tickets: {args.customers * args.tickets:,} filled, {open_now:,} at the end "
          f"({run['extra_open']} opened during the run still open)")
    print(f"watcher: {polls:,} polls, {polling / max(1, polls) * 1000:.2f} ms a round trip, "
          f"every {args.poll_ms:g} ms + round trip while a change is pending")
    print(f"CPU per event (the steady phase until all committed): worker "
          f"{cpu['worker'] / run['count'] * 1e6:.0f} us, broker "
          f"{cpu['broker'] / run['count'] * 1e6:.0f} us, redis "
          f"{cpu['redis'] / run['count'] * 1e6:.0f} us; this bench's producer process "
          f"{producer_cpu / run['count'] * 1e6:.0f} us, watcher "
          f"{watcher_cpu / run['count'] * 1e6:.0f} us; load {load()}")
    batches = metrics.get("grader_batch_seconds_count", 0.0)
    print(f"worker (its /metrics over the steady phase): {batches:,.0f} batches, "
          f"{run['count'] / max(1.0, batches):.1f} events a batch, "
          f"{metrics.get('grader_batch_seconds_sum', 0.0) / max(1.0, batches) * 1000:.1f} ms a "
          f"batch on average; events applied {metrics.get('grader_events_total:applied', 0):,.0f}"
          f", duplicate {metrics.get('grader_events_total:duplicate', 0):,.0f}, forwarded "
          f"{metrics.get('grader_events_total:forwarded', 0):,.0f}; Redis errors "
          f"{metrics.get('grader_redis_errors_total', 0):,.0f}")
    print("  cores used by 5 s (worker / broker / redis): " + ", ".join(
        f"{x['worker']:.2f}/{x['broker']:.2f}/{x['redis']:.2f}" for x in sampler.samples))
    if forwarded:
        print(f"forwarded through the repartition topic: {forwarded} events (expected 0)")
    if warnings:
        print(f"worker log: {len(warnings)} warning/error lines, first: {warnings[0][:200]}")
    if missed:
        print(f"NOT SEEN in Redis within 30 s of the last send: {len(missed)} tier changes "
              f"({', '.join(missed[:5])})")
    if not lat:
        raise SystemExit("no tier change was seen in Redis")
    p50, p99 = statistics.median(lat), percentile(lat, 0.99)
    print(f"tier changes measured: {len(lat)} of {len(run['big'])} "
          f"({args.changes:g}/s, each a new customer B -> A with {args.tickets} open tickets)")
    if to_kafka:
        after = sorted((seen - stamps[eid]) * 1000 for eid, _sent, seen in done if eid in stamps)
        print(f"  produced -> worker's tier-changes record: p50 {statistics.median(to_kafka):.0f}"
              f" ms, p99 {percentile(to_kafka, 0.99):.0f} ms; that record -> seen in Redis: "
              f"p50 {statistics.median(after):.0f} ms, p99 {percentile(after, 0.99):.0f} ms")
    first = min(sent for _eid, sent, _seen in done)
    slices: dict[int, list[float]] = {}
    for _eid, sent, seen in done:
        slices.setdefault(int((sent - first) // 5), []).append((seen - sent) * 1000)
    print("  by 5 s of sending (p50 / max ms): " + ", ".join(
        f"{k * 5}-{k * 5 + 5} s {statistics.median(v):.0f} / {max(v):.0f}"
        for k, v in sorted(slices.items())))
    verdict = "yes" if p99 <= args.target_ms else "NO"
    print(f"RESULT {args.broker}: produced -> tickets in their new place in Redis: p50 "
          f"{p50:.0f} ms, p99 {p99:.0f} ms, max {lat[-1]:.0f} ms; p99 <= "
          f"{args.target_ms:g} ms: {verdict}")


if __name__ == "__main__":
    main()
