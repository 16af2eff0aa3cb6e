"""The worker's two tables behind a small Protocol: read a value, list keys, write durably.

The worker writes a batch of table values only after that batch's outputs
were acknowledged, and acknowledges the batch's input messages only after
the writes are acknowledged too (docs/streaming.md, "Ordering"). So a write
here returns once the broker holds every changelog record of it: the order
does not depend on when Faust happens to flush its producer buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from grader.sinks.kafka import BatchSender

Write = tuple[int, bytes, bytes]  # (partition, key, value)


class TableStore(Protocol):
    """A changelog-backed key-value table of bytes, co-partitioned with the inputs."""

    def get(self, key: bytes) -> bytes | None:
        """The stored value of ``key``, or None."""

    def all_keys(self) -> Iterable[bytes]:
        """Every key held by this process."""

    async def put_many(self, writes: Sequence[Write]) -> None:
        """Store every write and return once each one's changelog record is acknowledged."""


class FaustTableStore:
    """A Faust table whose changelog records this class writes itself, and awaits."""

    def __init__(self, table: Any, sender: BatchSender) -> None:
        self._table = table  # faust.Table with raw bytes keys and values
        self._sender = sender
        self._changelog = table.changelog_topic.get_topic_name()

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._table.get(key)
        return value

    def all_keys(self) -> Iterable[bytes]:
        return list(self._table.keys())

    async def put_many(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        # table.data is the local store. The changelog records are what
        # table[key] = value would send through Faust's producer buffer, but
        # batched, on the key's own partition (not that of whatever event Faust
        # considers current) and acknowledged before this returns. Faust's
        # restore reads them like its own. (With a RocksDB store, Faust would
        # also not learn their offsets, so a restart re-reads more changelog.)
        for _partition, key, value in writes:
            self._table.data[key] = value
        await self._sender.send([(self._changelog, partition, key, value)
                                 for partition, key, value in writes])


class MemoryTableStore:
    """A dict, for tests of the worker's logic without a broker."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partitions: dict[bytes, int] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def all_keys(self) -> Iterable[bytes]:
        return list(self.data)

    async def put_many(self, writes: Sequence[Write]) -> None:
        for partition, key, value in writes:
            self.data[key] = value
            self.partitions[key] = partition
