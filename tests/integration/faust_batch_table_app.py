"""A plain Faust app (not grader's worker) that writes a batch's records to a RocksDB table.

Run by tests/integration/test_faust_rocksdb.py:

    python faust_batch_table_app.py BROKER_URL APP_ID DATA_DIR WEB_PORT {table,by_partition}

One agent takes the records of the topic ``{APP_ID}-src`` (2 partitions) in batches
(``take_events``, as grader's agent does) and stores each record's key in a RocksDB table
of 2 partitions: ``table`` through Faust's table access (``table[key] = value``),
``by_partition`` through the store's database of the record's partition (grader's
grader/stream/faust_patches/rocksdb.py). After each batch it writes one JSON line to
DATA_DIR.reports: the keys in each partition's database, and the error the batch's writes
raised, if any.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import faust


def main(argv: list[str]) -> None:
    url, app_id, data_dir, web_port, how = argv
    app = faust.App(app_id, broker=url, store="rocksdb://", datadir=data_dir,
                    web_port=int(web_port), web_bind="127.0.0.1", topic_partitions=2,
                    consumer_auto_offset_reset="earliest", autodiscover=False)
    table = app.Table("copy", partitions=2, key_type=bytes, value_type=bytes)
    source = app.topic(f"{app_id}-src", partitions=2, key_serializer="raw",
                       value_serializer="raw")

    def report(error: str | None) -> None:
        store = table.data
        dbs = {str(p): sorted(k.decode() for k in db.keys() if k != store.offset_key)  # noqa: SIM118
               for p, db in sorted(store._dbs.items())}
        with open(data_dir + ".reports", "a") as out:  # Faust sends print() to its log
            out.write(json.dumps({"dbs": dbs, "error": error}) + "\n")

    @app.agent(source)
    async def copy(stream: Any) -> None:
        async for events in stream.take_events(1000, within=1.0):
            error = None
            try:
                for event in events:
                    if how == "by_partition":
                        from grader.stream.faust_patches.rocksdb import partition_db, rocksdb_store

                        db = partition_db(rocksdb_store(table), event.message.partition)
                        db.put(event.key, event.value)
                    else:
                        table[event.key] = event.value
            except Exception as exc:  # reported: the test shows it
                error = repr(exc)
            report(error)

    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
