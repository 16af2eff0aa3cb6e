"""Where a partition's records really are: a plain aiokafka consumer fetches from given
offsets (the tansu quirk's true end offsets; the first record at or after an offset).

Used by the worker's consumer (grader.stream.faust_patches.seeking) and by the
changelog reader (grader.kafka.changelog).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiokafka


async def fetch_first(servers: list[str], starts: Mapping[Any, int],
                      auth: Mapping[str, Any], timeout: float = 10.0) -> dict[Any, int]:
    """The offset of the first record at or after each start (absent: none before ``timeout``)."""
    batches = await _fetch_from(servers, starts, auth, timeout)
    return {tp: records[0].offset for tp, records in batches.items()}


async def fetched_ends(servers: list[str], ends: Mapping[Any, int],
                       auth: Mapping[str, Any], timeout: float = 10.0) -> dict[Any, int]:
    """``ends`` raised to one past the last offset a fetch from ``end - 1`` returns."""
    checked = {tp: end - 1 for tp, end in ends.items() if end}
    batches = await _fetch_from(servers, checked, auth, timeout)
    if missing := set(checked) - set(batches):
        raise RuntimeError(f"no record at end offset - 1 of {sorted(map(str, missing))}")
    return {tp: max(end, batches[tp][-1].offset + 1) if tp in batches else end
            for tp, end in ends.items()}


async def _fetch_from(servers: list[str], starts: Mapping[Any, int], auth: Mapping[str, Any],
                      timeout: float) -> dict[Any, list[Any]]:
    """The first records fetched from each start offset (a partition without any is left out)."""
    if not starts:
        return {}
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=servers, group_id=None,
                                         enable_auto_commit=False,
                                         auto_offset_reset="earliest", **auth)
    try:
        await consumer.start()
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        found: dict[Any, list[Any]] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(starts) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                if records and tp not in found:
                    found[tp] = records
        return found
    finally:
        await consumer.stop()
