"""The worker's two tables behind a small Protocol: read a value, list keys, write durably.

The worker writes a batch of table values only after that batch's outputs
were acknowledged, and acknowledges the batch's input messages only after
the writes are acknowledged too (docs/streaming.md, "Ordering"). So a write
here returns once the broker holds every changelog record of it: the order
does not depend on when Faust happens to flush its producer buffer.

Every read and write names the key's partition. Faust's own table access
picks a RocksDB partition from "the current event", which inside a batch is
not the key's (docs/streaming.md, "Local store").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from grader.core.errors import DataDirFull
from grader.core.topology import partition_of
from grader.sinks.kafka import BatchSender
from grader.stream.faust_patches.rocksdb import partition_db, rocksdb_store

Write = tuple[int, bytes, bytes]  # (partition, key, value)


class TableStore(Protocol):
    """A changelog-backed key-value table of bytes, co-partitioned with the inputs."""

    def get(self, key: bytes, partition: int) -> bytes | None:
        """The stored value of ``key`` (which lives in ``partition``), or None."""

    def keys(self, partition: int) -> Iterable[bytes]:
        """Every key of ``partition`` held by this process."""

    async def put_many(self, writes: Sequence[Write]) -> None:
        """Store every write and return once each one's changelog record is acknowledged."""


class FaustTableStore:
    """A Faust table whose changelog records this class writes itself, and awaits.

    With Faust's memory store, the table is one dict. With its RocksDB store
    (one database per partition, under the worker's data dir), each write
    goes to its partition's database together with the changelog offset it
    got, in one atomic write batch; Faust's recovery then reads the
    changelog only from that offset on.
    """

    def __init__(self, table: Any, sender: BatchSender, partitions: int) -> None:
        self._table = table  # faust.Table with raw bytes keys and values
        self._sender = sender
        self._partitions = partitions
        self._changelog = table.changelog_topic.get_topic_name()

    @property
    def _rocks(self) -> Any:
        """The RocksDB store, or None for the memory store."""
        return rocksdb_store(self._table)

    def get(self, key: bytes, partition: int) -> bytes | None:
        rocks = self._rocks
        if rocks is None:
            value: bytes | None = self._table.data.get(key)
        else:
            value = partition_db(rocks, partition).get(key)
        return value

    def keys(self, partition: int) -> Iterable[bytes]:
        rocks = self._rocks
        if rocks is None:
            # keys live on the partition they hash to (misrouted input is rejected)
            return [k for k in self._table.data if partition_of(k, self._partitions) == partition]
        offset_key = rocks.offset_key
        stored = partition_db(rocks, partition).keys()
        return [k for k in stored if k != offset_key]

    async def put_many(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        # The changelog records are what table[key] = value would send through
        # Faust's producer buffer, but batched, on the key's own partition and
        # acknowledged before the local store is written: the local store then
        # never holds a value the changelog lacks. Faust's restore reads them
        # like its own.
        last = await self._sender.send([(self._changelog, partition, key, value)
                                        for partition, key, value in writes])
        rocks = self._rocks
        if rocks is None:
            data = self._table.data
            for _partition, key, value in writes:
                data[key] = value
            return
        import rocksdict

        batches: dict[int, Any] = {}
        for partition, key, value in writes:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            batch.put(key, value)
        for partition, batch in batches.items():
            # what Faust's set_persisted_offset writes, in the same atomic batch
            batch.put(rocks.offset_key, str(last[(self._changelog, partition)]).encode())
            try:
                partition_db(rocks, partition).write(batch)
            except Exception as exc:  # rocksdict raises Exception with RocksDB's message
                if "No space left on device" in str(exc):
                    raise DataDirFull(f"the data dir is full (No space left on device), "
                                      f"writing table {self._table.name}") from exc
                raise


class MemoryTableStore:
    """A dict, for tests of the worker's logic without a broker."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.partitions: dict[bytes, int] = {}

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self.data.get(key)

    def keys(self, partition: int) -> Iterable[bytes]:
        return [k for k, p in self.partitions.items() if p == partition]

    async def put_many(self, writes: Sequence[Write]) -> None:
        for partition, key, value in writes:
            self.data[key] = value
            self.partitions[key] = partition
