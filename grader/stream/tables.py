"""The worker's two tables behind a small Protocol: read a value, list keys, write durably.

The worker writes a batch of table values only after that batch's outputs
were acknowledged, and acknowledges the batch's input messages only after
the writes are acknowledged too (docs/streaming.md, "Ordering"). So a write
here returns once the broker holds every changelog record of it: the order
does not depend on when Faust happens to flush its producer buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

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
    """A Faust table, its changelog written with an explicit partition and awaited."""

    def __init__(self, table: Any) -> None:
        self._table = table  # faust.Table with raw bytes keys and values

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._table.get(key)
        return value

    def all_keys(self) -> Iterable[bytes]:
        return list(self._table.keys())

    async def put_many(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        # table.data is the local store; send_changelog is what table[key] = value
        # would send, but with the partition given here (the key's own partition)
        # rather than the one of whatever event Faust considers current.
        pending = []
        for partition, key, value in writes:
            self._table.data[key] = value
            pending.append(self._table.send_changelog(partition, key, value))
        await asyncio.gather(*pending)


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
