"""`grader replay`: grade a JSON-lines file offline with the same core.

Events with occurred_at <= T are applied per customer in occurred_at order
(ties by event_id), then a clock tick at T. Outputs: tiers.csv,
tier-changes.jsonl and dead-letters.jsonl (see docs/replay.md).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from grader.core import Grading, apply_event, apply_tick, new_state
from grader.events import Event, Rejection, parse_event
from grader.rational import round2
from grader.state import CustomerState

Progress = Callable[[int], None]


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


@dataclass
class ReplayResult:
    """Everything a replay produces, before it is written."""

    stats: ReplayStats = field(default_factory=ReplayStats)
    states: dict[str, CustomerState] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file as bytes, without their line ends."""
    with path.open("rb") as handle:
        for line in handle:
            yield line.rstrip(b"\r\n")


def replay(lines: Iterable[bytes], as_of: int, grading: Grading, now_us: int,
           progress: Progress | None = None) -> ReplayResult:
    """Grade every customer in ``lines`` as of ``as_of`` (microseconds)."""
    result = ReplayResult()
    by_customer = _collect(lines, as_of, grading, result, progress)
    for customer_id in sorted(by_customer):
        _grade(customer_id, by_customer[customer_id], as_of, grading, now_us, result)
    result.stats.customers = len(result.states)
    result.stats.tier_changes = len(result.changes)
    return result


def _collect(lines: Iterable[bytes], as_of: int, grading: Grading, result: ReplayResult,
             progress: Progress | None) -> dict[str, list[Event]]:
    ctx = grading.parse_context()
    by_customer: dict[str, list[Event]] = {}
    stats = result.stats
    for number, raw in enumerate(lines, start=1):
        stats.lines = number
        if progress is not None and number % 50_000 == 0:
            progress(number)
        parsed = parse_event(raw, ctx)
        if isinstance(parsed, Rejection):
            stats.rejected += 1
            result.dead_letters.append(dead_letter(number, raw, parsed))
        elif parsed.ts > as_of:
            stats.after_as_of += 1
        else:
            by_customer.setdefault(parsed.customer_id, []).append(parsed)
    return by_customer


def _grade(customer_id: str, events: list[Event], as_of: int, grading: Grading, now_us: int,
           result: ReplayResult) -> None:
    state = new_state(customer_id)
    events.sort(key=lambda e: (e.ts, e.event_id))
    stats = result.stats
    for event in events:
        step = apply_event(state, event, grading, now_us)
        setattr(stats, step.status, getattr(stats, step.status) + 1)
        result.changes.extend(step.changes)
    result.changes.extend(apply_tick(state, as_of, grading, now_us).changes)
    result.states[customer_id] = state


def dead_letter(number: int, raw: bytes, rejection: Rejection) -> dict[str, Any]:
    """A dead-letter record for a rejected line (original text kept exactly)."""
    record: dict[str, Any] = {"line": number, "code": rejection.code, "field": rejection.field,
                              "message": rejection.message}
    try:
        record["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return record


def write_outputs(result: ReplayResult, out_dir: Path) -> None:
    """Write tiers.csv, tier-changes.jsonl and dead-letters.jsonl into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "tiers.csv").open("w", encoding="utf-8", newline="") as handle:
        handle.write("customer_id,policy,tier,score\n")
        for customer_id in sorted(result.states):
            tiers = result.states[customer_id].tiers
            for policy in sorted(tiers):
                t = tiers[policy]
                handle.write(f"{customer_id},{_csv(policy)},{_csv(t.tier)},{round2(t.score)}\n")
    _write_jsonl(out_dir / "tier-changes.jsonl", result.changes)
    _write_jsonl(out_dir / "dead-letters.jsonl", result.dead_letters)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("wb") as handle:
        for item in records:
            handle.write(orjson.dumps(item) + b"\n")


def _csv(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text
