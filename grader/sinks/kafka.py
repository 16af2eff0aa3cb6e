"""Publishing the worker's outputs to Kafka, behind a small Protocol.

The worker needs one thing from a sink: publish these outputs and return only
once the broker has acknowledged every one of them. It writes the customer's
table entry after that (docs/streaming.md explains why), so tests can pass a
fake sink that records what it was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from grader.stream.step import Output


class OutputSink(Protocol):
    """Where tier changes, snapshots and dead letters go."""

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Send ``outputs`` (in order per key) and wait until all are acknowledged."""


class FaustKafkaSink:
    """Publishes through the Faust app's producer, one Faust topic per output suffix."""

    def __init__(self, topics: Mapping[str, Any]) -> None:
        self._topics = topics  # suffix -> faust Topic (raw key and value)

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Send all, then wait for every acknowledgement (a send error raises)."""
        if not outputs:
            return
        pending = [await self._topics[out.topic].send(key=out.key, value=out.value)
                   for out in outputs]
        await asyncio.gather(*pending)


class RecordingSink:
    """A fake sink that keeps what it was given, for tests without a broker."""

    def __init__(self) -> None:
        self.published: list[Output] = []

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Record ``outputs``."""
        self.published.extend(outputs)
