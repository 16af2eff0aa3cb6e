"""Issue 20 without Kafka: a rolling deploy (which versions are newer; the Processor's
refusal to grade a customer graded under a newer version of its policy), and the agent's
clean stop when the store cannot be written (a full data dir)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from grader.core import step
from grader.core.errors import DataDirFull
from grader.core.topology import partition_of
from grader.kafka.policyregistry import PolicySuperseded, PolicyWatch, newer_versions
from grader.sinks.kafka import RecordingSink
from grader.stream.agent import grade_batches
from grader.stream.progress import SourceProgress
from grader.stream.tables import MemoryTableStore
from tests.conftest import grading
from tests.stream.test_step import (
    ALL_PARTITIONS,
    AckRecorder,
    Event,
    TakeEventsStream,
    consumer_message,
    message,
    processor,
    sale,
    stored,
)

HISTORY = [("abc-100:1", "d1"), ("stars:1", "s1"), ("abc-100:2", "d2"), ("abc-100:1", "d1"),
           ("abc-100:3", "d3")]


@pytest.mark.parametrize(("name", "version", "newer"), [
    ("abc-100", "1", ["2", "3"]),
    ("abc-100", "2", ["3"]),
    ("abc-100", "3", []),
    ("stars", "1", []),
    ("abc-100", "9", ["1", "2", "3"]),  # not recorded: every recorded one is after it
])
def test_newer_means_first_recorded_later(name: str, version: str, newer: list[str]) -> None:
    assert newer_versions(HISTORY, name, version) == newer


def watch(history: list[tuple[str, str]], *names: str) -> PolicyWatch:
    """A watch that has read ``history`` (no broker: poll is never called)."""
    w = PolicyWatch("localhost:1", "g.", grading(*names).policies)
    w.history = list(history)
    return w


def test_a_watch_says_why_in_one_line() -> None:
    w = watch([("abc-100:1", "d1"), ("stars:1", "s1")], "abc-100", "stars")
    assert w.superseded() is None
    w.history.append(("abc-100:2", "d2"))
    assert w.superseded() == ("policy abc-100: version 2 is rolled out (the g.policies topic "
                              "has it after version 1, this worker's); start the worker with "
                              "version 2 or later")


@pytest.mark.parametrize(("graded_under", "stops"), [
    ({"abc-100": ("1", "d1")}, False),  # this worker's
    ({"abc-100": ("0", "d0")}, False),  # older: the roll-out re-grades it
    ({"abc-100": ("2", "d2")}, True),  # newer
    ({"abc-100": ("7", "d7")}, True),  # not read yet: recorded after this worker's
    ({"other": ("5", "x")}, False),  # not one of this worker's policies
])
def test_a_state_graded_under_a_newer_version_is_beyond_the_worker(
        graded_under: dict[str, tuple[str, str]], stops: bool) -> None:
    w = watch([("abc-100:0", "d0"), ("abc-100:1", "d1"), ("abc-100:2", "d2")], "abc-100")
    assert (w.newer_in(graded_under) is not None) == stops


def graded_elsewhere(version: str) -> MemoryTableStore:
    """C1 stored by another worker, graded under ``version`` of abc-100."""
    store = MemoryTableStore()
    asyncio.run(processor(grading("abc-100"), RecordingSink(), store).on_message(
        message(sale("C1", "e0", "2026-10-01T10:00:00+08:00", "300000"), b"C1")))
    record = stored(store, b"C1")
    record.state.graded_under["abc-100"] = (version, "digest")
    store.data[b"C1"] = step.encode_record(record.state, "another-process", [])
    return store


def test_the_processor_grades_nothing_of_a_customer_graded_under_a_newer_version() -> None:
    store = graded_elsewhere("2")
    before = dict(store.data)
    sink = RecordingSink()
    proc = processor(grading("abc-100"), sink, store)
    proc.newer_in = watch([("abc-100:1", "d1"), ("abc-100:2", "d2")], "abc-100").newer_in
    later = message(sale("C1", "e1", "2026-10-02T10:00:00+08:00", "100"), b"C1", offset=1)
    with pytest.raises(PolicySuperseded, match="version 2 is rolled out"):
        asyncio.run(proc.on_message(later))
    assert sink.published == [] and store.data == before
    # nothing more, of any customer, from any path
    other = message(sale("C2", "f0", "2026-10-02T10:00:00+08:00", "100"), b"C2")
    with pytest.raises(PolicySuperseded):
        asyncio.run(proc.on_message(other))
    with pytest.raises(PolicySuperseded):
        asyncio.run(proc.sweep_policies([partition_of(b"C1", 4)]))
    assert sink.published == [] and store.data == before


def test_a_customer_graded_under_an_older_version_is_graded_again() -> None:
    store = graded_elsewhere("0")
    sink = RecordingSink()
    proc = processor(grading("abc-100"), sink, store)
    proc.newer_in = watch([("abc-100:0", "d0"), ("abc-100:1", "d1")], "abc-100").newer_in
    asyncio.run(proc.sweep_policies([partition_of(b"C1", 4)]))
    assert stored(store, b"C1").state.graded_under == grading("abc-100").signature


class FullStore(MemoryTableStore):
    """A store whose disk fills after ``good`` writes."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    async def put_many(self, writes: Any) -> None:
        if not self.good:
            raise DataDirFull("the data dir is full (No space left on device)")
        self.good -= 1
        await super().put_many(writes)


def test_a_full_store_stops_the_worker_without_committing_the_batch() -> None:
    consumer = AckRecorder()
    batches = [[Event(consumer_message(sale("C1", f"e{n}", "2026-10-01T10:00:00+08:00"), b"C1",
                                       n))] for n in range(3)]
    stream = TakeEventsStream(batches, consumer)
    proc = processor(grading("abc-100"), RecordingSink(), FullStore(good=1))
    stops: list[BaseException] = []

    async def stop(exc: BaseException) -> None:  # the clean stop; then the agent waits
        stops.append(exc)

    tp = ("g.transactions", partition_of(b"C1", 4))
    progress = SourceProgress(stall_after=2.0)
    progress.start(tp, 0, now=0.0)

    async def run() -> None:
        agent = asyncio.ensure_future(grade_batches(stream, proc, stop, lambda: ALL_PARTITIONS,
                                                    progress))
        await asyncio.sleep(0.2)
        assert not agent.done(), "the agent waits for the stop instead of crashing"
        agent.cancel()  # the stop cancels it
        with pytest.raises(asyncio.CancelledError):
            await agent
        await stream.generator.aclose()

    asyncio.run(run())
    assert [type(e) for e in stops] == [DataDirFull]
    assert consumer.acked == [0, 1], "Faust acknowledges the failed batch too"
    assert progress.committable(tp) == 1, "the failed batch is not committed"
