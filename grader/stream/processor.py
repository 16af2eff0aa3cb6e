"""The worker's grading of batches of messages: :class:`Processor`.

One agent (grader.stream.agent) consumes the four input topics and the ticks
topic (all co-partitioned), so one customer's messages are handled one at a
time and a tick never races an event for the same customer. The agent takes
messages in batches; :class:`Processor` steps each one with grader.core.step
(one live state per customer in the batch), stores each changed customer
once, together with the outputs computed for it, and waits for the broker;
then publishes the outputs and waits again; then writes the customers whose
support-queue keys changed to Redis; only then are the batch's offsets
counted as graded, and so committed (grader.stream.progress; docs/streaming.md,
"Ordering"). grader.stream.app wires it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson

from grader.core import codec, step
from grader.core.clock import NEVER, format_instant
from grader.core.errors import WorkerStop
from grader.core.events import Rejection
from grader.core.grading import Grading, policy_stale
from grader.core.state import CustomerState
from grader.core.topology import CUSTOMER_TIERS, TICKS, TIER_CHANGES
from grader.kafka.policyregistry import PolicySuperseded
from grader.sinks.kafka import OutputSink
from grader.sinks.redis import SupportQueues
from grader.stream.lease import Lease
from grader.stream.notices import Notices
from grader.stream.tables import TableStore
from grader.web.metrics import Telemetry

log = logging.getLogger(__name__)
TICK_BATCH = 500  # customers re-graded between two waits for acknowledgements
DECODED_MAX = 200_000  # decoded customer states kept between batches
BEHIND_AFTER = 1.0  # seconds: a batch whose newest message is older is a backlog's
STALE_CHUNK = 500  # customers whose deferred tier at risk one batch (or timer) refreshes


def now_us() -> int:
    """The wall clock in microseconds."""
    return time.time_ns() // 1000


@dataclass(slots=True)
class Cached:
    """A record this process stored: its bytes, its state decoded, where the state's codec
    bytes begin in them, and the mark of their tail (codec.dump_state_marked) or None."""

    value: bytes
    state: CustomerState
    start: int
    mark: codec.Mark | None


class Batch:
    """What the messages of one batch did: live states, and outputs per customer in order.

    ``defer``: a backlog's batch, whose tier at risk is deferred (Processor.defer_risk):
    its steps build no customer-tiers snapshot for a customer with tiers."""

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer
        self.states: dict[bytes, CustomerState | None] = {}  # loaded or changed
        self.store: dict[bytes, tuple[int, CustomerState]] = {}  # records to write, by key
        self.outputs: dict[bytes, list[step.Output]] = {}  # per customer, stored with it
        self.unstored: list[step.Output] = []  # dead letters, forwards: follow from the message
        self.applied: dict[bytes, list[step.Incoming]] = {}  # what changed each live state
        self.clocks: dict[int, int] = {}  # partition -> its clock, read once per batch
        self.republished: dict[bytes, int] = {}  # how many outputs first are republished ones
        self.support: dict[bytes, None] = {}  # customers whose Redis keys are to be written
        # Customers whose state is the one this process stored but for the tier at risk
        # their refresh changes (take_stale): stored again by encoding only that (Cached).
        self.tails: dict[bytes, None] = {}

    def add(self, key: bytes, partition: int, outcome: step.Outcome) -> None:
        """Keep what one step did to customer ``key``."""
        if outcome.state is not None:
            self.states[key] = outcome.state
            self.store[key] = (partition, outcome.state)
        if outcome.outputs:
            self.outputs.setdefault(key, []).extend(outcome.outputs)
        if outcome.support:
            self.support[key] = None

    def forget(self, key: bytes) -> list[step.Incoming]:
        """Drop customer ``key``'s live state and outputs; the messages that had changed it."""
        for kept in (self.states, self.store, self.outputs, self.republished, self.support,
                     self.tails):
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
        # The records this process stored, decoded: key -> Cached (the bytes stored, the
        # state, ...). A cached state is used only while the table still holds those bytes.
        self.decoded: dict[bytes, Cached] = {}
        # Every string a refreshed tier at risk may write (codec.dump_state_marked).
        self.names = tuple(dict.fromkeys([*(p.name for p in grading.policies),
                                          *(t for p in grading.policies for t in p.tier_names)]))
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
            defer = self.at_risk and behind
            try:
                batch = Batch(defer)
                for msg in messages:
                    if msg.topic == self.ticks_topic:
                        await self.settle(batch)
                        batch = Batch(defer)
                        await self.on_tick(msg)
                    else:
                        self.grade(msg, batch)
                await self.settle(batch)
            except BaseException:
                self.forget_stored()
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
            try:
                await self.settle(batch)
            except BaseException:
                self.forget_stored()
                for key, (partition, _state) in batch.store.items():
                    self.stale.setdefault(key, partition)  # refreshed again next time
                raise
            return len(batch.store)

    def forget_stored(self) -> None:
        """After a failure between grading and publishing: forget the states this process
        stored and decoded (they may have changed in place without being stored), and
        take a new epoch, so that a record it stored whose outputs may not have gone out
        is published again when next loaded, as after a restart (state_of)."""
        self.decoded.clear()
        self.epoch = uuid.uuid4().hex

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
                                        self.grading, now_us(), self.partitions,
                                        snapshots=not batch.defer)
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
            if cached is not None and cached.value == stored:  # (an identity check first)
                state = cached.state  # stored by this process: nothing to republish
            else:
                record = step.decode_record(stored)
                state = record.state
                self.check_versions(state)
                if record.epoch != self.epoch and (record.pending or record.support):
                    again = step.republished(record.pending)
                    batch.add(key, partition, step.Outcome("republished", again, state,
                                                           support=record.support))
                    batch.republished[key] = len(again)  # sent again as they are
        batch.states[key] = state
        return state

    async def settle(self, batch: Batch) -> None:
        """Store the changed customers with their outputs, then publish; wait for both.

        First each customer to store gets its tier at risk refreshed, once for the
        whole batch (step.with_risk): its snapshot and warnings are stored with it.
        A backlog's batch (``batch.defer``) defers that instead (defer_risk); a batch that
        is not refreshes, with its own customers, up to STALE_CHUNK deferred ones."""
        if batch.defer:
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
        cached = []
        for key, (partition, state) in batch.store.items():
            state.revision += 1
            body, mark = self.dump(key, state, key in batch.tails)
            value = step.encode_record(state, self.epoch, batch.outputs.get(key, []),
                                       key in batch.support, body)
            cached.append((partition, key, Cached(value, state, len(value) - len(body), mark)))
        await self.customers.put_many([(partition, key, entry.value)
                                       for partition, key, entry in cached])
        if len(self.decoded) > DECODED_MAX:
            self.decoded.clear()
        index = self.telemetry.index
        for partition, key, entry in cached:
            self.decoded[key] = entry
            if index is not None:
                index.stored(key, partition, entry.state)
        await self.sink.publish([*batch.unstored,
                                 *(out for outs in batch.outputs.values() for out in outs)])
        self.count_changes(batch)
        if self.support is not None:
            changed = [batch.store[key][1] for key in batch.support if key in batch.store]
            if changed and self.lease is not None:
                await self.lease.ready(f"writing {len(changed)} customers to Redis")
            await self.support.write(changed)

    def dump(self, key: bytes, state: CustomerState,
             tail: bool) -> tuple[bytes, codec.Mark | None]:
        """The state's codec bytes, and where their tier at risk begins if a refresh may
        follow (stored deferred: risk_stale). ``tail``: only the tier at risk changed since
        this process stored it (take_stale): the stored body is kept, the tail encoded."""
        if tail:
            cached = self.decoded.get(key)
            if cached is not None and cached.state is state and cached.mark is not None:
                body = codec.redump_tail(cached.value, cached.start, cached.mark, state)
                if body is not None:
                    return body, None
        if state.risk_stale:
            return codec.dump_state_marked(state, self.names)
        return codec.dump_state(state), None

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
            untouched = key not in batch.states
            state = self.state_of(key, partition, batch)
            if state is None or not state.risk_stale:
                del self.stale[key]
                continue
            batch.store[key] = (partition, state)
            if untouched:  # as stored: the refresh changes only its tail (dump checks the
                batch.tails[key] = None  # cache holds this very state with its mark)
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
                    try:
                        for key in keys[start:start + TICK_BATCH]:
                            state = self.state_of(key, partition, batch)
                            if state is None or not policy_stale(state, self.grading):
                                continue
                            outcome = step.handle_policy(state, self.grading, now)
                            batch.add(key, partition, outcome)
                            done += 1
                            changes += sum(out.topic == TIER_CHANGES for out in outcome.outputs)
                        await self.settle(batch)
                    except BaseException:
                        self.forget_stored()
                        raise
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
