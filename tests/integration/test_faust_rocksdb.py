"""Faust's table access inside a batch cannot pick the record's RocksDB partition; grader's
access by partition (grader/stream/faust_patches/rocksdb.py) can.

A plain Faust app (tests/integration/faust_batch_table_app.py) on Apache Kafka, grader out
of the picture, takes records of two partitions in one batch (``take_events``, as grader's
agent does) and stores each key. Faust's table access takes the partition from "the
current event" (``current_event()``), and in the body of a ``take_events`` loop there is
none: Faust refuses every write with ``TypeError: Cannot modify table key from outside of
stream iteration`` (faust-streaming/faust#497, #300); a stale current event would put a
key in another partition's database. Through the store's database of the record's
partition (``_db_for_partition``, what grader.stream.tables uses), every key is in its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from grader.devtools.services import free_port
from tests.integration.conftest import ROOT, Server, wait_for

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("faust_batch_table_app.py")
KEYS = {p: [f"p{p}-{n:02d}" for n in range(20)] for p in (0, 1)}


def reports(path: Path) -> list[dict[str, Any]]:
    """The app's reports so far (the last line, if half written, is left for later)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")]


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
@pytest.mark.parametrize("how", ["table", "by_partition"], ids=["faust_as_is", "by_partition"])
def test_a_batchs_keys_land_in_their_own_partitions_database(broker: Server, tmp_path: Path,
                                                             how: str) -> None:
    app_id = f"batch-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(f"{app_id}-src", 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for n in range(len(KEYS[0])):  # interleaved: the batch holds both partitions' records
        for p in (0, 1):
            producer.send(f"{app_id}-src", key=KEYS[p][n].encode(), value=b"v", partition=p)
    producer.flush()
    producer.close()

    data_dir, log = tmp_path / "data", tmp_path / "app.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(APP), broker.url, app_id, str(data_dir), str(free_port()),
             how], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    reports_path = Path(f"{data_dir}.reports")
    try:
        def done() -> dict[str, Any] | None:
            assert process.poll() is None, log.read_text()[-3000:]
            for report in reports(reports_path):
                stored = sum(len(keys) for keys in report["dbs"].values())
                if report["error"] or stored == len(KEYS[0]) + len(KEYS[1]):
                    return report
            return None

        report = wait_for(done, 90, "the app to store every key (or fail)")
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    in_its_own = {p: set(KEYS[p]) <= set(report["dbs"].get(str(p), [])) for p in (0, 1)}
    if how == "by_partition":
        assert report["error"] is None
        assert report["dbs"] == {"0": KEYS[0], "1": KEYS[1]}
    else:
        # Faust as it is refuses the writes (seen: the TypeError), or would put keys in the
        # wrong partition's database; when every key lands in its own, rocksdb.py is moot
        assert ("outside of stream iteration" in (report["error"] or "")
                or not all(in_its_own.values())), report
