"""`grader replay`: grade a JSON-lines file offline with the same core.

Events with occurred_at <= T are applied per customer in occurred_at order
(ties by event_id), then a clock tick at T. Outputs: tiers.csv,
tier-changes.jsonl, at-risk.csv, tier-warnings.jsonl and dead-letters.jsonl (see
docs/replay.md).

Customers are independent, so large files are parsed and graded in several
processes (this one and forked ones), each taking one range of customer ids
(the ranges hold about as many events each). A shard renders its outputs as
bytes in customer order, so the whole output is the shards' outputs one
after the other, byte for byte what one process writes. A forked shard
hands its bytes back through a temporary file, which is several times
faster than pickling them through a pipe.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gc
import io
import multiprocessing
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import date
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson

from grader.core.eventfile import Line, LongLine, original_line_fields, parse_line
from grader.core.events import Event, ParseContext, Rejection
from grader.core.grading import Grading, apply_event, apply_tick, new_state
from grader.core.rational import round2
from grader.core.risk import refresh_risk
from grader.core.state import CustomerState
from grader.offline.outputs import write_whole

Progress = Callable[[int], None]
Row = tuple[str, str, str, str]  # customer_id, policy, tier, score
TIERS_HEADER = b"customer_id,policy,tier,score\n"
AT_RISK_HEADER = b"customer_id,policy,tier,drops_on,to_tier\n"
OUTPUTS = ("tiers.csv", "tier-changes.jsonl", "at-risk.csv", "tier-warnings.jsonl",
           "dead-letters.jsonl")  # in --out
#: The output bytes a shard renders, in customer order (concatenated across shards).
BLOBS = ("tiers_csv", "changes", "at_risk", "also_at_risk", "warnings")
WARN_DAYS = 30  # the warn_days setting's default
PARALLEL_MIN_EVENTS = 20_000  # below this, forking costs more than it saves
PIVOT_SAMPLE = 4096  # lines sampled to split the customer ids into ranges
RANGES_PER_SHARD = 32  # customer ranges per process, taken one at a time
_IN_ORDER = attrgetter("ts", "event_id")  # the order events are applied in


@dataclass
class ReplayStats:
    """Counts of what a replay read and did."""

    lines: int = 0
    rejected: int = 0
    after_as_of: int = 0
    applied: int = 0
    duplicate: int = 0
    conflicting: int = 0  # duplicates whose content differs from the event applied
    expired: int = 0
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
    # The tiers.csv rows, the tier-change JSON lines and the at-risk.csv rows (of
    # ``grading``, and of the ``also`` gradings), in customer order (BLOBS; read back
    # from a forked shard as views of its temporary files).
    tiers_csv: bytes | memoryview = b""
    changes: bytes | memoryview = b""
    at_risk: bytes | memoryview = b""
    also_at_risk: bytes | memoryview = b""
    warnings: bytes | memoryview = b""  # the tier-warnings.jsonl lines


@dataclass
class ReplayResult:
    """Everything a replay produces, before it is written."""

    stats: ReplayStats
    tiers_csv: bytes  # the rows of tiers.csv (without its header), as written
    changes: bytes
    dead_letters: list[dict[str, Any]]
    at_risk: bytes = b""  # the rows of at-risk.csv (without its header)
    also_at_risk: bytes = b""  # at-risk rows under the ``also`` gradings (grader whatif)
    warnings: bytes = b""  # the tier-warnings.jsonl lines (of ``grading``)

    @property
    def tiers(self) -> list[Row]:
        """The rows of tiers.csv as (customer_id, policy, tier, score) tuples."""
        text = io.StringIO(self.tiers_csv.decode("utf-8"), newline="")
        return [(c, p, t, s) for c, p, t, s in csv.reader(text)]


def replay(
    lines: Iterable[Line],
    as_of: int,
    grading: Grading,
    now_us: int,
    progress: Progress | None = None,
    workers: int | None = None,
    also: tuple[Grading, ...] = (),
    warn_days: int = WARN_DAYS,
) -> ReplayResult:
    """Grade every customer in ``lines`` as of ``as_of`` (microseconds).

    ``also``: more gradings of the same parsed events (grader whatif), each
    customer's tiers.csv rows of each following those of ``grading``; the
    events are validated against every grading's policies together, and the
    counts, dead letters, tier changes and tier warnings are ``grading``'s.
    ``warn_days``: the setting; the warnings are those a worker has sent once it
    graded the same events and ticked at ``as_of`` (docs/replay.md).
    """
    all_lines = list(lines)
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(all_lines) >= PARALLEL_MIN_EVENTS:
        parts = _parallel(all_lines, workers, as_of, grading, now_us, progress, also,
                          warn_days)
    else:
        parts = [process(all_lines, as_of, grading, now_us, also, warn_days)]
    return _merge(parts, len(all_lines))


def parse_context(grading: Grading, also: tuple[Grading, ...] = ()) -> ParseContext:
    """What validates the events for ``grading`` and ``also`` together."""
    ctx = grading.parse_context()
    if not also:
        return ctx
    tiers = dict(ctx.tiers_by_policy)
    for other in also:
        tiers.update(other.tiers_by_policy)
    return ParseContext(ctx.currency, tiers, ctx.now_us)


def process(lines: list[Line], as_of: int, grading: Grading, now_us: int,
            also: tuple[Grading, ...] = (), warn_days: int = WARN_DAYS) -> Graded:
    """Parse and grade every line in this process."""
    with _gc_paused():
        ctx = parse_context(grading, also)
        parsed = ((index, parse_line(raw, ctx)) for index, raw in enumerate(lines))
        return _process(lines, parsed, as_of, grading, now_us, also, warn_days)


def shard_pivots(lines: list[Line], ranges: int) -> list[str]:
    """``ranges - 1`` customer ids that cut the lines' customers into ranges of about
    as many events each (estimated from a sample of the lines)."""
    every = max(1, len(lines) // PIVOT_SAMPLE)
    sample = sorted(c for c in map(_customer_of, lines[::every]) if c is not None)
    if not sample:
        return [""] * (ranges - 1)
    return [sample[len(sample) * k // ranges] for k in range(1, ranges)]


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


def _route(lines: list[Line], pivots: list[str], progress: Progress | None) -> list[list[int]]:
    """The line numbers (0-based) of each customer range.

    Range ``r`` holds the customers ``c`` with ``pivots[r - 1] <= c < pivots[r]``.
    A line that is not JSON, has no string ``customer_id`` or is too long to
    parse belongs to range 0 (it is rejected then). Only the numbers are kept: holding every decoded
    line costs more than decoding a range's own lines again.
    """
    range_of, customer_of = bisect.bisect_right, _customer_of
    routed: list[list[int]] = [[] for _ in range(len(pivots) + 1)]
    for index, raw in enumerate(lines):
        if progress is not None and index and index % 50_000 == 0:
            progress(index)
        customer = customer_of(raw)
        routed[0 if customer is None else range_of(pivots, customer)].append(index)
    return routed


def _customer_of(raw: Line) -> str | None:
    """The line's ``customer_id`` if it is JSON with a string one, else None."""
    if isinstance(raw, LongLine):
        return None  # never parsed
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    customer = obj.get("customer_id") if isinstance(obj, dict) else None
    return customer if isinstance(customer, str) else None


def _parsed(lines: list[Line], indexes: list[int],
            ctx: ParseContext) -> Iterator[tuple[int, Event | Rejection]]:
    """The events (or rejections) of these lines."""
    for index in indexes:
        yield index, parse_line(lines[index], ctx)


def _process(
    lines: list[Line],
    parsed_lines: Iterable[tuple[int, Event | Rejection]],
    as_of: int,
    grading: Grading,
    now_us: int,
    also: tuple[Grading, ...] = (),
    warn_days: int = WARN_DAYS,
) -> Graded:
    out = Graded()
    by_customer: dict[str, list[Event]] = {}
    for index, parsed in parsed_lines:
        if isinstance(parsed, Rejection):
            out.stats.rejected += 1
            out.dead_letters.append(dead_letter(index + 1, lines[index], parsed))
        elif parsed.ts > as_of:
            out.stats.after_as_of += 1
        else:
            by_customer.setdefault(parsed.customer_id, []).append(parsed)
    tiers: list[bytes] = []
    changes: list[bytes] = []
    at_risk: list[bytes] = []
    also_at_risk: list[bytes] = []
    warnings: list[bytes] = []
    for customer_id in sorted(by_customer):
        rows, lines_out, risks, warned = _grade(customer_id, by_customer[customer_id], as_of,
                                                grading, now_us, out.stats, warn_days)
        tiers.append(rows)
        changes.append(lines_out)
        at_risk.append(risks)
        warnings.append(warned)
        for other in also:
            rows, _lines, risks, _warned = _grade(customer_id, by_customer[customer_id], as_of,
                                                  other, now_us, ReplayStats(), 0)
            tiers.append(rows)
            also_at_risk.append(risks)
    out.tiers_csv, out.changes = b"".join(tiers), b"".join(changes)
    out.at_risk, out.also_at_risk = b"".join(at_risk), b"".join(also_at_risk)
    out.warnings = b"".join(warnings)
    return out


def _grade(
    customer_id: str,
    events: list[Event],
    as_of: int,
    grading: Grading,
    now_us: int,
    stats: ReplayStats,
    warn_days: int,
) -> tuple[bytes, bytes, bytes, bytes]:
    state = new_state(customer_id)
    changes = bytearray()
    events.sort(key=_IN_ORDER)
    steps = [apply_event(state, event, grading, now_us) for event in events]
    for status, count in Counter(step.status for step in steps).items():
        setattr(stats, status, getattr(stats, status) + count)
    stats.conflicting += sum(step.conflict for step in steps)
    steps.append(apply_tick(state, as_of, grading, now_us))
    for step in steps:
        for change in step.changes:
            changes += orjson.dumps(change, option=orjson.OPT_APPEND_NEWLINE)
        stats.tier_changes += len(step.changes)
    stats.customers += 1
    _changed, warnings = refresh_risk(state, grading, warn_days, now_us)
    warned = b"".join(orjson.dumps(w, option=orjson.OPT_APPEND_NEWLINE) for w in warnings)
    rows = "".join(
        f"{_csv(customer_id)},{_csv(policy)},{_csv(t.tier)},{_csv(str(round2(t.score)))}\n"
        for policy, t in sorted(state.tiers.items())
    )
    return rows.encode("utf-8"), bytes(changes), _at_risk(state), warned


def _at_risk(state: CustomerState) -> bytes:
    """The customer's at-risk.csv rows: its tiers that would drop (``state.risk``, just
    refreshed), by policy name."""
    rows = []
    for policy, risk in sorted(state.risk.items()):
        if risk.drops_on is not None and risk.to_tier is not None:
            rows.append(at_risk_row(state.customer_id, policy, state.tiers[policy].tier,
                                    date.fromordinal(risk.drops_on), risk.to_tier))
    return "".join(rows).encode("utf-8")


def at_risk_row(customer_id: str, policy: str, tier: str, day: date, to_tier: str) -> str:
    """One at-risk.csv row (with its line end)."""
    return (f"{_csv(customer_id)},{_csv(policy)},{_csv(tier)},{day.isoformat()},"
            f"{_csv(to_tier)}\n")


def _merge(parts: list[Graded], lines: int) -> ReplayResult:
    """The shards' outputs, in shard order (so in customer order)."""
    stats = ReplayStats(lines=lines)
    for part in parts:
        stats.add(part.stats)
    dead = sorted((d for p in parts for d in p.dead_letters), key=lambda d: int(d["line"]))
    return ReplayResult(stats, b"".join(p.tiers_csv for p in parts),
                        b"".join(p.changes for p in parts), dead,
                        b"".join(p.at_risk for p in parts),
                        b"".join(p.also_at_risk for p in parts),
                        b"".join(p.warnings for p in parts))


_SHARED: dict[str, Any] = {}  # set before forking; the children read it


def _parallel(
    lines: list[Line],
    shards: int,
    as_of: int,
    grading: Grading,
    now_us: int,
    progress: Progress | None,
    also: tuple[Grading, ...] = (),
    warn_days: int = WARN_DAYS,
) -> list[Graded]:
    """Grade the customer ranges in this process and ``shards - 1`` forked ones.

    The lines are cut into RANGES_PER_SHARD ranges per process; each process
    routes every line once, then takes the next ungraded range from a shared
    counter until none is left, so a process that drew heavy customers
    takes fewer ranges (grading cost grows faster than a customer's event
    count). The result is each range's output, in range order.
    """
    ranges = shards * RANGES_PER_SHARD
    pivots = shard_pivots(lines, ranges)
    context = multiprocessing.get_context("fork")
    _SHARED.update(lines=lines, pivots=pivots, as_of=as_of, grading=grading, now_us=now_us,
                   also=also, warn_days=warn_days,
                   counter=context.Value("i", 0))
    try:
        with ProcessPoolExecutor(max_workers=shards - 1, mp_context=context) as pool:
            others = [pool.submit(_forked_shard) for _ in range(1, shards)]
            try:
                graded = _take_ranges(progress)  # meanwhile, here too
                sent = [future.result() for future in others]
            except BaseException:
                _discard(others)
                raise
            for result in sent:
                graded.update(_received(*result))
    finally:
        _SHARED.clear()
    return [graded[r] for r in range(ranges)]


def _discard(futures: list[Any]) -> None:
    """Delete the temporary files of forked results that will not be read back."""
    for future in futures:
        try:
            _graded, _sizes, *paths = future.result()
        except BaseException:
            continue  # that process failed: it wrote nothing to read back
        _remove(paths)


def _remove(paths: list[str]) -> None:
    """Delete these temporary files, those that exist."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _take_ranges(progress: Progress | None = None) -> dict[int, Graded]:
    """Route the lines, then grade ranges taken from the shared counter until none is left."""
    s = _SHARED
    lines, counter = s["lines"], s["counter"]
    with _gc_paused():
        ctx = parse_context(s["grading"], s["also"])
        routed = _route(lines, s["pivots"], progress)
        graded: dict[int, Graded] = {}
        while True:
            with counter.get_lock():
                taken = counter.value
                counter.value += 1
            if taken >= len(routed):
                return graded
            graded[taken] = _process(lines, _parsed(lines, routed[taken], ctx), s["as_of"],
                                     s["grading"], s["now_us"], s["also"], s["warn_days"])


Sizes = dict[int, tuple[int, ...]]  # range -> sizes of its BLOBS


def _forked_shard() -> tuple[Any, ...]:
    """Grade ranges in a forked process; their output bytes go to temporary files, one
    per output (BLOBS): returns the ranges, their sizes and the files' paths."""
    gc.disable()  # this forked process lives for this replay only (see _gc_paused)
    graded = _take_ranges()
    sizes = {r: tuple(len(getattr(g, name)) for name in BLOBS) for r, g in graded.items()}
    paths: list[str] = []
    try:
        for blobs in ([getattr(g, name) for _, g in sorted(graded.items())]
                      for name in BLOBS):
            handle, path = tempfile.mkstemp(prefix="grader-replay-")
            paths.append(path)
            with os.fdopen(handle, "wb") as out:
                out.writelines(blobs)
    except OSError as exc:  # say which file (a write error names none)
        _remove(paths)
        raise OSError(exc.errno, f"{exc.strerror} (handing a shard's results back through "
                                 "this temporary file)", exc.filename or paths[-1]) from None
    except BaseException:
        _remove(paths)
        raise
    for g in graded.values():
        for name in BLOBS:
            setattr(g, name, b"")
    return (graded, sizes, *paths)


def _received(graded: dict[int, Graded], sizes: Sizes, *paths: str) -> dict[int, Graded]:
    """A forked shard's ranges, their output bytes read back from its temporary files."""
    blobs = []
    try:
        for path in paths:
            blobs.append(memoryview(Path(path).read_bytes()))
    finally:
        _remove(list(paths))
    at = [0] * len(BLOBS)
    for r in sorted(graded):
        for i, name in enumerate(BLOBS):
            size = sizes[r][i]
            setattr(graded[r], name, blobs[i][at[i]:at[i] + size])
            at[i] += size
    return graded


def dead_letter(number: int, raw: Line, rejection: Rejection) -> dict[str, Any]:
    """A dead-letter record for a rejected line: its original text, past RAW_KEPT
    bytes its first bytes with the size and SHA-256 of the whole (as the stream)."""
    record: dict[str, Any] = {
        "line": number,
        "code": rejection.code,
        "field": rejection.field,
        "message": rejection.message,
    }
    record.update(original_line_fields(raw))
    return record


def write_outputs(result: ReplayResult, out_dir: Path) -> None:
    """Write tiers.csv, tier-changes.jsonl, at-risk.csv, tier-warnings.jsonl and
    dead-letters.jsonl into ``out_dir``, each whole or not at all (grader.offline.outputs)."""
    write_whole(out_dir, {
        "tiers.csv": (TIERS_HEADER, result.tiers_csv),
        "tier-changes.jsonl": (result.changes,),
        "at-risk.csv": (AT_RISK_HEADER, result.at_risk),
        "tier-warnings.jsonl": (result.warnings,),
        "dead-letters.jsonl": (orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE)
                               for item in result.dead_letters),
    })


_NEEDS_QUOTES = re.compile('[,"\n\r]').search


def _csv(text: str) -> str:
    """One CSV cell (quoted only when it must be)."""
    if _NEEDS_QUOTES(text):
        return '"' + text.replace('"', '""') + '"'
    return text
