"""Faust's fetch loop drops records fetched again after a seek; without read offsets for
the input topics (ReadOffsets, grader/stream/faust_patches/seeking.py) it hands them on.

Faust's own ``Consumer._drain_messages`` runs here, unchanged, on a bare Faust App's
consumer (grader's worker out of the picture); only what it fetches is scripted, since
the order that matters (records of a batch fetched before a seek still being handed on
after it) is a race on a broker. A broker adds nothing to what the loop then does.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, NamedTuple

import faust
import pytest
from faust.types import TP

from grader.stream.faust_patches.seeking import transport_for
from grader.stream.progress import SourceProgress

SOURCE = TP("g.transactions", 1)


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes = b"k"
    value: bytes = b"v"


@pytest.mark.parametrize("patched", [False, True], ids=["faust_as_is", "with_patch"])
def test_records_fetched_again_after_a_seek_are_handed_on(patched: bool) -> None:
    app = faust.App("t", broker="kafka://127.0.0.1:9")  # nothing connects to it
    if patched:
        app.transport = transport_for(app, [SOURCE.topic], ["127.0.0.1:9"], {}, False, None,
                                      SourceProgress(stall_after=2.0))
    consumer = app.consumer
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    handed: list[int] = []

    async def callback(message: Any) -> None:
        handed.append(message.offset)

    async def getmany(timeout: float) -> Any:
        for offset in range(5, 13):  # a batch fetched before the rebalance, handed on
            yield SOURCE, Record(*SOURCE, offset)
        # the rebalance's perform_seek, done meanwhile: committed offset 5, so Faust sets
        # the read offset to 5 and the fetch position back to 5
        consumer._read_offset.update({SOURCE: 5})
        for offset in range(13, 21):  # the rest of that batch, already fetched
            yield SOURCE, Record(*SOURCE, offset)
        for offset in range(5, 21):  # fetched again from the position sought to
            yield SOURCE, Record(*SOURCE, offset)
        fetcher._stopped.set()

    consumer.callback = callback
    consumer.getmany = getmany

    loop = app.loop
    try:
        loop.run_until_complete(consumer._drain_messages(fetcher))
    finally:
        loop.close()
        consumer._thread.thread_loop.close()
        asyncio.set_event_loop(None)
    before_seek, in_flight, fetched_again = handed[:8], handed[8:16], handed[16:]
    assert before_seek == list(range(5, 13))
    assert in_flight == list(range(13, 21))
    if patched:
        assert fetched_again == list(range(5, 21))
    else:
        # the in-flight records moved the read offset to 20: 5-19 are dropped. In the
        # worker, 13-19 had gone to a stream queue that the rebalance clears, so they
        # were never graded. When this fails, Faust hands them on: ReadOffsets may go.
        assert fetched_again == [20], "Faust's fetch loop now hands on records fetched again"
