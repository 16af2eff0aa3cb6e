"""A plain Faust app (not grader's worker) that shows how Faust loses standby records.

Run by tests/integration/test_faust_standby.py, one process per worker:

    python faust_standby_app.py BROKER_URL APP_ID DATA_DIR WEB_PORT [--slow] [--fixed]

One agent copies each record of the topic ``{APP_ID}-src`` (2 partitions)
into a RocksDB table, so the table's changelog holds one record per key;
with two workers, each holds one partition active and the other as a
standby replica. Every 0.3 s the process prints one JSON line: the keys in
its local store (active and standby partitions alike) and whether recovery
is done, to the file DATA_DIR.reports.

``--slow`` makes two things slower, as a loaded machine does: the table
takes 20 ms per changelog record it is handed in recovery (Faust's recovery
then lags the records already fetched into its queue), and an
``on_rebalance_complete`` receiver takes 1 s (Faust awaits it between
starting the standby partitions and resuming the flow a last time).
``--fixed`` applies grader's fix (grader/stream/faust_patches/flowfix.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import faust


def main(argv: list[str]) -> None:
    url, app_id, data_dir, web_port, *flags = argv
    reports = data_dir + ".reports"
    app = faust.App(app_id, broker=url, store="rocksdb://", datadir=data_dir,
                    web_port=int(web_port), web_bind="127.0.0.1", topic_partitions=2,
                    table_standby_replicas=1, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=10, broker_heartbeat_interval=3,
                    autodiscover=False)
    if "--fixed" in flags:
        from grader.stream.faust_patches.flowfix import keep_records_on_repeated_resume
        keep_records_on_repeated_resume(app.flow_control)

    slow = "--slow" in flags

    class SlowTable(faust.Table):  # type: ignore[misc]
        async def on_changelog_event(self, event: Any) -> None:
            if slow:
                await asyncio.sleep(0.02)
            await super().on_changelog_event(event)

    table = app.tables.add(SlowTable(app, name="copy", partitions=2, key_type=bytes,
                                     value_type=bytes, beacon=app.tables.beacon))
    source = app.topic(f"{app_id}-src", partitions=2, key_serializer="raw",
                       value_serializer="raw")

    @app.on_rebalance_complete.connect
    async def take_a_while(_sender: Any, **_kw: Any) -> None:
        if slow:
            await asyncio.sleep(1.0)

    @app.agent(source)
    async def copy(stream: Any) -> None:
        async for event in stream.events():
            table[event.key] = event.value

    @app.timer(0.3)  # type: ignore[untyped-decorator]
    async def report() -> None:
        store = table.data
        keys = set()
        for db in list(store._dbs.values()):  # a rocksdict Rdict per partition
            keys.update(k.decode() for k in db.keys() if k != store.offset_key)  # noqa: SIM118
        line = json.dumps({"keys": sorted(keys), "in_recovery": app.in_recovery,
                           "recovered": app.tables.recovery.completed.is_set()})
        with open(reports, "a") as out:  # Faust sends print() to its log
            out.write(line + "\n")

    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
