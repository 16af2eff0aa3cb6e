"""`grader dev`: the embedded default, from installed packages only.

Starts a local Kafka-protocol broker (tansu) and a local Redis, a `grader
worker` on them, and a generator of live sample events; shows tiers changing
in the terminal (a live table on a terminal, plain lines otherwise). Ctrl-C
(or --duration) stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from grader.errors import GraderError
from grader.sample import LiveSample
from grader.services import Broker, RedisServer, free_port, start_broker, start_redis
from grader.stream.admin import kafka_module

WORKER_READY_TIMEOUT = 90.0


def run_dev(customers: int, duration: float | None, plain: bool, policies: str) -> int:
    """Run the whole embedded system until Ctrl-C or ``duration`` seconds."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="grader-dev-")))
        broker = stack.enter_context(start_broker())
        redis = stack.enter_context(start_redis())
        say(f"broker {broker.url}, redis {redis.url}, data {workdir}")
        worker = stack.enter_context(_worker(broker, redis, workdir, policies))
        prefix = "grader."
        _wait_for_topics(broker, prefix, worker, workdir)
        view = TierView(plain)
        stop = threading.Event()
        feeder = threading.Thread(target=_feed, args=(broker, prefix, customers, stop), daemon=True)
        feeder.start()
        try:
            _watch(broker, prefix, view, stop, duration, worker, workdir)
        except KeyboardInterrupt:
            say("stopping (Ctrl-C)")
        finally:
            stop.set()
            feeder.join(timeout=5)
        say(f"{view.changes} tier changes seen for {len(view.tiers)} customers")
    return 0


def say(text: str) -> None:
    """A status line on stderr."""
    print(f"grader dev: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _worker(
    broker: Broker, redis: RedisServer, workdir: Path, policies: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "GRADER_KAFKA_URL": broker.url,
        "GRADER_REDIS_URL": redis.url,
        "GRADER_BROKER_QUIRKS": "tansu",
        "GRADER_DATA_DIR": str(workdir / "data"),
        "GRADER_WEB_PORT": str(free_port()),
        "GRADER_POLICIES": policies,
        "GRADER_SUPPORT_POLICY": policies.split(",")[0],
    }
    log = (workdir / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grader", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _worker_failed(worker: subprocess.Popen[bytes], workdir: Path) -> GraderError:
    tail = (workdir / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
    return GraderError(f"the worker exited with {worker.returncode}: {' | '.join(tail)}")


def _wait_for_topics(
    broker: Broker, prefix: str, worker: subprocess.Popen[bytes], workdir: Path
) -> None:
    """Wait until the worker has created the topics (it does so at start-up)."""
    wanted = {f"{prefix}{name}" for name in ("transactions", "customer-tiers", "tier-changes")}
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    admin = kafka_module().KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        while not wanted <= set(admin.list_topics()):
            if worker.poll() is not None:
                raise _worker_failed(worker, workdir)
            if time.monotonic() > deadline:
                raise GraderError("the worker did not create its topics in time")
            time.sleep(0.5)
    finally:
        admin.close()


def _feed(broker: Broker, prefix: str, customers: int, stop: threading.Event) -> None:
    """Send live sample events to their topics until stopped."""
    from grader.events import TOPIC_OF_TYPE

    producer = kafka_module().KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    sample = LiveSample(customers)
    start = time.time_ns() // 1000
    try:
        while not stop.wait(0.25):
            for event in sample.events(start, time.time_ns() // 1000):
                topic = prefix + TOPIC_OF_TYPE[event["type"]]
                producer.send(topic, key=event["customer_id"].encode(), value=orjson.dumps(event))
            producer.flush()
    finally:
        producer.close(timeout=5)


class TierView:
    """The tiers seen on customer-tiers and the latest tier changes."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.tiers: dict[str, dict[str, Any]] = {}
        self.recent: list[str] = []
        self.changes = 0

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.tiers[snapshot["customer_id"]] = snapshot

    def on_change(self, change: dict[str, Any]) -> None:
        self.changes += 1
        line = (
            f"{change['as_of'][:10]} {change['customer_id']} {change['policy']}: "
            f"{change['from_tier'] or '-'} -> {change['to_tier']} ({change['direction']}, "
            f"score {change['score']})"
        )
        self.recent = [line, *self.recent[:9]]
        if self.plain:
            print(line, flush=True)

    def render(self) -> Any:
        """A rich renderable of the current tiers and the latest changes."""
        from rich.console import Group
        from rich.table import Table

        policies = sorted({p for s in self.tiers.values() for p in s["tiers"]})
        table = Table(title=f"grader dev: tiers ({self.changes} changes)")
        table.add_column("customer")
        for policy in policies:
            table.add_column(policy)
        table.add_column("blacklisted")
        for customer in sorted(self.tiers):
            snap = self.tiers[customer]
            cells = [_cell(snap["tiers"].get(p)) for p in policies]
            table.add_row(customer, *cells, "yes" if snap["blacklisted"] else "")
        return Group(table, *self.recent)


def _cell(tier: dict[str, Any] | None) -> str:
    if tier is None:
        return ""
    pin = " (pinned)" if tier["pinned"] else ""
    return f"{tier['tier']}  {tier['score']}{pin}"


def _watch(
    broker: Broker,
    prefix: str,
    view: TierView,
    stop: threading.Event,
    duration: float | None,
    worker: subprocess.Popen[bytes],
    workdir: Path,
) -> None:
    consumer = kafka_module().KafkaConsumer(
        f"{prefix}customer-tiers",
        f"{prefix}tier-changes",
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    end = None if duration is None else time.monotonic() + duration
    live = None
    if not view.plain:
        from rich.live import Live

        live = Live(view.render(), refresh_per_second=4, transient=False)
        live.start()
    try:
        while end is None or time.monotonic() < end:
            if worker.poll() is not None:
                raise _worker_failed(worker, workdir)
            for records in consumer.poll(timeout_ms=250).values():
                for record in records:
                    message = orjson.loads(record.value)
                    if record.topic.endswith("customer-tiers"):
                        view.on_snapshot(message)
                    else:
                        view.on_change(message)
            if live is not None:
                live.update(view.render())
    finally:
        if live is not None:
            live.stop()
        consumer.close()
