"""The worker's one agent: batches of the source topics' messages to the Processor.

:func:`grade_batches` takes the stream's messages in batches, hands the ones
of partitions this worker still owns to the Processor, and tells SourceProgress
which were graded once a batch is settled: that alone decides what is committed
on the input topics (docs/streaming.md, "Ordering").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any

from grader.core import step
from grader.core.errors import WorkerStop
from grader.sinks.redis import reason
from grader.stream.processor import Processor
from grader.stream.progress import SourceProgress

log = logging.getLogger(__name__)
BATCH_MAX = 1000  # input messages graded between two waits for acknowledgements
BATCH_WITHIN = 0.02  # seconds a partial batch waits for more messages
LOG_EVERY = 10_000  # messages between two progress lines in the log


async def grade_batches(stream: Any, processor: Processor,
                        crash: Callable[[BaseException], Awaitable[None]],
                        assignment: Callable[[], Container[tuple[str, int]]],
                        progress: SourceProgress) -> None:
    """The agent: grade each batch of ``stream``, then count it in ``progress``.

    ``take_events`` acknowledges a batch's messages once the loop body is done
    with it, and also when the body fails or is cancelled (its ``finally``).
    That does not commit them: the worker's consumer commits the input topics
    from ``progress`` only (grader.stream.faust_patches.seeking), which learns
    of a batch once it is settled. So a batch that fails or is cancelled is
    never committed, and is redelivered after a restart. A failure other than
    cancellation (e.g. the broker refused a write) crashes the worker, because
    the offsets of that partition could not be committed past the batch any
    more.

    A batch that fails with a WorkerStop (a newer version of a policy is
    rolled out, the data dir is full) is not committed either; ``crash`` then
    stops the worker cleanly, and the agent waits for that stop.

    A batch can also hold messages taken before a rebalance, of partitions
    this worker no longer owns (``assignment`` gives the (topic, partition)
    pairs it owns now): those are skipped, not counted in ``progress``; their
    new owner reads them from the committed offset.

    Once a batch is settled, ``progress`` learns which offsets were graded:
    that, not Faust's acknowledgements, decides what is committed on the
    input topics (grader.stream.progress).
    """
    graded = 0
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):
        if not await processor.confirmed():  # a rebalance began while waiting for the lease
            log.info("a rebalance began while a batch of %d messages waited for the new "
                     "assignment's lease: skipped, read again after it", len(events))
            continue
        owned = assignment()
        mine = []
        for event in events:
            m = event.message
            if (m.topic, m.partition) in owned:  # else skipped: not counted in progress
                mine.append(step.Incoming(m.topic, m.partition, m.offset, m.key, m.value,
                                          m.timestamp))
        try:
            await processor.on_batch(mine)
            progress.graded([(m.topic, m.partition, m.offset) for m in mine], time.monotonic())
            if (graded + len(mine)) // LOG_EVERY > graded // LOG_EVERY:
                log.info("graded %d messages since start", graded + len(mine))
            graded += len(mine)
        except BaseException as exc:  # not counted in progress: not committed
            if isinstance(exc, WorkerStop):  # a clean stop, not a crash
                await crash(exc)
                await asyncio.Event().wait()  # until the stop cancels the agent
            if not isinstance(exc, asyncio.CancelledError):
                log.error("batch of %d messages not settled, stopping the worker: %s",
                          len(events), reason(exc))
                await crash(exc)
            raise
