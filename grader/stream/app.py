"""The Faust app of `grader worker`: one agent, two tables, the Kafka sink.

The composition root is :func:`create_app`. One agent consumes the four input
topics and the ticks topic (all co-partitioned), so one customer's messages
are handled one at a time and a tick never races an event for the same
customer. The agent takes messages in batches; :class:`Processor` steps each
one with grader.stream.step (one live state per customer in the batch),
stores each changed customer once, together with the outputs computed for
it, and waits for the broker; then publishes the outputs and waits again;
only then does Faust acknowledge the batch's messages (docs/streaming.md,
"Ordering").
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import faust
import orjson

from grader import kafkaauth
from grader.access import Access, Caller, access_record
from grader.clock import NEVER, format_instant
from grader.core import Grading, policy_stale
from grader.errors import DataDirFull, WorkerStop
from grader.events import Rejection
from grader.settings import Settings
from grader.sinks.kafka import BatchSender, KafkaSink, OutputSink
from grader.sinks.redis import SupportQueues, reason
from grader.state import CustomerState
from grader.stream import step, web, webserver
from grader.stream.admin import bootstrap_servers
from grader.stream.flowfix import keep_records_on_repeated_resume
from grader.stream.lease import Lease
from grader.stream.localstate import changelogs_of, record_when_created
from grader.stream.notices import Notices
from grader.stream.options import StreamOptions
from grader.stream.policyregistry import PolicySuperseded, PolicyWatch
from grader.stream.progress import SourceProgress
from grader.stream.seeking import ResumingConsumer, transport_for
from grader.stream.tables import FaustTableStore, TableStore
from grader.stream.telemetry import CONTENT_TYPE, Telemetry, TierIndex
from grader.stream.topology import (
    ACCESS_LOG,
    CUSTOMER_TIERS,
    INPUTS,
    REPARTITION,
    SUPPORT,
    TICKS,
    TIER_CHANGES,
    partition_of,
)
from grader.stream.worker import load_access, support_policy

log = logging.getLogger(__name__)
RAW: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
TICK_BATCH = 500  # customers re-graded between two waits for acknowledgements
BATCH_MAX = 1000  # input messages graded between two waits for acknowledgements
BATCH_WITHIN = 0.02  # seconds a partial batch waits for more messages
DECODED_MAX = 200_000  # decoded customer states kept between batches
LOG_EVERY = 10_000  # messages between two progress lines in the log
STALL_AFTER = 2.0  # seconds an input partition may lag a known record before it is read again
REPAIR_EVERY = 1.0  # seconds between two checks for stalled input partitions
REDIS_CHECK_EVERY = 2.0  # seconds between two checks that Redis did not restart empty
SWEEP_EVERY = 2.0  # seconds between two looks for partitions to sweep after a roll-out
SWEEP_PAUSE = 0.5  # seconds between two partitions of a sweep: the stream goes first
BEHIND_AFTER = 1.0  # seconds: a batch whose newest message is older is a backlog's
STALE_CHUNK = 500  # customers whose deferred tier at risk one batch (or timer) refreshes
REFRESH_EVERY = 1.0  # seconds between two looks for deferred refreshes while idle
#: A process environment switch, not a setting: "1" leaves the tier at risk out of the
#: worker (no drops_on in customer-tiers, no tier-warnings), only to measure its cost
#: (docs/performance.md, bench/worker_bench.py --without-at-risk).
AT_RISK_SWITCH = "GRADER_BENCH_WITHOUT_AT_RISK"
WATCH_EVERY = 2.0  # seconds between two reads of the policies topic for newer versions


def now_us() -> int:
    """The wall clock in microseconds."""
    return time.time_ns() // 1000


def table_store() -> str:
    """``rocksdb://`` when ``rocksdict`` (a dependency) is installed, else ``memory://``."""
    import importlib.util

    return "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"


class Batch:
    """What the messages of one batch did: live states, and outputs per customer in order."""

    def __init__(self) -> None:
        self.states: dict[bytes, CustomerState | None] = {}  # loaded or changed
        self.store: dict[bytes, tuple[int, CustomerState]] = {}  # records to write, by key
        self.outputs: dict[bytes, list[step.Output]] = {}  # per customer, stored with it
        self.unstored: list[step.Output] = []  # dead letters, forwards: follow from the message
        self.applied: dict[bytes, list[step.Incoming]] = {}  # what changed each live state
        self.clocks: dict[int, int] = {}  # partition -> its clock, read once per batch
        self.republished: dict[bytes, int] = {}  # how many outputs first are republished ones

    def add(self, key: bytes, partition: int, outcome: step.Outcome) -> None:
        """Keep what one step did to customer ``key``."""
        if outcome.state is not None:
            self.states[key] = outcome.state
            self.store[key] = (partition, outcome.state)
        if outcome.outputs:
            self.outputs.setdefault(key, []).extend(outcome.outputs)

    def forget(self, key: bytes) -> list[step.Incoming]:
        """Drop customer ``key``'s live state and outputs; the messages that had changed it."""
        for kept in (self.states, self.store, self.outputs, self.republished):
            kept.pop(key, None)
        return self.applied.pop(key, [])


class Processor:
    """Grades batches of messages: step each, store (acknowledged), then publish."""

    def __init__(self, grading: Grading, customers: TableStore, clocks: TableStore,
                 sink: OutputSink, ticks_topic: str, partitions: int,
                 support: SupportQueues | None = None,
                 telemetry: Telemetry | None = None, warn_days: int = 30,
                 at_risk: bool = True,
                 newer_in: Callable[[dict[str, tuple[str, str]]], str | None] | None = None,
                 lease: Lease | None = None) -> None:
        self.grading = grading
        self.lease = lease  # checked before Redis writes (the Kafka sender checks its own)
        self.warn_days = warn_days  # tier-warnings (settings.warn_days; 0: none)
        self.at_risk = at_risk  # False only to measure its cost (AT_RISK_SWITCH)
        # Customers this process stored with their tier at risk deferred (risk_stale): key ->
        # partition, refreshed STALE_CHUNK at a time once the stream is not behind.
        self.stale: dict[bytes, int] = {}
        self.behind_at = 0.0  # time.monotonic() of the last batch that was behind
        self.owns: Callable[[int], bool] = lambda _partition: True  # set by create_app
        # Why a customer's state, graded under these versions, is beyond this worker
        # (a newer version of one of its policies), or None (PolicyWatch.newer_in).
        self.newer_in = newer_in
        self.superseded: str | None = None  # once set, nothing more is graded
        self.telemetry = telemetry or Telemetry()
        self.prefix = ticks_topic[:-len(TICKS)]  # topics are labelled without it
        self.support = support  # Redis support queues, written after the Kafka outputs
        self.lock = asyncio.Lock()  # one batch (or rewrite of the support queues) at a time
        self.customers = customers  # customer_id bytes -> step.encode_record bytes
        self.clocks = clocks  # b"p<partition>" -> latest tick as_of (decimal µs)
        self.sink = sink
        self.ticks_topic = ticks_topic
        self.partitions = partitions
        self.epoch = uuid.uuid4().hex  # this process, in the records it stores
        # The records this process stored, decoded: key -> (the bytes stored, state).
        # A cached state is used only while the table still holds those same bytes.
        self.decoded: dict[bytes, tuple[bytes, CustomerState]] = {}
        self.notices = Notices(log)

    async def on_batch(self, messages: Iterable[step.Incoming]) -> None:
        """Handle consecutive messages; a tick settles what came before it first."""
        messages = list(messages)
        behind = self.behind(messages)
        if behind:
            self.behind_at = time.monotonic()
        async with self.lock:
            self.refuse_if_superseded()
            self.begin()
            started = time.monotonic()
            try:
                batch = Batch()
                for msg in messages:
                    if msg.topic == self.ticks_topic:
                        await self.settle(batch, behind)
                        batch = Batch()
                        await self.on_tick(msg)
                    else:
                        self.grade(msg, batch)
                await self.settle(batch, behind)
            except BaseException:
                self.decoded.clear()  # states may have changed in place without being stored
                raise
            self.telemetry.batch_seconds.observe(time.monotonic() - started)

    @staticmethod
    def behind(messages: list[step.Incoming]) -> bool:
        """Whether the batch is a backlog's: its newest message is older than BEHIND_AFTER."""
        stamps = [m.timestamp for m in messages if m.timestamp is not None]
        return bool(stamps) and time.time() - max(stamps) > BEHIND_AFTER

    async def refresh_stale(self) -> int:
        """Refresh up to STALE_CHUNK deferred tiers at risk, unless a batch was behind in
        the last BEHIND_AFTER seconds (the backlog goes first); how many."""
        if not self.stale or not self.at_risk or \
                time.monotonic() - self.behind_at < BEHIND_AFTER:
            return 0
        if not await self.confirmed():
            return 0
        async with self.lock:
            self.refuse_if_superseded()
            self.begin()
            batch = Batch()
            await self.settle(batch)
            return len(batch.store)

    async def confirmed(self) -> bool:
        """Before taking the lock: wait until a new assignment's lease is not short; False
        if a rebalance began meanwhile: skip the work (grader.stream.lease, Lease.confirmed)."""
        return self.lease is None or await self.lease.confirmed()

    def begin(self) -> None:
        """Under the lock, before reading any state: the writes that follow belong to the
        current assignment (grader.stream.lease)."""
        if self.lease is not None:
            self.lease.begin()

    async def on_message(self, msg: step.Incoming) -> None:
        """Handle one message (a batch of one)."""
        await self.on_batch([msg])

    def refuse_if_superseded(self) -> None:
        """Raise PolicySuperseded once a newer version of a policy was seen."""
        if self.superseded is not None:
            raise PolicySuperseded(self.superseded)

    def check_versions(self, state: CustomerState) -> None:
        """Refuse a customer graded under a newer version of one of this worker's policies:
        grading it would publish a change under an older version after a newer one."""
        if self.newer_in is None or not state.graded_under or \
                state.graded_under == self.grading.signature:
            return
        why = self.newer_in(state.graded_under)
        if why is not None:
            self.superseded = why
            raise PolicySuperseded(why)

    def grade(self, msg: step.Incoming, batch: Batch) -> None:
        """Step one input message against the batch's live state of its customer."""
        loaded: list[bytes] = []

        def load(key: bytes) -> CustomerState | None:
            loaded.append(key)
            return self.state_of(key, msg.partition, batch)

        try:
            outcome = step.handle_event(msg, load, self.batch_clock(msg.partition, batch),
                                        self.grading, now_us(), self.partitions)
        except WorkerStop:
            raise
        except Exception as exc:  # a defect in grader: it must not stop the worker
            outcome = self.failed(msg, batch, loaded, exc)
        self.note(msg, outcome)
        if outcome.state is None:
            batch.unstored += outcome.outputs
        else:
            key = outcome.state.customer_id.encode()
            batch.add(key, msg.partition, outcome)
            batch.applied.setdefault(key, []).append(msg)

    def failed(self, msg: step.Incoming, batch: Batch, loaded: list[bytes],
               exc: Exception) -> step.Outcome:
        """Grading ``msg`` raised: dead-letter it, and grade its customer's earlier
        messages of the batch again on its stored state (the live one may be half-changed)."""
        log.error("grading %s[%d]@%d failed (%s), the message goes to dead letters:\n%s",
                  msg.topic, msg.partition, msg.offset, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))  # code lines, no values
        for key in loaded:
            self.decoded.pop(key, None)
            for earlier in batch.forget(key):
                self.grade(earlier, batch)
        rejection = Rejection("internal_error", None, f"grader failed on this message "
                              f"({type(exc).__name__}); please report it")
        return step.Outcome("rejected", [step.dead_letter(msg, rejection)], code=rejection.code)

    def note(self, msg: step.Incoming, outcome: step.Outcome) -> None:
        """Count the message's outcome; tell the log about one not applied (rate-limited)."""
        self.telemetry.events.labels(msg.topic.removeprefix(self.prefix), outcome.status).inc()
        if outcome.status == "rejected":
            self.telemetry.rejections.labels(outcome.code or "").inc()
            self.notices.rejected(msg.topic, msg.partition, msg.offset, outcome.code or "")
        elif outcome.status == "expired":
            self.notices.expired()
        elif outcome.conflict:
            self.notices.conflict(msg.topic, msg.partition, msg.offset)

    def state_of(self, key: bytes, partition: int, batch: Batch) -> CustomerState | None:
        """The customer's live state in this batch, loaded from the table the first time.

        A record stored by another process may hold outputs that were never
        published (it was stopped between storing and publishing): they are
        published again with this batch, and stored again with this epoch;
        of its customer-tiers snapshots only the last (step.republished).
        """
        if key in batch.states:
            return batch.states[key]
        stored = self.customers.get(key, partition)
        state = None
        if stored is not None:
            cached = self.decoded.get(key)
            if cached is not None and cached[0] == stored:  # (== is an identity check first)
                state = cached[1]  # stored by this process: nothing to republish
            else:
                record = step.decode_record(stored)
                state = record.state
                self.check_versions(state)
                if record.epoch != self.epoch and record.pending:
                    again = step.republished(record.pending)
                    batch.add(key, partition, step.Outcome("republished", again, state))
                    batch.republished[key] = len(again)  # sent again as they are
        batch.states[key] = state
        return state

    async def settle(self, batch: Batch, behind: bool = False) -> None:
        """Store the changed customers with their outputs, then publish; wait for both.

        First each customer to store gets its tier at risk refreshed, once for the
        whole batch (step.with_risk): its snapshot and warnings are stored with it.
        A backlog's batch (``behind``) defers that instead (defer_risk); a batch that
        is not refreshes, with its own customers, up to STALE_CHUNK deferred ones."""
        if self.at_risk and behind:
            self.defer_risk(batch)
        elif self.at_risk:
            self.take_stale(batch)
            now = now_us()
            for key, (_partition, state) in batch.store.items():
                outputs, again = batch.outputs.get(key, []), batch.republished.get(key, 0)
                force = state.risk_stale
                self.stale.pop(key, None)
                batch.outputs[key] = outputs[:again] + self.with_risk(state, outputs[again:],
                                                                      now, force)
        for _partition, state in batch.store.values():
            state.revision += 1
        writes = [(partition, key, step.encode_record(state, self.epoch,
                                                      batch.outputs.get(key, [])))
                  for key, (partition, state) in batch.store.items()]
        await self.customers.put_many(writes)
        if len(self.decoded) > DECODED_MAX:
            self.decoded.clear()
        index = self.telemetry.index
        for partition, key, value in writes:
            state = batch.store[key][1]
            self.decoded[key] = (value, state)
            if index is not None:
                index.stored(key, partition, state)
        await self.sink.publish([*batch.unstored,
                                 *(out for outs in batch.outputs.values() for out in outs
                                   if out.topic != SUPPORT)])  # the marks are Redis's
        self.count_changes(batch)
        if self.support is not None:
            changed = [batch.store[key][1] for key, outs in batch.outputs.items()
                       if key in batch.store and any(out.topic == SUPPORT for out in outs)]
            if changed and self.lease is not None:
                await self.lease.ready(f"writing {len(changed)} customers to Redis")
            await self.support.write(changed)

    def defer_risk(self, batch: Batch) -> None:
        """While behind: each graded customer to store keeps its tier at risk as it was,
        marked stale (stored so, risk_stale), and its customer-tiers snapshots of this
        batch are held back; a later refresh (take_stale, a tick, its next event when not
        behind) sends its snapshot. A backlog's customer is so refreshed once, not once a
        batch (docs/performance.md, "Tier at risk in the worker")."""
        for key, (partition, state) in batch.store.items():
            if not state.tiers:
                continue
            state.risk_stale = True
            self.stale[key] = partition
            outputs, again = batch.outputs.get(key, []), batch.republished.get(key, 0)
            batch.outputs[key] = outputs[:again] + [o for o in outputs[again:]
                                                    if o.topic != CUSTOMER_TIERS]

    def take_stale(self, batch: Batch) -> None:
        """Add up to STALE_CHUNK customers whose tier at risk was deferred to ``batch``'s
        customers to store (those of partitions this worker no longer owns are dropped)."""
        taken = 0
        for key, partition in list(self.stale.items()):
            if taken >= STALE_CHUNK:
                break
            if not self.owns(partition):
                del self.stale[key]
                continue
            if key in batch.store:
                continue
            state = self.state_of(key, partition, batch)
            if state is None or not state.risk_stale:
                del self.stale[key]
                continue
            batch.store[key] = (partition, state)
            taken += 1

    def with_risk(self, state: CustomerState, outputs: list[step.Output],
                  now: int, force: bool = False) -> list[step.Output]:
        """step.with_risk; a customer whose refresh raises keeps the outputs it had."""
        try:
            return step.with_risk(state, outputs, self.grading, self.warn_days, now, force)
        except Exception as exc:  # a defect in grader: it must not stop the worker
            log.error("the tier at risk of customer %s failed (%s), not refreshed:\n%s",
                      state.customer_id, type(exc).__name__,
                      "".join(traceback.format_tb(exc.__traceback__)))
            return outputs

    async def sweep_policies(self, partitions: Iterable[int],
                             owns: Callable[[int], bool] = lambda _partition: True) -> int:
        """Grade again, under the active policies, every customer of these partitions that
        was graded under other ones (a roll-out); a chunk at a time, between batches.
        Returns how many were graded again.

        ``owns`` says, under the lock, before each chunk, whether this worker still owns
        the partition: once it moved (or a rebalance began), this worker's local store may
        be behind what the new owner published and stored, and a chunk from it would
        republish and store older records after newer ones (issue 20). The sweep stops."""
        swept = 0
        signature = orjson.dumps(sorted(self.grading.signature.items()))
        for partition in partitions:
            marker = b"s%d" % partition  # in the clocks table: swept under these policies
            if self.clocks.get(marker, partition) == signature:
                continue
            keys = list(self.customers.keys(partition))
            done = changes = 0
            for start in range(0, len(keys), TICK_BATCH):
                if not await self.confirmed():
                    return swept  # a rebalance began: swept again after it
                async with self.lock:
                    self.refuse_if_superseded()
                    self.begin()
                    if not owns(partition):
                        log.info("policy roll-out: partition %d moved, its sweep stops",
                                 partition)
                        return swept
                    batch = Batch()
                    now = now_us()
                    for key in keys[start:start + TICK_BATCH]:
                        state = self.state_of(key, partition, batch)
                        if state is None or not policy_stale(state, self.grading):
                            continue
                        outcome = step.handle_policy(state, self.grading, now)
                        batch.add(key, partition, outcome)
                        done += 1
                        changes += sum(out.topic == TIER_CHANGES for out in outcome.outputs)
                    await self.settle(batch)
                await asyncio.sleep(0)  # let the stream's batches in between
            if done:
                log.info("policy roll-out: partition %d: %d customers graded again, "
                         "%d tier changes", partition, done, changes)
                self.telemetry.policy_regrades.inc(done)
            async with self.lock:  # the marker too is written only while the partition is
                self.begin()       # this worker's, under the assignment of the check
                if not owns(partition):
                    return swept
                await self.clocks.put_many([(partition, marker, signature)])
            swept += done
        return swept

    def count_changes(self, batch: Batch) -> None:
        """The tier changes just published, and how long after their message's timestamp."""
        now = time.time()
        for key, outs in batch.outputs.items():
            for out in outs:
                if out.topic != TIER_CHANGES:
                    continue
                change = orjson.loads(out.value)
                self.telemetry.tier_changes.labels(change["policy"], change["direction"]).inc()
                applied = batch.applied.get(key)
                if applied and applied[-1].timestamp is not None:
                    self.telemetry.latency.observe(max(0.0, now - applied[-1].timestamp))

    def stored_states(self, partition: int) -> Iterator[tuple[bytes, CustomerState]]:
        """Every customer of ``partition`` as the table holds it: (key, state)."""
        for key in self.customers.keys(partition):
            stored = self.customers.get(key, partition)
            if stored is not None:
                yield key, step.decode_record(stored).state

    async def rewrite_support(self, partitions: Iterable[int]) -> int:
        """Write every customer of these partitions to Redis again (it restarted empty)."""
        if self.support is None:
            return 0
        written = 0
        await self.confirmed()  # and written anyway: Redis lost the queues
        async with self.lock:
            self.begin()
            for partition in partitions:
                states = [state for _key, state in self.stored_states(partition)]
                if states and self.lease is not None:
                    await self.lease.ready(f"writing {len(states)} customers to Redis again")
                await self.support.write(states)
                written += len(states)
        return written

    async def on_tick(self, msg: step.Incoming) -> None:
        """Re-grade every customer of the tick's partition, then raise its clock."""
        as_of = step.parse_tick(msg.value, now_us())
        if not isinstance(as_of, int):
            self.note(msg, step.Outcome("rejected", code=as_of.code))
            await self.sink.publish([step.dead_letter(msg, as_of)])
            return
        self.note(msg, step.Outcome("applied"))
        keys = list(self.customers.keys(msg.partition))
        for start in range(0, len(keys), TICK_BATCH):
            batch = Batch()
            now = now_us()
            for key in keys[start:start + TICK_BATCH]:
                self.tick_one(key, msg, as_of, batch, now)
            await self.settle(batch)
        if as_of > self.clock(msg.partition):
            await self.clocks.put_many([(msg.partition, b"p%d" % msg.partition, b"%d" % as_of)])
        log.info("tick as of %s: %d customers of partition %d", format_instant(as_of), len(keys),
                 msg.partition)

    def tick_one(self, key: bytes, msg: step.Incoming, as_of: int, batch: Batch,
                 now: int) -> None:
        """Re-grade one customer as of a tick; one that makes grading raise stays as stored."""
        state = self.state_of(key, msg.partition, batch)
        if state is None:
            return
        try:
            outcome = step.handle_tick(state, as_of, self.grading, now)
            if outcome.state is None and state.risk_stale and self.at_risk:
                outcome = step.Outcome("refreshed", state=state)  # deferred: refresh it now
            batch.add(key, msg.partition, outcome)
        except WorkerStop:
            raise
        except Exception as exc:  # a defect in grader: it must not stop the worker
            log.error("tick %s[%d]@%d failed for customer %s (%s), which keeps its stored "
                      "state:\n%s", msg.topic, msg.partition, msg.offset, key.decode(),
                      type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
            self.decoded.pop(key, None)
            batch.forget(key)

    def batch_clock(self, partition: int, batch: Batch) -> int:
        """The clock of ``partition``, read once per batch (a tick ends a batch)."""
        clock = batch.clocks.get(partition)
        if clock is None:
            clock = batch.clocks[partition] = self.clock(partition)
        return clock

    def clock(self, partition: int) -> int:
        """The latest tick seen on ``partition`` (NEVER if none)."""
        value = self.clocks.get(b"p%d" % partition, partition)
        return int(value) if value else NEVER


def create_app(settings: Settings, grading: Grading, options: StreamOptions,
               sink: OutputSink | None = None, access: Access | None = None,
               watch: PolicyWatch | None = None,
               stop: Callable[[WorkerStop], None] | None = None) -> faust.App:
    """The worker's Faust app, wired to its topics, tables and sink; ``access``: the
    customer endpoint's callers (default: from ``settings``).

    ``stop`` gets, once, why the worker must stop (a full data dir; with ``watch``,
    the policies topic read, a newer version of one of its policies), and stops it
    (grader.stream.worker); without it the app crashes."""
    prefix, partitions = settings.topic_prefix, settings.partitions
    store = table_store()
    servers = bootstrap_servers(settings.kafka_url)
    security = settings.kafka_security  # the same TLS context for Faust and the sender
    tls = kafkaauth.ssl_context(security)
    app = faust.App(
        f"{prefix}worker", broker=settings.kafka_url, store=store,
        broker_credentials=kafkaauth.faust_credentials(security, tls),
        datadir=str(settings.data_dir), web_bind=settings.web_host, web_host=settings.web_host,
        web_port=settings.web_port, topic_partitions=partitions, autodiscover=False,
        table_cleanup_interval=3600.0, consumer_auto_offset_reset="earliest",
        # No standby replicas: Faust's standby path lost changelog records (docs/streaming.md,
        # "Standby replicas"); a partition a worker takes over is read from its changelog.
        table_standby_replicas=0,
        web_application_options=webserver.application_options(settings.web_idle_timeout),
        **options.faust_settings,
    )
    keep_records_on_repeated_resume(app.flow_control)  # grader/stream/flowfix.py
    if store == "memory://":
        log.warning("rocksdict is not installed: tables use the memory store and are "
                    "rebuilt from their changelog topics at every start")
    # key_type/value_type bytes make Faust use the "raw" codec for the changelog too.
    customers = app.Table("customers", partitions=partitions, key_type=bytes, value_type=bytes)
    clocks = app.Table("clocks", partitions=partitions, key_type=bytes, value_type=bytes)
    source_names = [prefix + t for t in (*INPUTS, REPARTITION, TICKS)]
    progress = SourceProgress(stall_after=STALL_AFTER)
    auth = kafkaauth.client_auth(security, tls)
    lease = Lease(app.conf.broker_session_timeout)  # docs/streaming.md, "Zombies"
    app.transport = transport_for(app, source_names, servers, auth, options.true_end_offsets,
                                  options.fetch_max_wait_ms, progress, lease)
    source = app.topic(*source_names, partitions=partitions, **RAW)
    ticks = app.topic(prefix + TICKS, partitions=partitions, **RAW)
    sender = BatchSender(servers, auth, lease)
    telemetry = Telemetry()
    support = None
    if settings.redis_url:
        support = SupportQueues(settings.redis_url, settings.redis_prefix,
                                support_policy(settings, grading), settings.redis_files,
                                on_error=telemetry.redis_errors.inc)
    customer_store = FaustTableStore(customers, sender, partitions)
    processor = Processor(grading, customer_store, FaustTableStore(clocks, sender, partitions),
                          sink or KafkaSink(sender, prefix, partitions), prefix + TICKS,
                          partitions, support, telemetry, settings.warn_days,
                          os.environ.get(AT_RISK_SWITCH) != "1",
                          newer_in=watch.newer_in if watch is not None else None,
                          lease=lease)

    stopping: list[WorkerStop] = []

    async def fail(exc: BaseException) -> None:
        """Stop cleanly for a WorkerStop (once), crash for anything else."""
        if not isinstance(exc, WorkerStop):
            await app.crash(exc)
            return
        if isinstance(exc, PolicySuperseded):
            processor.superseded = str(exc)  # grade nothing more
        if stopping:
            return
        if isinstance(exc, DataDirFull):
            exc = DataDirFull(f"the data dir {settings.data_dir} is full (No space left on "
                              "device): the worker stops; what it did not store is not "
                              "committed; free space and start it again")
        stopping.append(exc)
        log.error("stopping: %s", exc)
        if stop is None:
            await app.crash(exc)
        else:
            stop(exc)

    def owned() -> set[int]:
        """The partitions this worker owns now (every source topic is co-partitioned)."""
        return {tp.partition for tp in app.consumer.assignment() if tp.topic in source_names}

    def owned_and_lags() -> tuple[set[int], dict[tuple[str, int], int]]:
        lags: dict[tuple[str, int], int] = {}
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic not in source_names:
                continue
            end, next_offset = consumer.highwater(tp), progress.next.get((tp.topic, tp.partition))
            if end is not None and next_offset is not None:
                lags[tp.topic.removeprefix(prefix), tp.partition] = max(0, end - next_offset)
        return owned(), lags

    telemetry.index = TierIndex(processor.stored_states,
                                {p.name: p.timezone for p in grading.policies})
    telemetry.source = owned_and_lags
    worker_name = str(app.conf.canonical_url)
    # The access log is no customer's state and no partition's output: its records are
    # written under no lease (a lease binds a batch's writes to the assignment it read its
    # states under; an answer of the endpoint is not part of a batch), by a producer of
    # its own, so that the lease's check of every produce request does not apply to it.
    access_sender = BatchSender(servers, auth)

    async def record_access(caller: Caller, customer_id: str, status: int) -> None:
        key = customer_id.encode()
        record = access_record(format_instant(now_us()), caller, customer_id, status,
                               worker_name)
        await access_sender.send([(prefix + ACCESS_LOG, partition_of(key, partitions), key,
                                   orjson.dumps(record))])

    support_of = support_policy(settings, grading)
    web.install(app, grading, customer_store, customers.changelog_topic.get_topic_name(),
                partitions, lambda partition: partition in owned(),
                access or load_access(settings, support_of), support_of, record_access)

    @app.page("/metrics")
    async def metrics(web: Any, _request: Any) -> Any:
        return web.bytes(telemetry.render(), headers={"Content-Type": CONTENT_TYPE})

    @app.on_before_shutdown.connect
    async def stop_sender(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        await sender.stop()  # the consumer has stopped: no batch is in flight
        await access_sender.stop()

    @app.agent(source, name="grade")
    async def grade(stream: Any) -> None:
        await grade_batches(stream, processor, fail, app.consumer.assignment, progress)

    @app.timer(REPAIR_EVERY)  # type: ignore[untyped-decorator]
    async def repair_stalled() -> None:
        consumer: ResumingConsumer = app.consumer  # type: ignore[assignment]
        processor.notices.flush()
        try:
            await consumer.repair_stalled()
        except Exception as exc:  # a timer's error would crash the worker; retried next time
            log.warning("checking for stalled input partitions failed: %r", exc)

    if support is not None:
        @app.timer(REDIS_CHECK_EVERY)  # type: ignore[untyped-decorator]
        async def check_redis() -> None:
            if not await support.restarted():
                return
            mine = sorted(owned())
            log.warning("Redis at %s restarted: writing the support queues of partitions "
                        "%s again", support.where, mine)
            written = await processor.rewrite_support(mine)
            log.info("support queues written again: %d customers", written)

    swept: set[int] = set()  # partitions swept for a roll-out since the last assignment

    def still_mine(partition: int) -> bool:
        """No rebalance begun (Faust sets the flag first thing), and the partition owned."""
        return not app.rebalancing and partition in owned()

    processor.owns = still_mine

    @app.timer(REFRESH_EVERY)  # type: ignore[untyped-decorator]
    async def refresh_stale() -> None:
        if app.in_recovery or app.rebalancing:
            return
        try:
            await processor.refresh_stale()
        except Exception as exc:  # a timer's error would crash the worker; retried
            log.warning("refreshing deferred tiers at risk failed, retried: %s", reason(exc))

    @app.on_partitions_revoked.connect
    async def settle_before_revoking(_app: Any, /, *_args: Any, **_kw: Any) -> None:
        # Faust waits for the agents' batches, not for the sweep timer: a sweep chunk in
        # flight is settled before the partitions can go to another worker (the eager
        # protocol rejoins only after this returns); the next chunk sees still_mine false.
        async with processor.lock:
            pass

    async def look_for_newer_versions() -> None:
        if watch is None or stopping:
            return
        try:
            why = await asyncio.get_running_loop().run_in_executor(None, watch.poll)
        except Exception as exc:  # the broker may be busy: tried again at the next look
            log.warning("reading the policies topic failed, tried again: %r", exc)
            return
        if why is not None:
            await fail(PolicySuperseded(why))

    @app.on_partitions_assigned.connect
    async def on_assignment(_app: Any, /, *_args: Any, **_kw: Any) -> None:
        telemetry.rebalances.inc()
        swept.clear()  # a new assignment: look at every partition again
        await look_for_newer_versions()  # a worker with a newer version may have joined

    @app.timer(WATCH_EVERY)  # type: ignore[untyped-decorator]
    async def watch_policies() -> None:
        await look_for_newer_versions()

    @app.timer(SWEEP_EVERY)  # type: ignore[untyped-decorator]
    async def sweep_policies() -> None:
        if app.in_recovery or app.rebalancing:
            return
        mine = owned()
        todo = sorted(mine - swept)
        telemetry.sweep_pending.set(len(todo))
        for partition in todo:
            try:
                await processor.sweep_policies([partition], still_mine)
            except WorkerStop as exc:
                await fail(exc)
                return
            except Exception as exc:  # a timer's error would crash the worker; retried
                log.warning("policy roll-out of partition %d failed, retried: %s", partition,
                            reason(exc))
                return
            swept.add(partition)
            telemetry.sweep_pending.set(len(mine - swept))
            await asyncio.sleep(SWEEP_PAUSE)

    @app.task  # type: ignore[untyped-decorator]
    async def report_loop() -> None:
        loop = type(asyncio.get_running_loop())
        log.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
        log.info("epoch %s (in the records this process stores)", processor.epoch)

    if store != "memory://":
        @app.task  # type: ignore[untyped-decorator]
        async def record_changelog_ids() -> None:
            await record_when_created(Path(app.conf.tabledir), changelogs_of(app),
                                      settings.kafka)

    if options.live_ticks:
        for tz in grading.timezones:
            app.crontab("0 0 * * *", timezone=ZoneInfo(tz), on_leader=True)(
                _live_tick(ticks, partitions))
    return app


async def grade_batches(stream: Any, processor: Processor,
                        crash: Callable[[BaseException], Awaitable[None]],
                        assignment: Callable[[], Container[tuple[str, int]]],
                        progress: SourceProgress) -> None:
    """The agent: grade each batch of ``stream``, then let Faust acknowledge it.

    ``take_events`` acknowledges a batch's messages once the loop body is done
    with it, and also when the body fails or is cancelled (its ``finally``).
    A batch that was not settled must never be committed, so on any exception
    its messages are marked as acknowledged *without* telling the consumer
    (``Message.ack`` then does nothing): their offsets stay uncommitted and
    they are redelivered after a restart. A failure other than cancellation
    (e.g. the broker refused a write) crashes the worker, because the offsets
    of that partition could not be committed past the batch any more.

    A batch that fails with a WorkerStop (a newer version of a policy is
    rolled out, the data dir is full) is not committed either; ``crash`` then
    stops the worker cleanly, and the agent waits for that stop.

    A batch can also hold messages taken before a rebalance, of partitions
    this worker no longer owns (``assignment`` gives the (topic, partition)
    pairs it owns now): those are skipped the same way, unacknowledged; their
    new owner reads them from the committed offset.

    Once a batch is settled, ``progress`` learns which offsets were graded:
    that, not Faust's acknowledgements, decides what is committed on the
    input topics (grader.stream.progress).
    """
    graded = 0
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
        if not await processor.confirmed():  # a rebalance began while waiting for the lease
            for event in events:
                event.message.acked = True  # never reaches the consumer: not committed
            log.info("a rebalance began while a batch of %d messages waited for the new "
                     "assignment's lease: skipped, read again after it", len(events))
            continue
        owned = assignment()
        mine = []
        for event in events:
            m = event.message
            if (m.topic, m.partition) in owned:
                mine.append(step.Incoming(m.topic, m.partition, m.offset, m.key, m.value,
                                          m.timestamp))
            else:
                m.acked = True  # never reaches the consumer: not committed here
        try:
            await processor.on_batch(mine)
            progress.graded([(m.topic, m.partition, m.offset) for m in mine], time.monotonic())
            if (graded + len(mine)) // LOG_EVERY > graded // LOG_EVERY:
                log.info("graded %d messages since start", graded + len(mine))
            graded += len(mine)
        except BaseException as exc:
            for event in events:
                event.message.acked = True  # never reaches the consumer: not committed
            if isinstance(exc, WorkerStop):  # a clean stop, not a crash
                await crash(exc)
                await asyncio.Event().wait()  # until the stop cancels the agent
            if not isinstance(exc, asyncio.CancelledError):
                log.error("batch of %d messages not settled, stopping the worker: %s",
                          len(events), reason(exc))
                await crash(exc)
            raise


def _live_tick(ticks: Any, partitions: int) -> Any:
    async def live_tick() -> None:
        """Local midnight (so also each month start): tick every partition as of now."""
        value = step.tick_message(now_us(), f"live-{uuid.uuid4()}")
        for partition in range(partitions):
            await ticks.send(key=None, value=value, partition=partition)
        log.info("live tick sent to %d partitions", partitions)

    return live_tick
