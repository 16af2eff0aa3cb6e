"""Sharded replay: every line is parsed by exactly one shard, as parse_event parses it,
and all the events of one customer land in the same shard."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from grader.core.clock import parse_instant
from grader.core.eventfile import MAX_EVENT_BYTES
from grader.core.events import RAW_KEPT, Event, parse_event
from grader.core.grading import Grading
from grader.offline import replay as replay_module
from grader.offline.replay import ReplayResult, ReplayStats, _parsed, _route, replay, shard_pivots
from grader.settings import resolve_policy
from tests.unit.replay_lines import LINES, LONG_LINES, ROOT

GRADING = Grading((resolve_policy("abc-100", ROOT / "config"),))
CTX = GRADING.parse_context()
AS_OF = parse_instant("2026-11-22T00:00:00Z")


def test_every_line_is_routed_to_exactly_one_range_and_parsed_as_parse_event_parses_it(
) -> None:
    for ranges in (2, 3, 16):
        pivots = shard_pivots(LINES, ranges)
        assert pivots == sorted(pivots) and len(pivots) == ranges - 1
        seen: dict[int, object] = {}
        owner: dict[str, int] = {}
        for r, items in enumerate(_route(LINES, pivots, None)):
            for index, parsed in _parsed(LINES, items, CTX):
                assert index not in seen
                seen[index] = parsed
                if isinstance(parsed, Event):
                    assert owner.setdefault(parsed.customer_id, r) == r
                    assert r == 0 or pivots[r - 1] <= parsed.customer_id
                    assert r == ranges - 1 or parsed.customer_id < pivots[r]
        assert sorted(seen) == list(range(len(LINES)))
        for index, raw in enumerate(LINES):
            assert seen[index] == parse_event(raw, CTX)


def test_sharded_replay_equals_one_process() -> None:
    one = replay(LINES, AS_OF, GRADING, 0, workers=1)
    many = replay(LINES * 2000, AS_OF, GRADING, 0, workers=2)  # above PARALLEL_MIN_EVENTS
    again = replay(LINES * 2000, AS_OF, GRADING, 0, workers=1)
    assert (many.tiers_csv, many.changes, many.at_risk, many.dead_letters) == (
        again.tiers_csv,
        again.changes,
        again.at_risk,
        again.dead_letters,
    )
    assert many.stats == again.stats and one.tiers == again.tiers


def test_sharded_replay_bounds_long_lines_as_one_process_does() -> None:
    lines = LINES * 2000 + LONG_LINES
    many = replay(lines, AS_OF, GRADING, 0, workers=2)
    one = replay(lines, AS_OF, GRADING, 0, workers=1)
    assert (many.tiers_csv, many.changes, many.dead_letters, many.stats) == (
        one.tiers_csv, one.changes, one.dead_letters, one.stats)
    assert len(LONG_LINES[0]) == MAX_EVENT_BYTES and b"\nC9," in b"\n" + many.tiers_csv
    letters = {d["line"] - len(LINES) * 2000: d for d in many.dead_letters
               if d["line"] > len(LINES) * 2000}
    assert sorted(letters) == [2, 3]
    assert [(d["code"], d["raw_bytes"], d["raw_truncated"]) for d in letters.values()] == [
        ("bad_json", RAW_KEPT + 1, True), ("too_long", 2 << 30, True)]
    assert all(len(d["raw_base64"]) <= RAW_KEPT * 4 // 3 + 4 for d in letters.values())


def test_tiers_rows_read_back_from_the_csv() -> None:
    result = ReplayResult(ReplayStats(), b'C1,p,A,1.00\nC2,"a,b","x""y",-2.50\n', b"", [])
    assert result.tiers == [("C1", "p", "A", "1.00"), ("C2", "a,b", 'x"y', "-2.50")]


def test_lines_table_has_every_kind_of_line() -> None:
    kinds = set()
    for raw in LINES:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            kinds.add("bad_json")
            continue
        kinds.add(type(obj).__name__)
    assert {"bad_json", "dict", "list", "str"} <= kinds


def test_pivots_split_the_events_about_evenly() -> None:
    lines = [orjson.dumps({"customer_id": f"C{n % 1000:04d}", "n": n}) for n in range(20_000)]
    lines += [b"not json", b'{"customer_id": 7}', b"[]"]
    (pivot,) = shard_pivots(lines, 2)
    below = sum(1 for raw in lines[:20_000] if orjson.loads(raw)["customer_id"] < pivot)
    assert 0.45 < below / 20_000 < 0.55
    assert shard_pivots([b"not json"], 3) == ["", ""]  # every line goes to the last shard


def test_a_sharded_replay_leaves_no_temporary_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = replay(LINES * 2000, AS_OF, GRADING, 0, workers=2)
    assert result.changes and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing", ["this process", "the forked process"])
def test_a_failed_sharded_replay_leaves_no_temporary_file(
        failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    parent = os.getpid()
    real = replay_module._process

    def grade_or_fail(*args: Any) -> Any:
        if (os.getpid() == parent) == (failing == "this process"):
            raise RuntimeError(f"{failing} failed")
        return real(*args)

    monkeypatch.setattr(replay_module, "_process", grade_or_fail)
    with pytest.raises(RuntimeError, match=failing):
        replay(LINES * 2000, AS_OF, GRADING, 0, workers=2)
    assert list(tmp_path.iterdir()) == []
