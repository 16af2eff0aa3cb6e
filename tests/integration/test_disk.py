"""The worker's local store under faults, on both brokers (issue 20 part 3).

- The data dir fills up (a 16 MiB tmpfs the test mounts, then fills with a
  file of its own): the worker stops within seconds, says why in one line
  and exits non-zero; no input offset is committed past an event that is
  not in the customers changelog; once the file is deleted, a restart on the
  same data dir ends equal to `grader replay`.
- The data dir is deleted while the worker is down: the restarted worker
  rebuilds its store from the changelog and ends equal to `grader replay`.

Mounting needs root (CAP_SYS_ADMIN); elsewhere the full-disk test is
skipped with the reason, except in CI, where that fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from grader.core.events import Event, parse_event
from grader.core.step import decode_record
from grader.core.topology import INPUTS
from tests.conftest import mounted
from tests.integration.conftest import Stream, wait_for
from tests.integration.test_stream import (
    CTX,
    events_file,
    expected,
    final_tick_equals_replay,
    restored_from_local_store,
    wait_applied,
    write_lines,
)

pytestmark = pytest.mark.integration
DISK_SIZE = "16m"  # the worker's store for these tests takes under 1 MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_SIZE at ``tmp_path/disk``, unmounted afterwards whatever happens."""
    where = tmp_path / "disk"
    where.mkdir()
    with mounted(where, f"size={DISK_SIZE}"):
        yield where


def fill(disk: Path) -> Path:
    """Write a file on ``disk`` until the file system is full; the file."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # unbuffered: nothing to
    try:                                                          # flush at the close
        while True:
            os.write(fd, chunk)  # a partial write returns; the next one raises ENOSPC
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def committed(stream: Stream) -> dict[tuple[str, int], int]:
    """The worker group's committed offset of each input partition (absent: none)."""
    consumer = KafkaConsumer(bootstrap_servers=stream.broker.bootstrap,
                             group_id=f"{stream.prefix}worker", enable_auto_commit=False)
    try:
        offsets = {}
        for name in INPUTS:
            topic = stream.prefix + name
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                offset = consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    offsets[name, p] = offset
        return offsets
    finally:
        consumer.close()


def assert_nothing_committed_past_the_store(stream: Stream) -> None:
    """Every valid event below a committed input offset is in its customer's latest
    changelog record (the store of record: a restart restores from it)."""
    offsets = committed(stream)
    stored = {r.key.decode(): set(decode_record(r.value).state.seen)
              for r in stream.read("worker-customers-changelog")}
    missing = []
    for name in INPUTS:
        for record in stream.read(name):
            if record.offset >= offsets.get((name, record.partition), 0):
                continue
            event = parse_event(record.value, CTX)
            if isinstance(event, Event) and not event.type.startswith("ticket") and \
                    event.event_id not in stored.get(event.customer_id, set()):
                missing.append(f"{name}[{record.partition}]@{record.offset}")
    assert not missing, f"committed past events never stored: {missing[:10]}"


def test_a_full_data_dir_stops_the_worker_and_a_restart_equals_replay(
        stream: Stream, tmp_path: Path, small_disk: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=200, events=4000, seed=91)
    want, _dead = expected(lines)
    write_lines(tmp_path / "first.jsonl", lines[:2000])
    write_lines(tmp_path / "rest.jsonl", lines[2000:])
    data = "disk/data"
    worker = stream.start_worker(data_dir=data)
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "first.jsonl")).returncode == 0
    wait_applied(stream, lines[:2000])

    filler = fill(small_disk)
    assert stream.grader("produce", str(tmp_path / "rest.jsonl")).returncode == 0
    try:
        code = worker.process.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker went on:\n{worker.log()[-3000:]}") from None
    assert code != 0
    said = [line for line in worker.log().splitlines() if line.startswith("grader: error: ")]
    assert said == [f"grader: error: the data dir {tmp_path / data} is full (No space left on "
                    "device): the worker stops; what it did not store is not committed; free "
                    "space and start it again"], worker.log()[-3000:]
    assert_nothing_committed_past_the_store(stream)

    filler.unlink()  # space comes back
    again = stream.start_worker(data_dir=data)
    again.wait_ready(45)
    final_tick_equals_replay(stream, lines, want)
    assert again.stop() == 0


def test_a_lost_store_is_rebuilt_from_the_changelog(stream: Stream, tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=200, events=4000, seed=92)
    want, _dead = expected(lines)
    write_lines(tmp_path / "first.jsonl", lines[:2000])
    write_lines(tmp_path / "rest.jsonl", lines[2000:])
    first = stream.start_worker()
    first.wait_ready()
    assert stream.grader("produce", str(tmp_path / "first.jsonl")).returncode == 0
    wait_applied(stream, lines[:2000])
    assert first.stop() == 0
    assert any((tmp_path / "data").rglob("customers-*.db"))
    shutil.rmtree(tmp_path / "data")  # lost while the worker was down

    again = stream.start_worker()
    again.wait_ready(45)
    assert not restored_from_local_store(again), "read from the changelog's start"
    assert stream.grader("produce", str(tmp_path / "rest.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    wait_for(lambda: any((tmp_path / "data").rglob("customers-*.db")), 10, "a new store")
    assert again.stop() == 0
