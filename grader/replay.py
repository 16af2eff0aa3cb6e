"""`grader replay`: grade a JSON-lines file offline with the same core.

Events with occurred_at <= T are applied per customer in occurred_at order
(ties by event_id), then a clock tick at T. Outputs: tiers.csv,
tier-changes.jsonl and dead-letters.jsonl (see docs/replay.md).

Customers are independent, so large files are parsed and graded in several
processes (this one and forked ones), each taking the customers whose id
hashes to it; their
per-customer outputs are merged back in customer order, byte for byte what
one process writes.
"""

from __future__ import annotations

import gc
import heapq
import multiprocessing
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from grader.core import Grading, apply_event, apply_tick, new_state
from grader.events import Event, Rejection, original_fields, parse_event
from grader.rational import round2

Progress = Callable[[int], None]
Row = tuple[str, str, str, str]  # customer_id, policy, tier, score
PARALLEL_MIN_EVENTS = 20_000  # below this, forking costs more than it saves
_IN_ORDER = attrgetter("ts", "event_id")  # the order events are applied in


@dataclass
class ReplayStats:
    """Counts of what a replay read and did."""

    lines: int = 0
    rejected: int = 0
    after_as_of: int = 0
    applied: int = 0
    duplicate: int = 0
    expired: int = 0
    ignored: int = 0
    customers: int = 0
    tier_changes: int = 0

    def summary(self) -> str:
        """One line for the terminal."""
        return " ".join(f"{k.replace('_', '-')}={v}" for k, v in vars(self).items())

    def add(self, other: ReplayStats) -> None:
        """Add another shard's counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Graded:
    """What one shard of the input produced: per customer, in customer order."""

    stats: ReplayStats = field(default_factory=ReplayStats)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    # (customer_id, tiers rows, tier-change JSON lines), sorted by customer_id
    customers: list[tuple[str, list[Row], bytes]] = field(default_factory=list)


@dataclass
class ReplayResult:
    """Everything a replay produces, before it is written."""

    stats: ReplayStats
    tiers: list[Row]
    changes: bytes
    dead_letters: list[dict[str, Any]]


def read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file as bytes, without their line ends."""
    with path.open("rb") as handle:
        for line in handle:
            yield line.rstrip(b"\r\n")


def replay(
    lines: Iterable[bytes],
    as_of: int,
    grading: Grading,
    now_us: int,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReplayResult:
    """Grade every customer in ``lines`` as of ``as_of`` (microseconds)."""
    all_lines = list(lines)
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(all_lines) >= PARALLEL_MIN_EVENTS:
        parts = _parallel(all_lines, _route(all_lines, workers, progress), as_of, grading, now_us)
    else:
        parts = [process(all_lines, range(len(all_lines)), as_of, grading, now_us)]
    return _merge(parts, len(all_lines))


def process(
    lines: list[bytes], numbers: Iterable[int], as_of: int, grading: Grading, now_us: int
) -> Graded:
    """Parse the given lines (0-based numbers) and grade their customers."""
    with _gc_paused():
        return _process(lines, numbers, as_of, grading, now_us)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector: grading makes no reference cycles (reference
    counting frees everything), and collections would scan every live state."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _process(
    lines: list[bytes], numbers: Iterable[int], as_of: int, grading: Grading, now_us: int
) -> Graded:
    out = Graded()
    ctx = grading.parse_context()
    by_customer: dict[str, list[Event]] = {}
    for index in numbers:
        parsed = parse_event(lines[index], ctx)
        if isinstance(parsed, Rejection):
            out.stats.rejected += 1
            out.dead_letters.append(dead_letter(index + 1, lines[index], parsed))
        elif parsed.ts > as_of:
            out.stats.after_as_of += 1
        else:
            by_customer.setdefault(parsed.customer_id, []).append(parsed)
    for customer_id in sorted(by_customer):
        out.customers.append(
            _grade(customer_id, by_customer[customer_id], as_of, grading, now_us, out.stats)
        )
    return out


def _grade(
    customer_id: str,
    events: list[Event],
    as_of: int,
    grading: Grading,
    now_us: int,
    stats: ReplayStats,
) -> tuple[str, list[Row], bytes]:
    state = new_state(customer_id)
    changes = bytearray()
    events.sort(key=_IN_ORDER)
    steps = [apply_event(state, event, grading, now_us) for event in events]
    for status, count in Counter(step.status for step in steps).items():
        setattr(stats, status, getattr(stats, status) + count)
    steps.append(apply_tick(state, as_of, grading, now_us))
    for step in steps:
        for change in step.changes:
            changes += orjson.dumps(change, option=orjson.OPT_APPEND_NEWLINE)
        stats.tier_changes += len(step.changes)
    stats.customers += 1
    rows = [
        (customer_id, policy, t.tier, str(round2(t.score)))
        for policy, t in sorted(state.tiers.items())
    ]
    return customer_id, rows, bytes(changes)


def _merge(parts: list[Graded], lines: int) -> ReplayResult:
    stats = ReplayStats(lines=lines)
    for part in parts:
        stats.add(part.stats)
    merged = heapq.merge(*(p.customers for p in parts), key=lambda c: c[0])
    tiers: list[Row] = []
    changes: list[bytes] = []
    for _customer, rows, lines_out in merged:
        tiers.extend(rows)
        changes.append(lines_out)
    dead = sorted((d for p in parts for d in p.dead_letters), key=lambda d: int(d["line"]))
    return ReplayResult(stats, tiers, b"".join(changes), dead)


def _route(lines: list[bytes], shards: int, progress: Progress | None) -> list[list[int]]:
    """Line numbers per shard, by a stable hash of the customer id (unroutable: shard 0)."""
    routed: list[list[int]] = [[] for _ in range(shards)]
    for index, raw in enumerate(lines):
        if progress is not None and index and index % 50_000 == 0:
            progress(index)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        customer = obj.get("customer_id") if isinstance(obj, dict) else None
        shard = zlib.crc32(customer.encode()) % shards if isinstance(customer, str) else 0
        routed[shard].append(index)
    return routed


_SHARED: dict[str, Any] = {}  # set before forking; the children read it


def _parallel(
    lines: list[bytes], routed: list[list[int]], as_of: int, grading: Grading, now_us: int
) -> list[Graded]:
    _SHARED.update(lines=lines, routed=routed, as_of=as_of, grading=grading, now_us=now_us)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=len(routed) - 1, mp_context=context) as pool:
            others = [pool.submit(_process_shard, i) for i in range(1, len(routed))]
            first = process(lines, routed[0], as_of, grading, now_us)  # meanwhile, shard 0 here
            return [first, *(future.result() for future in others)]
    finally:
        _SHARED.clear()


def _process_shard(index: int) -> Graded:
    gc.disable()  # this forked process lives for this replay only (see _gc_paused)
    s = _SHARED
    return process(s["lines"], s["routed"][index], s["as_of"], s["grading"], s["now_us"])


def dead_letter(number: int, raw: bytes, rejection: Rejection) -> dict[str, Any]:
    """A dead-letter record for a rejected line (original text kept exactly)."""
    record: dict[str, Any] = {
        "line": number,
        "code": rejection.code,
        "field": rejection.field,
        "message": rejection.message,
    }
    record.update(original_fields(raw))
    return record


def write_outputs(result: ReplayResult, out_dir: Path) -> None:
    """Write tiers.csv, tier-changes.jsonl and dead-letters.jsonl into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "tiers.csv").open("w", encoding="utf-8", newline="") as handle:
        handle.write("customer_id,policy,tier,score\n")
        for row in result.tiers:
            handle.write(",".join(_csv(cell) for cell in row) + "\n")
    (out_dir / "tier-changes.jsonl").write_bytes(result.changes)
    with (out_dir / "dead-letters.jsonl").open("wb") as handle:
        for item in result.dead_letters:
            handle.write(orjson.dumps(item) + b"\n")


def _csv(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
