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
moves only over an offset whose record was graded and settled.

Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

Partition = tuple[str, int]  # (topic, partition); Faust's TP is such a tuple


class SourceProgress:
    """Per input partition, the next offset to commit."""

    def __init__(self) -> None:
        self.next: dict[Partition, int] = {}  # the offset to commit (the next to grade)

    def start(self, tp: Partition, offset: int) -> None:
        """The consumer was sought to ``offset`` on ``tp``: count from there."""
        self.next[tp] = offset

    def forget(self, tps: Iterable[Partition]) -> None:
        """``tps`` were revoked: nothing more is committed for them here."""
        for tp in tps:
            self.next.pop(tp, None)

    def graded(self, offsets: Iterable[tuple[str, int, int]]) -> None:
        """These (topic, partition, offset) records were graded and settled, in order."""
        nexts = self.next
        for topic, partition, offset in offsets:
            tp = (topic, partition)
            n = nexts.get(tp)
            if n is None:
                continue  # not started (between an assignment and its seek) or revoked
            if offset == n:
                nexts[tp] = n + 1

    def committable(self, tp: Partition) -> int | None:
        """The offset that may be committed on ``tp``, or None if it was not started."""
        return self.next.get(tp)
