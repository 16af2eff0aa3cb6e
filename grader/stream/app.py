"""The Faust app of `grader worker`: the composition root.

:func:`create_app` makes the ``faust.App`` (:func:`faust_app`), the worker's
parts (:class:`WorkerParts`: its two tables, the Kafka senders, the Redis
support queues, the :class:`~grader.stream.processor.Processor`, the lease and
the consumer's transport), and installs on the app what Faust runs: the web
pages, the agent (grader.stream.agent), the timers, the rebalance signals and
the start-up tasks. Each timer and signal handler is a method of WorkerParts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import faust
import orjson

from grader.core import step
from grader.core.clock import format_instant
from grader.core.errors import DataDirFull, WorkerStop
from grader.core.grading import Grading
from grader.core.topology import ACCESS_LOG, INPUTS, REPARTITION, TICKS, partition_of
from grader.kafka import auth as kafkaauth
from grader.kafka.admin import bootstrap_servers
from grader.kafka.policyregistry import PolicySuperseded, PolicyWatch
from grader.settings import Settings, support_policy
from grader.sinks.kafka import BatchSender, KafkaSink, OutputSink
from grader.sinks.redis import SupportQueues, reason
from grader.stream.agent import grade_batches
from grader.stream.faust_patches import webserver
from grader.stream.faust_patches.flowfix import keep_records_on_repeated_resume
from grader.stream.faust_patches.lease_hooks import guard_producer
from grader.stream.faust_patches.seeking import ResumingConsumer, transport_for
from grader.stream.lease import Lease
from grader.stream.localstate import changelogs_of, record_when_created
from grader.stream.options import StreamOptions
from grader.stream.processor import Processor, now_us
from grader.stream.progress import SourceProgress
from grader.stream.tables import FaustTableStore
from grader.web import customer as web
from grader.web import metrics
from grader.web.access import Access, Caller, access_record, load_access
from grader.web.metrics import Telemetry, TierIndex

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
STALL_AFTER = 2.0  # seconds an input partition may lag a known record before it is read again
REPAIR_EVERY = 1.0  # seconds between two checks for stalled input partitions
REDIS_CHECK_EVERY = 2.0  # seconds between two checks that Redis did not restart empty
SWEEP_EVERY = 2.0  # seconds between two looks for partitions to sweep after a roll-out
SWEEP_PAUSE = 0.5  # seconds between two partitions of a sweep: the stream goes first
REFRESH_EVERY = 1.0  # seconds between two looks for deferred refreshes while idle
WATCH_EVERY = 2.0  # seconds between two reads of the policies topic for newer versions
#: A process environment switch, not a setting: "1" leaves the tier at risk out of the
#: worker (no drops_on in customer-tiers, no tier-warnings), only to measure its cost
#: (docs/performance.md, bench/worker_bench.py --without-at-risk).
AT_RISK_SWITCH = "GRADER_BENCH_WITHOUT_AT_RISK"


def create_app(settings: Settings, grading: Grading, options: StreamOptions,
               sink: OutputSink | None = None, access: Access | None = None,
               watch: PolicyWatch | None = None,
               stop: Callable[[WorkerStop], None] | None = None) -> faust.App:
    """The worker's Faust app, wired to its topics, tables and sink; ``access``: the
    customer endpoint's callers (default: from ``settings``).

    ``stop`` gets, once, why the worker must stop (a full data dir; with ``watch``,
    the policies topic read, a newer version of one of its policies), and stops it
    (grader.stream.worker); without it the app crashes."""
    store = table_store()
    tls = kafkaauth.ssl_context(settings.kafka_security)  # the same for Faust and the senders
    app = faust_app(settings, options, store, tls)
    parts = WorkerParts(app, settings, grading, options, tls, sink, watch, stop)
    install_web(parts, access)
    install_agent(parts)
    install_timers(parts)
    install_signals(parts)
    install_tasks(parts, store, options)
    # Whether the group ever gave this worker partitions (grader.stream.worker: a stopping
    # signal before that exits at once).
    app.grader_assigned = lambda: parts.lease.synced > 0  # type: ignore[attr-defined]
    return app


def table_store() -> str:
    """``rocksdb://`` when ``rocksdict`` (a dependency) is installed, else ``memory://``."""
    import importlib.util

    return "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"


def faust_app(settings: Settings, options: StreamOptions, store: str,
              tls: ssl.SSLContext | None) -> faust.App:
    """The ``faust.App`` of the worker with its settings; nothing installed on it yet."""
    app = faust.App(
        f"{settings.topic_prefix}worker", broker=settings.kafka_url, store=store,
        broker_credentials=kafkaauth.faust_credentials(settings.kafka_security, tls),
        datadir=str(settings.data_dir), web_bind=settings.web_host,
        web_host=settings.web_host, web_port=settings.web_port,
        topic_partitions=settings.partitions, autodiscover=False,
        table_cleanup_interval=3600.0, consumer_auto_offset_reset="earliest",
        # No standby replicas: Faust's standby path lost changelog records (docs/streaming.md,
        # "Standby replicas"); a partition a worker takes over is read from its changelog.
        table_standby_replicas=0,
        web_application_options=webserver.application_options(settings.web_idle_timeout),
        **options.faust_settings,
    )
    keep_records_on_repeated_resume(app.flow_control)  # grader/stream/faust_patches/flowfix.py
    if store == "memory://":
        log.warning("rocksdict is not installed: tables use the memory store and are "
                    "rebuilt from their changelog topics at every start")
    return app


class WorkerParts:
    """What the worker's agent, pages, timers and signal handlers share; its methods are
    those timers and handlers."""

    def __init__(self, app: faust.App, settings: Settings, grading: Grading,
                 options: StreamOptions, tls: ssl.SSLContext | None,
                 sink: OutputSink | None, watch: PolicyWatch | None,
                 stop: Callable[[WorkerStop], None] | None) -> None:
        self.app, self.settings, self.grading = app, settings, grading
        self.watch, self.stop = watch, stop
        self.prefix, self.partitions = settings.topic_prefix, settings.partitions
        # key_type/value_type bytes make Faust use the "raw" codec for the changelog too.
        self.customers = app.Table("customers", partitions=self.partitions, key_type=bytes,
                                   value_type=bytes)
        self.clocks = app.Table("clocks", partitions=self.partitions, key_type=bytes,
                                value_type=bytes)
        self.source_names = [self.prefix + t for t in (*INPUTS, REPARTITION, TICKS)]
        self.progress = SourceProgress(stall_after=STALL_AFTER)
        self.lease = Lease(app.conf.broker_session_timeout)  # docs/streaming.md, "Zombies"
        servers = bootstrap_servers(settings.kafka_url)
        auth = kafkaauth.client_auth(settings.kafka_security, tls)
        app.transport = transport_for(app, self.source_names, servers, auth,
                                      options.true_end_offsets, options.fetch_max_wait_ms,
                                      self.progress, self.lease)
        self.source = app.topic(*self.source_names, partitions=self.partitions, **RAW)
        self.ticks = app.topic(self.prefix + TICKS, partitions=self.partitions, **RAW)
        lease = self.lease
        self.sender = BatchSender(servers, auth, lease,
                                  guard=lambda client: guard_producer(client, lease))
        # The access log is no customer's state and no partition's output: its records are
        # written under no lease (a lease binds a batch's writes to the assignment it read
        # its states under; an answer of the endpoint is not part of a batch), by a
        # producer of its own, so that the lease's check of every produce request does not
        # apply to it.
        self.access_sender = BatchSender(servers, auth)
        self.telemetry = Telemetry()
        self.support = support_queues(settings, grading, self.telemetry)
        self.customer_store = FaustTableStore(self.customers, self.sender, self.partitions)
        self.processor = self._processor(sink, watch)
        self.stopping: list[WorkerStop] = []
        self.swept: set[int] = set()  # partitions swept for a roll-out since the assignment
        self.worker_name = str(app.conf.canonical_url)

    def _processor(self, sink: OutputSink | None, watch: PolicyWatch | None) -> Processor:
        settings = self.settings
        processor = Processor(
            self.grading, self.customer_store,
            FaustTableStore(self.clocks, self.sender, self.partitions),
            sink or KafkaSink(self.sender, self.prefix, self.partitions),
            self.prefix + TICKS, self.partitions, self.support, self.telemetry,
            settings.warn_days, os.environ.get(AT_RISK_SWITCH) != "1",
            newer_in=watch.newer_in if watch is not None else None, lease=self.lease)
        self.telemetry.index = TierIndex(processor.stored_states,
                                         {p.name: p.timezone for p in self.grading.policies})
        self.telemetry.source = self.owned_and_lags
        processor.owns = self.still_mine
        return processor

    async def fail(self, exc: BaseException) -> None:
        """Stop cleanly for a WorkerStop (once), crash for anything else."""
        if not isinstance(exc, WorkerStop):
            await self.app.crash(exc)
            return
        if isinstance(exc, PolicySuperseded):
            self.processor.superseded = str(exc)  # grade nothing more
        if self.stopping:
            return
        if isinstance(exc, DataDirFull):
            exc = DataDirFull(f"the data dir {self.settings.data_dir} is full (No space left "
                              "on device): the worker stops; what it did not store is not "
                              "committed; free space and start it again")
        self.stopping.append(exc)
        log.error("stopping: %s", exc)
        if self.stop is None:
            await self.app.crash(exc)
        else:
            self.stop(exc)

    def owned(self) -> set[int]:
        """The partitions this worker owns now (every source topic is co-partitioned)."""
        return {tp.partition for tp in self.app.consumer.assignment()
                if tp.topic in self.source_names}

    def owns_now(self, partition: int) -> bool:
        """Whether this worker owns ``partition`` now (the customer endpoint asks)."""
        return partition in self.owned()

    def still_mine(self, partition: int) -> bool:
        """No rebalance begun (Faust sets the flag first thing), and the partition owned."""
        return not self.app.rebalancing and partition in self.owned()

    def owned_and_lags(self) -> tuple[set[int], dict[tuple[str, int], int]]:
        """The partitions owned, and each source partition's lag (for /metrics)."""
        lags: dict[tuple[str, int], int] = {}
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic not in self.source_names:
                continue
            end = consumer.highwater(tp)
            next_offset = self.progress.next.get((tp.topic, tp.partition))
            if end is not None and next_offset is not None:
                lags[tp.topic.removeprefix(self.prefix), tp.partition] = max(0, end - next_offset)
        return self.owned(), lags

    async def record_access(self, caller: Caller, customer_id: str, status: int) -> None:
        """Write one access-log record (an answer of the customer endpoint)."""
        key = customer_id.encode()
        record = access_record(format_instant(now_us()), caller, customer_id, status,
                               self.worker_name)
        await self.access_sender.send([(self.prefix + ACCESS_LOG,
                                        partition_of(key, self.partitions), key,
                                        orjson.dumps(record))])

    async def stop_senders(self, _app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        """Before shutdown: the consumer has stopped, so no batch is in flight."""
        await self.sender.stop()
        await self.access_sender.stop()

    async def repair_stalled(self) -> None:
        """Timer: read again an input partition not graded past a known record."""
        consumer: ResumingConsumer = self.app.consumer  # type: ignore[assignment]
        self.processor.notices.flush()
        try:
            await consumer.repair_stalled()
        except Exception as exc:  # a timer's error would crash the worker; retried next time
            log.warning("checking for stalled input partitions failed: %r", exc)

    async def check_redis(self) -> None:
        """Timer: after Redis restarted (empty), write this worker's customers again."""
        support = self.support
        if support is None or not await support.restarted():
            return
        mine = sorted(self.owned())
        log.warning("Redis at %s restarted: writing the support queues of partitions "
                    "%s again", support.where, mine)
        written = await self.processor.rewrite_support(mine)
        log.info("support queues written again: %d customers", written)

    async def refresh_stale(self) -> None:
        """Timer: refresh deferred tiers at risk while the stream is idle."""
        if self.app.in_recovery or self.app.rebalancing:
            return
        try:
            await self.processor.refresh_stale()
        except Exception as exc:  # a timer's error would crash the worker; retried
            log.warning("refreshing deferred tiers at risk failed, retried: %s", reason(exc))

    async def settle_before_revoking(self, _app: Any, /, *_args: Any, **_kw: Any) -> None:
        """Faust waits for the agents' batches, not for the sweep timer: a sweep chunk in
        flight is settled before the partitions can go to another worker (the eager
        protocol rejoins only after this returns); the next chunk sees still_mine false."""
        async with self.processor.lock:
            pass

    async def on_assignment(self, _app: Any, /, *_args: Any, **_kw: Any) -> None:
        """A new assignment: look at every partition again, and for newer policies (a
        worker with a newer version may have joined)."""
        self.telemetry.rebalances.inc()
        self.swept.clear()
        await self.look_for_newer_versions()

    async def look_for_newer_versions(self) -> None:
        """Timer too: read the policies topic; a newer version of a policy stops the
        worker (PolicySuperseded)."""
        if self.watch is None or self.stopping:
            return
        try:
            why = await asyncio.get_running_loop().run_in_executor(None, self.watch.poll)
        except Exception as exc:  # the broker may be busy: tried again at the next look
            log.warning("reading the policies topic failed, tried again: %r", exc)
            return
        if why is not None:
            await self.fail(PolicySuperseded(why))

    async def sweep_policies(self) -> None:
        """Timer: grade again, partition by partition, the customers graded under other
        policies (a roll-out)."""
        if self.app.in_recovery or self.app.rebalancing:
            return
        mine = self.owned()
        todo = sorted(mine - self.swept)
        self.telemetry.sweep_pending.set(len(todo))
        for partition in todo:
            if not await self._sweep(partition):
                return
            self.swept.add(partition)
            self.telemetry.sweep_pending.set(len(mine - self.swept))
            await asyncio.sleep(SWEEP_PAUSE)

    async def _sweep(self, partition: int) -> bool:
        """Sweep one partition; False if it failed (retried at the next look) or stopped
        the worker."""
        try:
            await self.processor.sweep_policies([partition], self.still_mine)
        except WorkerStop as exc:
            await self.fail(exc)
            return False
        except Exception as exc:  # a timer's error would crash the worker; retried
            log.warning("policy roll-out of partition %d failed, retried: %s", partition,
                        reason(exc))
            return False
        return True

    async def report_loop(self) -> None:
        """Task: say which event loop runs, and this process's epoch."""
        loop = type(asyncio.get_running_loop())
        log.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
        log.info("epoch %s (in the records this process stores)", self.processor.epoch)

    async def record_changelog_ids(self) -> None:
        """Task: note which changelog topics the local tables were built from."""
        await record_when_created(Path(self.app.conf.tabledir), changelogs_of(self.app),
                                  self.settings.kafka)


def support_queues(settings: Settings, grading: Grading,
                   telemetry: Telemetry) -> SupportQueues | None:
    """The Redis support queues (None: redis_url is empty)."""
    if not settings.redis_url:
        return None
    return SupportQueues(settings.redis_url, settings.redis_prefix,
                         support_policy(settings, grading), settings.redis_files,
                         on_error=telemetry.redis_errors.inc)


def install_web(parts: WorkerParts, access: Access | None) -> None:
    """The access middleware, JSON errors, the customer endpoint and /metrics."""
    app, settings, grading = parts.app, parts.settings, parts.grading
    support_of = support_policy(settings, grading)
    callers = access or load_access(settings, support_of)
    webserver.add_middleware(app.web, web.access_middleware(callers))
    webserver.install_json_errors(app.web)
    web.install(app, grading, parts.customer_store,
                parts.customers.changelog_topic.get_topic_name(), parts.partitions,
                parts.owns_now, support_of, parts.record_access)
    metrics.install(app, parts.telemetry)


def install_agent(parts: WorkerParts) -> None:
    """The one agent, on the source topics (grader.stream.agent)."""
    app = parts.app
    app.on_before_shutdown.connect(parts.stop_senders)

    @app.agent(parts.source, name="grade")
    async def grade(stream: Any) -> None:
        await grade_batches(stream, parts.processor, parts.fail, app.consumer.assignment,
                            parts.progress)


def install_timers(parts: WorkerParts) -> None:
    """The timers, each a method of WorkerParts (a timer's error is caught in it)."""
    timer = parts.app.timer
    timer(REPAIR_EVERY)(parts.repair_stalled)
    if parts.support is not None:
        timer(REDIS_CHECK_EVERY)(parts.check_redis)
    timer(REFRESH_EVERY)(parts.refresh_stale)
    timer(WATCH_EVERY)(parts.look_for_newer_versions)
    timer(SWEEP_EVERY)(parts.sweep_policies)


def install_signals(parts: WorkerParts) -> None:
    """What the worker does when partitions are revoked and assigned."""
    parts.app.on_partitions_revoked.connect(parts.settle_before_revoking)
    parts.app.on_partitions_assigned.connect(parts.on_assignment)


def install_tasks(parts: WorkerParts, store: str, options: StreamOptions) -> None:
    """Start-up tasks, and the live ticks at each policy timezone's midnight."""
    app = parts.app
    app.task(parts.report_loop)
    if store != "memory://":
        app.task(parts.record_changelog_ids)
    if options.live_ticks:
        for tz in parts.grading.timezones:
            app.crontab("0 0 * * *", timezone=ZoneInfo(tz), on_leader=True)(
                _live_tick(parts.ticks, parts.partitions))


def _live_tick(ticks: Any, partitions: int) -> Any:
    async def live_tick() -> None:
        """Local midnight (so also each month start): tick every partition as of now."""
        value = step.tick_message(now_us(), f"live-{uuid.uuid4()}")
        for partition in range(partitions):
            await ticks.send(key=None, value=value, partition=partition)
        log.info("live tick sent to %d partitions", partitions)

    return live_tick
