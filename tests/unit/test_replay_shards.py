"""Sharded replay: every line is parsed by exactly one shard, as parse_event parses it,
and all the events of one customer land in the same shard."""

from __future__ import annotations

import zlib

import orjson

from grader.clock import parse_instant
from grader.core import Grading
from grader.events import Event, parse_event
from grader.replay import ReplayResult, ReplayStats, _parse_shard, replay
from grader.settings import resolve_policy
from tests.unit.replay_lines import LINES, ROOT

GRADING = Grading((resolve_policy("abc-100", ROOT / "config"),))
CTX = GRADING.parse_context()
AS_OF = parse_instant("2026-11-22T00:00:00Z")


def test_every_line_is_parsed_by_exactly_one_shard_as_parse_event_parses_it() -> None:
    for shards in (2, 3):
        seen: dict[int, object] = {}
        owner: dict[str, int] = {}
        for shard in range(shards):
            for index, parsed in _parse_shard(LINES, shard, shards, CTX, None):
                assert index not in seen
                seen[index] = parsed
                if isinstance(parsed, Event):
                    assert owner.setdefault(parsed.customer_id, shard) == shard
                    want = zlib.crc32(parsed.customer_id.encode()) % shards
                    assert shard == want
        assert sorted(seen) == list(range(len(LINES)))
        for index, raw in enumerate(LINES):
            assert seen[index] == parse_event(raw, CTX)


def test_sharded_replay_equals_one_process() -> None:
    one = replay(LINES, AS_OF, GRADING, 0, workers=1)
    many = replay(LINES * 2000, AS_OF, GRADING, 0, workers=2)  # above PARALLEL_MIN_EVENTS
    again = replay(LINES * 2000, AS_OF, GRADING, 0, workers=1)
    assert (many.tiers_csv, many.changes, many.dead_letters) == (
        again.tiers_csv,
        again.changes,
        again.dead_letters,
    )
    assert many.stats == again.stats and one.tiers == again.tiers


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
