"""The worker's reads and writes of one partition's RocksDB database in Faust's store.

Faust's table access (``table[key]``) picks the RocksDB partition from "the
current event", which inside a batch of many partitions is not the key's: in
the body of a ``take_events`` loop there is none, and Faust refuses every
write ("Cannot modify table key from outside of stream iteration";
faust-streaming/faust#497, #300; docs/streaming.md, "Local store"). Faust
offers no public access by partition. Its RocksDB store keeps one database per partition behind the
private ``_db_for_partition`` (faust/stores/rocksdb.py); grader.stream.tables
reads and writes through it, and writes the changelog offset under the
store's ``offset_key`` in the same atomic write batch, as Faust's
``set_persisted_offset`` does.

Kept by tests/integration/test_faust_rocksdb.py (a plain Faust app on Apache
Kafka: a batch of two partitions' records, written through Faust's table
access, fails; through ``_db_for_partition``, each key is in its partition's
database; tried 2026-12-08) and tests/integration/test_stream.py
(test_kill_9_mid_stream_and_restart: recovery reads only what the local store
lacks).
"""

from __future__ import annotations

from typing import Any


def rocksdb_store(table: Any) -> Any | None:
    """The RocksDB store of Faust ``table``, or None (Faust's memory store)."""
    data = table.data
    return data if hasattr(data, "_db_for_partition") else None


def partition_db(store: Any, partition: int) -> Any:
    """The rocksdict database of ``partition`` in Faust's RocksDB ``store``."""
    return store._db_for_partition(partition)
