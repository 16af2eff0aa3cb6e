"""A Faust transport whose consumer fixes what Faust's rebalances and recovery rely on.

**Seeking to committed offsets** (:class:`GraderConsumerThread`).
After an assignment Faust recovers its tables, resumes its streams, and then
calls ``seek_to_committed`` to rewind what it fetched but did not hand to a
stream during the rebalance. aiokafka's ``seek_to_committed`` only seeks
partitions whose committed offset is > 0, so on a partition that was never
committed those records are never delivered. The rebalance test in
tests/integration/test_stream.py lost the tick of the partitions the first
worker kept. Upstream: aio-libs/aiokafka#1003 (open: ``seek_to_committed``
ignores a committed offset of 0 or none); related: faust-streaming/faust#221,
robinhood/faust#115. Shown by tests/integration/test_faust_seeking.py
(``test_aiokafka_seek_to_committed_skips_a_never_committed_partition``,
``test_seek_to_committed_rewinds_what_was_fetched``, Apache Kafka).

The fix: such a source partition goes back to its beginning (what
``auto_offset_reset="earliest"`` means). Records a stream had already
handled before are then graded again as duplicates, which the customer's
state ignores. (Session 1 sought to "Faust's read offset + 1" instead; that
skips records that were read and then dropped from the stream's queue by a
second rebalance, and the rebalance test lost events that way.) Also,
aiokafka's seek stops at the first partition that a newer rebalance took
away while it awaited committed offsets; here each partition still assigned
is sought on its own, and one that moved is left to that newer rebalance.
(That part is not shown to matter: aiokafka gives every partition of a new
assignment a fresh position from its committed offset, and the newer
rebalance seeks again.)

**No read offsets for inputs** (:class:`ReadOffsets`), and commits from
SourceProgress (:meth:`ResumingConsumer._new_offset`, grader.stream.progress):
Faust's read offsets made its fetch loop drop or skip records after seeks and
rebalances; input records are now all handed on, and only graded offsets are
committed. Related upstream: robinhood/faust#115 ("DROPPED MESSAGE ROFF"),
faust-streaming/faust#216, robinhood/faust PR #542 (read offset reset on a seek
to 0); for the commits faust-streaming/faust#312, #606. Shown by
tests/stream/test_faust_read_offsets.py (Faust's own fetch loop) and
tests/stream/test_progress.py
(``test_the_worker_consumer_commits_inputs_from_progress_not_from_faust_gaps``).

**Stalled input partitions** (:meth:`ResumingConsumer.repair_stalled`): offsets
that hold no record (transaction markers, records deleted by retention or
delete-records, compaction) are skipped, or SourceProgress, which moves only
over graded records, would stop there for good; a partition whose first
record at the offset was not delivered is read again (docs/streaming.md,
"Committed offsets"). Shown by tests/integration/test_input_gaps.py (a
transactional producer's markers on Apache Kafka).

**True end offsets** (only with ``true_end_offsets``, the tansu quirk).
Faust restores a table by reading its changelog up to the end offset that
ListOffsets reports. tansu reports the base offset of a partition's last
record batch + 1, not the last offset + 1, so a restore would stop at the
first record of the last batch and lose the rest. With the quirk on, each
end offset is checked by fetching from the offset before it: the records
returned (the whole last batch) show the true end. On Apache Kafka the fetch
returns one record and the end offset is unchanged. Shown on tansu by
tests/integration/test_faust_seeking.py
(``test_end_offsets_of_a_batched_partition``).

**Fetch wait** (only with ``fetch_max_wait_ms``, the tansu quirk). Faust
fixes the consumer's ``fetch_max_wait_ms`` at 1,500 ms. Kafka answers a
waiting Fetch as soon as new records arrive; tansu waits the full time
(measured: a record produced while a fetch waited arrived 1.1-1.4 s later),
so every quiet moment would add up to 1.5 s of latency. With the quirk on,
the worker's consumer waits at most ``fetch_max_wait_ms``. That the value
reaches aiokafka's Fetcher is tested (tests/integration/test_faust_seeking.py,
``test_the_fetch_wait_reaches_aiokafkas_fetcher``, tansu); the latency it
saves is measured, not tested (bench/tansu_fetch_wait.py).

**Transport** (:func:`transport_for`): Faust has no setting for the consumer
class, so the App's ``transport`` is replaced after the App exists. It is how
the patches above are installed; the tests named above build a bare Faust App
with and without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as driver

from grader.kafka.offsets import fetch_first, fetched_ends
from grader.stream.faust_patches.lease_hooks import watch_group
from grader.stream.lease import Lease
from grader.stream.progress import SourceProgress

log = logging.getLogger(__name__)


class GraderConsumerThread(driver.AIOKafkaConsumerThread):
    """The aiokafka consumer thread: a seek that survives a moving assignment.

    aiokafka's ``seek_to_committed`` walks the assigned partitions, awaiting
    each committed offset; when a rebalance changes the assignment meanwhile,
    it raises IllegalStateError halfway and leaves the remaining partitions
    where they were. Faust logs that ("exception performing seek") and goes
    on, so records fetched during the rebalance and dropped were never read
    again, and Faust's gap bookkeeping then committed past them: the
    join-then-leave rebalance test lost events that way. Here every
    partition still assigned is sought, each on its own: to its committed
    offset, or, for a never-committed source partition, to its beginning.
    """

    consumer: ResumingConsumer  # set by Faust's ConsumerThread; holds the options

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if self.consumer.fetch_max_wait_ms is not None:
            # read by its Fetcher at start
            consumer._fetch_max_wait_ms = self.consumer.fetch_max_wait_ms
        if self.consumer.lease is not None:
            watch_group(consumer._client, self.consumer.lease)  # its group requests
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return await self.call_thread(self._seek_each_to_committed)  # type: ignore[no-any-return]

    async def _seek_each_to_committed(self) -> dict[Any, int]:
        consumer = self._ensure_consumer()
        sources = self.consumer.source_topics
        assigned = sorted(consumer.assignment())
        committed: dict[Any, int] = {tp: await consumer.committed(tp) for tp in assigned}
        fresh = [tp for tp in assigned
                 if tp.topic in sources and not (committed[tp] or 0) > 0]
        # One ListOffsets for all: seek_to_beginning + position() per partition waited
        # for a fetch each (1.5 s on Kafka, which holds an empty fetch that long).
        beginnings = await consumer.beginning_offsets(fresh) if fresh else {}
        sought: dict[Any, int] = {}  # source partition -> the position it was sought to
        for tp in assigned:
            target = beginnings[tp] if tp in beginnings else committed[tp]
            try:
                if target is not None and (tp in beginnings or target > 0):
                    consumer.seek(tp, target)
            except IllegalStateError:  # moved by a newer rebalance, which seeks again
                log.info("partition %s moved while seeking", tp)
                del committed[tp]
                continue
            if tp in beginnings:
                sought[tp] = target
            elif tp.topic in sources:
                sought[tp] = await consumer.position(tp)
        self.consumer.sought = sought
        return committed


class ReadOffsets(dict[Any, "int | None"]):
    """Faust's read offsets (a defaultdict of None), except that input partitions have none.

    Faust's fetch loop drops a record at or below its read offset of the
    partition, and treats a jump past it as a gap. Both went wrong after
    rebalances and seeks: records in flight from before a seek moved the
    read offset past records fetched again, which were then dropped. For
    input partitions every fetched record is handed on; duplicates are
    ignored by the customers' states, and SourceProgress decides what is
    committed. Changelog partitions keep Faust's logic.
    """

    def __init__(self, inputs: frozenset[str]) -> None:
        super().__init__()
        self.inputs = inputs

    def __getitem__(self, tp: Any) -> int | None:
        if tp.topic in self.inputs:
            return None
        return self.get(tp)


class ResumingConsumer(driver.Consumer):
    """A consumer that commits input partitions only as far as they were graded.

    Its thread seeks robustly; on tansu it checks end offsets. On the input
    topics, what may be committed is :class:`SourceProgress`'s business, not
    Faust's acknowledgement lists (whose gaps count as done), and a stalled
    partition is read again (:meth:`repair_stalled`).
    """

    source_topics: frozenset[str] = frozenset()
    servers: tuple[str, ...] = ()  # bootstrap servers, for the end-offset check
    auth: Mapping[str, Any] = {}  # their security settings (grader.kafka.auth.client_auth)
    true_end_offsets: bool = False
    fetch_max_wait_ms: int | None = None
    lease: Lease | None = None  # renewed by the group's answers (grader.stream.lease)
    progress: SourceProgress  # set per app by transport_for
    sought: dict[Any, int]  # source partition -> position, set by the thread's last seek

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = ReadOffsets(self.source_topics)

    def _new_consumer_thread(self) -> Any:
        return GraderConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def highwaters(self, *partitions: Any) -> Mapping[Any, int]:
        """End offsets; with ``true_end_offsets``, checked by a fetch (module docstring)."""
        ends: Mapping[Any, int] = await super().highwaters(*partitions)
        if not self.true_end_offsets:
            return ends
        return await fetched_ends(list(self.servers), ends, self.auth)

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit: an input partition's from SourceProgress, else Faust's."""
        if tp.topic not in self.source_topics:
            return super()._new_offset(tp)
        self._acked[tp].clear()  # not used for inputs; kept empty
        self._acked_index[tp].clear()
        return self.progress.committable(tp)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, and count each input partition from there."""
        self.sought = {}
        await super().perform_seek()
        now = time.monotonic()
        for tp, offset in self.sought.items():
            self.progress.start(tp, offset, now)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await super().on_partitions_revoked(revoked)
        self.progress.forget(revoked)

    async def repair_stalled(self) -> None:
        """Read each stalled input partition again from the offset it is stuck at.

        Offsets that a fetch shows to hold no record (compacted away,
        transaction markers, deleted by retention) are skipped, with a
        warning; the records from there on are delivered again, and those
        graded before are duplicates that the customers' states ignore.
        """
        if self.app.rebalancing or not self.flow_active:
            return
        assigned = self.assignment()
        progress = self.progress
        ends: dict[Any, int | None] = {tp: self.highwater(tp) for tp in progress.next
                                       if tp in assigned}
        stuck = {tp: offset for tp, offset in progress.stalled(ends, time.monotonic()).items()
                 if tp in assigned}
        if not stuck:
            return
        firsts = await fetch_first(list(self.servers), stuck, self.auth, timeout=5.0)
        if self.app.rebalancing:
            return  # the next assignment starts every partition afresh
        now = time.monotonic()
        assigned = self.assignment()
        for tp, offset in stuck.items():
            if tp not in assigned or progress.committable(tp) != offset:
                continue  # moved meanwhile
            progress.repairing(tp, now)
            first = firsts.get(tp)
            if first is None:
                continue  # nothing at or past it after all
            if first > offset:
                log.warning("%s: offsets %d..%d hold no record; skipped", tp, offset, first - 1)
                progress.skip_to(tp, first, now)
            log.warning("%s: not graded past offset %d though later records exist; "
                        "reading it again from there", tp, first)
            try:
                await self.seek_wait({tp: first})  # in the consumer's own thread
            except IllegalStateError:  # revoked meanwhile: its next owner reads it
                continue


def transport_for(app: Any, source_topics: Iterable[str], servers: Iterable[str],
                  auth: Mapping[str, Any], true_end_offsets: bool,
                  fetch_max_wait_ms: int | None, progress: SourceProgress,
                  lease: Lease | None = None) -> Any:
    """A Kafka transport for ``app`` whose consumer is a ResumingConsumer."""
    consumer = type("GraderConsumer", (ResumingConsumer,),
                    {"source_topics": frozenset(source_topics), "servers": tuple(servers),
                     "auth": dict(auth),
                     "true_end_offsets": true_end_offsets,
                     "fetch_max_wait_ms": fetch_max_wait_ms, "progress": progress,
                     "lease": lease})
    transport = type("GraderTransport", (driver.Transport,), {"Consumer": consumer})
    return transport(app.conf.broker_consumer, app)
