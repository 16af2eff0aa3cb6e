"""Faust drops standby changelog records it fetched, and grader's fix keeps them.

The root cause of issue 11's lost event, shown with a plain Faust app
(tests/integration/faust_standby_app.py) on Apache Kafka: worker B joins
worker A, holds one partition of A's table as a standby replica, and takes
it over when A leaves. Under load (here made deterministic: a slow recovery
and a slow ``on_rebalance_complete`` receiver), Faust's last
``flow_control.resume()`` of B's recovery clears the changelog records B had
fetched for its standby and not yet applied; later records move its stored
offset past them, so when B becomes active it never reads them: keys are
missing. With grader/stream/faust_patches/flowfix.py applied, B ends with every key.

Kafka only: on tansu, a plain Faust app with standbys stops at once with
Faust's ConsistencyError, because tansu's latest offset is the last batch's
base offset + 1 (docs/tansu.md); grader's worker works around that under
its tansu quirks, and its own rebalance tests, on both brokers, cover the fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from grader.devtools.services import free_port
from tests.integration.conftest import ROOT, Server, wait_for

APP = Path(__file__).with_name("faust_standby_app.py")
KEYS = [f"k{i:03d}" for i in range(300)]
LATER = [f"later{i:03d}" for i in range(100)]


def produce(broker: Server, topic: str, keys: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for key in keys:
        producer.send(topic, key=key.encode(), value=b"v")
    producer.flush()
    producer.close()


class FaustProcess:
    def __init__(self, broker: Server, app_id: str, data_dir: Path, log: Path,
                 *flags: str) -> None:
        self.log_path = log
        self.reports_path = Path(f"{data_dir}.reports")
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(APP), broker.url, app_id, str(data_dir),
                 str(free_port()), *flags],
                cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def reports(self) -> list[dict[str, Any]]:
        if not self.reports_path.exists():
            return []
        lines = self.reports_path.read_text().splitlines()
        return [json.loads(line) for line in lines[:-1]]  # the last may be half written

    def last(self) -> dict[str, Any] | None:
        assert self.process.poll() is None, self.log_path.read_text()[-3000:]
        found = self.reports()
        return found[-1] if found else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
@pytest.mark.parametrize("fixed", [False, True], ids=["faust_as_is", "with_flowfix"])
def test_a_standby_that_becomes_active_has_every_key(broker: Server, tmp_path: Path,
                                                     fixed: bool) -> None:
    app_id = f"standby-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(f"{app_id}-src", 2, 1)])
    admin.close()
    first = FaustProcess(broker, app_id, tmp_path / "a", tmp_path / "a.log")
    second = None
    try:
        wait_for(lambda: (r := first.last()) and r["recovered"], 60, "worker A ready")
        produce(broker, f"{app_id}-src", KEYS)
        wait_for(lambda: (r := first.last()) and len(r["keys"]) == len(KEYS), 60,
                 "worker A to store every key")

        flags = ["--slow", *(["--fixed"] if fixed else [])]
        second = FaustProcess(broker, app_id, tmp_path / "b", tmp_path / "b.log", *flags)
        # B's first assignment, then its join rebalance with A: one active partition, one
        # standby, read from the start of the changelog
        wait_for(lambda: "Worker ready" in second.log_path.read_text(), 60,
                 "worker B to start its standby partition")
        # later records, each worker storing its partition's; B's standby reads A's
        produce(broker, f"{app_id}-src", LATER)
        wait_for(lambda: (r := first.last()) and len(r["keys"]) > len(KEYS), 60,
                 "worker A to store later keys")
        time.sleep(6)  # B's standby applies what it fetched (slowly, 20 ms a record)
        first.stop()
        # A left: B takes every partition; recovery reads from what its store holds
        left = len(second.reports())

        def settled() -> dict[str, Any] | None:
            reports = second.reports()[left:]
            done = [r for r in reports if r["recovered"] and not r["in_recovery"]]
            if len(done) < 10:
                return None
            if fixed and len(done[-1]["keys"]) < len(KEYS) + len(LATER):
                return None  # wait until B holds everything (or time out)
            return done[-1]

        final = wait_for(settled, 60, "worker B to recover both partitions")
        missing = sorted(set(KEYS + LATER) - set(final["keys"]))
        if fixed:
            assert missing == []
        else:
            # Faust as it is loses records: when Faust stops losing them, drop flowfix.py
            assert missing, ("Faust kept every standby record: "
                             "grader/stream/faust_patches/flowfix.py is moot")
    finally:
        first.stop()
        if second is not None:
            second.stop()
