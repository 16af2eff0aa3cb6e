"""A rolling deploy (issue 20 part 2) without Kafka: which versions are newer, and the
Processor's refusal to grade a customer graded under a newer version of its policy."""

from __future__ import annotations

import asyncio

import pytest

from grader.sinks.kafka import RecordingSink
from grader.stream import step
from grader.stream.policyregistry import PolicySuperseded, PolicyWatch, newer_versions
from grader.stream.tables import MemoryTableStore
from grader.stream.topology import partition_of
from tests.conftest import grading
from tests.stream.test_step import message, processor, sale, stored

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
