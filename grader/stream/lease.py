"""The worker's lease on its partitions: no write once its group session may have ended.

A worker whose process stalls past its session (a long GC pause, a stopped VM)
or whose network to the broker breaks loses its partitions to another worker,
which reads their changelog and goes on. When the first one comes back it may
still hold a batch in flight; writing it would put older records after the new
owner's (issue 20, docs/streaming.md "Zombies").

The group coordinator removes a member only after ``session`` seconds without
a heartbeat from it (or when it rejoins, which this worker knows of). So a
heartbeat that got an error-free answer, sent at time S (this process's
monotonic clock), proves that the member keeps its partitions at least until
S + session. :class:`Lease` keeps ``until = S + session - margin`` from the
consumer's own requests (``faust_patches.lease_hooks.watch_group``: Heartbeat, and JoinGroup then
SyncGroup), and :meth:`Lease.check` is called before every write of the
worker: before each batch of changelog records and outputs
(grader.sinks.kafka), at the very moment a produce request is written to its
socket (``faust_patches.lease_hooks.guard_producer``), while waiting for the broker's answer, and
before the Redis writes. ``margin`` covers a request written just before the
lease ends reaching the broker.

Each batch notes the assignment it began under (:meth:`Lease.begin`; the
processor's lock keeps a batch from spanning a rebalance, since a revoke waits
for it): a write checked under a later assignment gives up too, since the
batch read its states before the partitions were lost and regained.

A JoinGroup that waited for other members (tansu holds a new member's first
one for half a session; Kafka waits for every member to rejoin) leaves the
lease, counted from its send time, short or already ended when the
assignment arrives, although the member is safely in the group. So before a
batch takes the processor's lock, while the new assignment has had no
Heartbeat answered and less than half a session of lease is left, the batch
waits for that Heartbeat (:meth:`Lease.confirmed`, up to a session). If a
rebalance begins meanwhile, the batch is skipped unacknowledged (Faust's
revoke waits for its messages; they are read again from the committed
offset by whoever owns them next). Otherwise a batch's
writes could outlast the short lease and give up (exit) on a healthy member,
as the stress loop showed on a busy machine. A write that still meets a new
assignment's lease ended waits for the Heartbeat too (:meth:`Lease.ready`).

When the lease has run out the worker gives up at once: it logs one line and
exits (status :data:`LEASE_LOST_EXIT`) without flushing anything; its producer
sockets close with SO_LINGER 0, so the kernel drops a produce request that was
still queued behind a broken network rather than delivering it when the
network heals. A supervisor restarts it, and it rejoins as a new member.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
LEASE_LOST_EXIT = 75  # EX_TEMPFAIL: restart me
MARGIN_SHARE = 0.2  # of the session: the lease ends this much before the session may
MARGIN_MIN = 1.0  # seconds, at least
READY_POLL = 0.05  # seconds between two looks while waiting for a new assignment's lease
HEARTBEAT, JOIN_GROUP, SYNC_GROUP, PRODUCE = 12, 11, 14, 0  # Kafka API keys
#: Heartbeat errors after which the member is no longer in the group (its partitions may
#: be another's already): ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID.
GONE = frozenset({22, 25, 82})
REBALANCE_IN_PROGRESS = 27


class Lease:
    """Until when (monotonic seconds) this worker may still write for its partitions."""

    def __init__(self, session: float, clock: Callable[[], float] = time.monotonic,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.margin = max(MARGIN_MIN, session * MARGIN_SHARE)
        self.until = float("-inf")  # no partitions before the first SyncGroup
        self.clock = clock
        self.on_lost = on_lost or exit_now
        self._join_sent: float | None = None
        self.synced = 0  # assignments received (SyncGroup answers without error)
        self.term = 0  # the assignment the current batch began under (begin)
        self.unconfirmed = False  # synced, and no Heartbeat answered since
        self.rebalancing = False  # a Heartbeat answered REBALANCE_IN_PROGRESS since the sync

    def valid(self) -> bool:
        """Whether a write may go out now."""
        return self.clock() < self.until

    def begin(self) -> None:
        """A batch begins (under the processor's lock): its writes belong to this
        assignment, and to no later one."""
        self.term = self.synced

    def check(self, what: str) -> None:
        """Give up (``on_lost``: exit) unless the lease holds for the assignment the
        batch began under; ``what``: the write."""
        if not self.valid() or self.synced != self.term:
            self.on_lost(what)

    async def confirmed(self) -> bool:
        """Before a batch takes the processor's lock: while the current assignment has had
        no Heartbeat answered and less than half a session of lease is left, wait for that
        Heartbeat (up to a session); the batch's writes then have a lease that lasts.

        False when a rebalance began (a Heartbeat answered REBALANCE_IN_PROGRESS) or a new
        assignment came while waiting: the batch, taken under the old assignment, is to be
        skipped, so that the revoke (Faust waits for the batch's messages) is not held up."""
        def short() -> bool:
            return self.unconfirmed and self.until - self.clock() < self.session / 2

        if not short():
            return True
        synced = self.synced
        deadline = self.clock() + self.session
        while short() and self.clock() < deadline and not self.rebalancing \
                and self.synced == synced:
            await asyncio.sleep(READY_POLL)
        return not self.rebalancing and self.synced == synced

    async def ready(self, what: str) -> None:
        """:meth:`check`, but first wait, up to a session, for the first Heartbeat of a
        new assignment: the lease runs from the JoinGroup's send time, and a JoinGroup
        that waited long for other members leaves it short until a Heartbeat renews it."""
        deadline = self.clock() + self.session
        while (self.unconfirmed and not self.valid() and self.synced == self.term
               and self.clock() < deadline):
            await asyncio.sleep(READY_POLL)
        self.check(what)

    def renew(self, sent: float) -> None:
        """A request sent at ``sent`` got an answer that keeps the member in the group."""
        self.until = max(self.until, sent + self.session - self.margin)

    def end(self) -> None:
        """The member is out of the group now."""
        self.until = float("-inf")
        self.unconfirmed = False

    def saw(self, api_key: int, sent: float, error_code: int | None) -> None:
        """The group coordinator answered a request sent at ``sent`` with ``error_code``."""
        if api_key == HEARTBEAT:
            if error_code == 0:
                self.renew(sent)
                self.unconfirmed = False
            elif error_code == REBALANCE_IN_PROGRESS:
                self.rebalancing = True
            elif error_code in GONE:
                self.end()
        elif api_key == JOIN_GROUP:
            # the coordinator starts the member's session timer at the JoinGroup at latest
            self._join_sent = sent if error_code == 0 else None
        elif api_key == SYNC_GROUP and error_code == 0 and self._join_sent is not None:
            self.renew(self._join_sent)
            self._join_sent = None
            self.synced += 1
            self.unconfirmed = True
            self.rebalancing = False


def exit_now(what: str) -> None:
    """The default ``on_lost``: one line, then exit without flushing or committing."""
    log.error("lease on the partitions lost (no heartbeat answered for the group session): "
              "not %s; exiting (status %d) so that nothing older than the new owner's "
              "records is written; restart the worker", what, LEASE_LOST_EXIT)
    logging.shutdown()
    os._exit(LEASE_LOST_EXIT)
