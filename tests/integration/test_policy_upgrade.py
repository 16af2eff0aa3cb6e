"""A rolling deploy of a new policy version, on both brokers (issue 20 part 2).

A worker on v1 of abc-100 grades a stream; a worker on v2 joins while it
runs (a rebalance). The v1 worker sees v2 on the ``policies`` topic, says so
in one line and stops (exit 3); the v2 worker takes every partition. Every
customer ends graded under v2, equal to `grader replay` under v2, with at
most one policy change (exactly one for those whose tier differs), and no
customer gets a change under v1 after one under v2. A v1 worker started
afterwards refuses to start.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from grader.core.step import decode_record
from tests.integration.conftest import Stream, wait_for
from tests.integration.test_rollout import policy_changes, tiers_under, v2_file
from tests.integration.test_stream import (
    events_file,
    expected,
    final_tick_equals_replay,
    write_lines,
)

pytestmark = pytest.mark.integration


def assert_versions_never_go_back(stream: Stream) -> None:
    """Per customer, in offset order: no abc-100 change or stored state under v1 after one
    under v2 (a customer's records share one partition, so offset order is their order)."""
    for topic, version_of in (
        ("tier-changes", lambda value: (orjson.loads(value)["policy_version"]
                                        if orjson.loads(value)["policy"] == "abc-100" else None)),
        ("worker-customers-changelog",
         lambda value: decode_record(value).state.graded_under.get("abc-100", (None,))[0]),
    ):
        reached: dict[bytes, str] = {}
        for record in stream.read(topic):
            version = version_of(record.value)
            if version is None:
                continue
            assert not (reached.get(record.key) == "2" and version == "1"), (
                f"{topic}: customer {record.key.decode()} back to v1 at "
                f"p{record.partition}@{record.offset}")
            reached[record.key] = version


def last_stderr_line(log: str) -> str:
    return [line for line in log.splitlines() if line.startswith("grader: ")][-1]


@pytest.mark.parametrize("traffic", [False, True], ids=["quiet", "events_flowing"])
def test_two_versions_during_a_rebalance_converge_on_the_new(stream: Stream, tmp_path: Path,
                                                             traffic: bool) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=300, events=4000, seed=81)
    v2 = v2_file(tmp_path / "v2")
    want2 = tiers_under(lines, (str(v2), "stars"))
    first_part = lines[:3000] if traffic else lines
    write_lines(tmp_path / "first.jsonl", first_part)
    write_lines(tmp_path / "rest.jsonl", lines[3000:])
    old = stream.start_worker()
    old.wait_ready()
    assert stream.grader("produce", str(tmp_path / "first.jsonl")).returncode == 0
    if not traffic:  # every customer graded and ticked under v1 first
        want1, _dead = expected(lines)
        final_tick_equals_replay(stream, lines, want1)
        moved = {c for (c, p), t in want2.items() if p == "abc-100" and want1[c, p] != t}
        assert moved
    producing = (stream.grader_process("produce", str(tmp_path / "rest.jsonl"))
                 if traffic else None)
    new = stream.start_worker(data_dir="data-2", GRADER_POLICIES=f"{v2},stars")

    # the old worker stops by itself, in one line, while the new one joins
    assert old.process.wait(60) == 3, old.log()[-3000:]
    topic = stream.prefix + "policies"
    assert last_stderr_line(old.log()) == (
        f"grader: error: policy abc-100: version 2 is rolled out (the {topic} topic has it "
        "after version 1, this worker's); start the worker with version 2 or later; "
        "this worker stops")
    new.wait_ready(60)
    if producing is not None:
        assert producing.wait(60) == 0
    wait_for(lambda: new.log().count("policy roll-out: partition") >= (0 if traffic else 4)
             and "graded again" in new.log(), 60, "the new worker's sweep")
    final_tick_equals_replay(stream, lines, want2, (str(v2), "stars"))
    assert_versions_never_go_back(stream)

    changes = policy_changes(stream)
    by_customer = Counter(c["customer_id"] for c in {c["event_id"]: c for c in changes}.values())
    assert by_customer and set(by_customer.values()) == {1}, "one policy change at most each"
    assert all(c["policy"] == "abc-100" and c["policy_version"] == "2" for c in changes)
    if not traffic:
        assert set(by_customer) == moved, "a policy change for exactly the customers that move"
    latest = {r.key: decode_record(r.value).state
              for r in stream.read("worker-customers-changelog")}
    assert {s.graded_under["abc-100"][0] for s in latest.values() if s.graded} == {"2"}, \
        "every customer ends graded under v2"

    # a v1 worker started after the roll-out (a stale pod) refuses to start
    done = stream.grader("worker")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"grader: error: policy abc-100: version 2 is rolled out (the {topic} topic has it "
        "after version 1, this worker's); start the worker with version 2 or later")
    assert new.stop() == 0
