"""Which input offsets may be committed: only those graded, in order, from a known start.

Faust commits a partition up to the last of its consecutive acknowledged
offsets, and it counts as acknowledged every offset it *skipped*: when a
record arrives more than one past the last one it read ("a gap"), the
offsets in between are assumed to hold no record (compaction, transaction
markers). After a rebalance its read offset and the fetch position can
disagree, so records that exist and were never graded fell into such gaps
and were committed past: the join-then-leave rebalance test lost events
that way (docs/streaming.md, "Committed offsets").

So the worker does not let Faust decide what is done on its input topics.
:class:`SourceProgress` keeps, per input partition, the next offset to
commit. It starts where the consumer was sought to after an assignment (the
committed offset, or the beginning of a never-committed partition), and it
moves only over an offset whose record was graded and settled, or over
offsets that a fetch showed to hold no record. A partition whose next offset
stays below what is known to exist is *stalled*: the consumer (grader.stream
.seeking) checks that, and reads it again from that offset.

Pure bookkeeping: no I/O, the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Partition = tuple[str, int]  # (topic, partition); Faust's TP is such a tuple


class SourceProgress:
    """Per input partition, the next offset to commit, and whether it is stuck."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after  # seconds without progress that make a stall
        self.next: dict[Partition, int] = {}  # the offset to commit (the next to grade)
        self.seen_end: dict[Partition, int] = {}  # one past the highest offset graded
        self.moved_at: dict[Partition, float] = {}  # when ``next`` last moved or was set
        self.repaired_at: dict[Partition, float] = {}  # when it was last read again
        self.behind_since: dict[Partition, float] = {}  # first check that saw it behind

    def start(self, tp: Partition, offset: int, now: float) -> None:
        """The consumer was sought to ``offset`` on ``tp``: count from there."""
        self.next[tp] = offset
        self.moved_at[tp] = now
        self.seen_end.pop(tp, None)
        self.repaired_at.pop(tp, None)
        self.behind_since.pop(tp, None)

    def forget(self, tps: Iterable[Partition]) -> None:
        """``tps`` were revoked: nothing more is committed for them here."""
        for tp in tps:
            self.next.pop(tp, None)
            self.seen_end.pop(tp, None)
            self.moved_at.pop(tp, None)
            self.repaired_at.pop(tp, None)
            self.behind_since.pop(tp, None)

    def graded(self, offsets: Iterable[tuple[str, int, int]], now: float) -> None:
        """These (topic, partition, offset) records were graded and settled, in order."""
        nexts, seen = self.next, self.seen_end
        for topic, partition, offset in offsets:
            tp = (topic, partition)
            n = nexts.get(tp)
            if n is None:
                continue  # not started (between an assignment and its seek) or revoked
            if offset == n:
                nexts[tp] = n + 1
                self.moved_at[tp] = now
            if offset >= seen.get(tp, 0):
                seen[tp] = offset + 1

    def skip_to(self, tp: Partition, offset: int, now: float) -> None:
        """Offsets up to ``offset`` (excluded) were shown to hold no record."""
        n = self.next.get(tp)
        if n is not None and offset > n:
            self.next[tp] = offset
            self.moved_at[tp] = now

    def committable(self, tp: Partition) -> int | None:
        """The offset that may be committed on ``tp``, or None if it was not started."""
        return self.next.get(tp)

    def stalled(self, ends: Mapping[Partition, int | None], now: float) -> dict[Partition, int]:
        """Started partitions that stayed ``stall_after`` s behind a record known to exist.

        ``ends`` are the consumer's high watermarks; a record graded past the
        next offset also shows that more exists. The time counts from the
        later of the first check that saw the partition behind and its last
        move, so a record arriving on a quiet partition is not a stall. A
        partition is reported at most once per ``stall_after`` seconds.
        """
        stuck = {}
        for tp, n in self.next.items():
            end = max(ends.get(tp) or 0, self.seen_end.get(tp, 0))
            if n >= end:
                self.behind_since.pop(tp, None)
                continue
            since = max(self.behind_since.setdefault(tp, now), self.moved_at[tp])
            if (now - since >= self.stall_after
                    and now - self.repaired_at.get(tp, float("-inf")) >= self.stall_after):
                stuck[tp] = n
        return stuck

    def repairing(self, tp: Partition, now: float) -> None:
        """``tp`` is being read again from its next offset."""
        self.repaired_at[tp] = now
