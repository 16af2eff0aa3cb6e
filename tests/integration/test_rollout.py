"""A new policy version rolled out on a running stream, on both brokers (issue 14 part 2).

v1 grades a stream; the workers stop; they start again with v2 of abc-100 (A
from 70 points instead of 80): every customer whose tier differs under v2
gets exactly one tier change with cause ``policy`` and v2's version, the
others none, and the tiers end equal to `grader replay` under v2, also
when the worker is killed mid-sweep. A v1 whose rules changed without a new
version is refused at start-up.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from grader.core.clock import parse_instant
from grader.core.grading import Grading
from grader.offline.replay import replay
from grader.settings import resolve_policy
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_stream import (
    AS_OF,
    events_file,
    expected,
    final_tick_equals_replay,
    wait_for_tiers,
)

pytestmark = pytest.mark.integration
ABC = (ROOT / "grader" / "policies" / "abc-100.toml").read_text()


def abc_file(folder: Path, *changes: tuple[str, str], head: str = "") -> Path:
    """``folder``/abc-100.toml: abc-100 (the same name) with ``changes`` made to its text."""
    text = ABC
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "abc-100.toml"
    path.write_text(head + text)
    return path


def v2_file(folder: Path) -> Path:
    """The next version of abc-100: a lower bar for A."""
    return abc_file(folder, ('version = "1"', 'version = "2"'), ('min = ">= 80"', 'min = ">= 70"'))


def tiers_under(lines: list[bytes], policies: tuple[str, ...]) -> dict[tuple[str, str], str]:
    grading = Grading(tuple(resolve_policy(p, ROOT / "config") for p in policies))
    result = replay(lines, parse_instant(AS_OF), grading, time.time_ns() // 1000, workers=1)
    return {(c, p): t for c, p, t, _s in result.tiers}


def policy_changes(stream: Stream) -> list[dict[str, Any]]:
    return [c for c in (orjson.loads(r.value) for r in stream.read("tier-changes"))
            if c["cause"]["kind"] == "policy"]


@pytest.mark.parametrize("during", ["nothing", "kill_9", "rebalance"],
                         ids=["clean", "kill_9_mid_sweep", "rebalance_mid_sweep"])
def test_a_new_version_regrades_every_customer_once(stream: Stream, tmp_path: Path,
                                                    during: str) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=300, events=4000, seed=71)
    want, _dead = expected(lines)  # v1 (abc-100) and stars
    first = stream.start_worker()
    first.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    assert first.stop() == 0
    assert policy_changes(stream) == []

    v2 = v2_file(tmp_path / "v2")
    want2 = tiers_under(lines, (str(v2), "stars"))
    moved = {c for (c, p), t in want2.items() if p == "abc-100" and want[c, p] != t}
    assert moved and all(want2[c, "stars"] == want[c, "stars"] for c in moved)
    policies = f"{v2},stars"
    second = stream.start_worker(GRADER_POLICIES=policies)
    third = None
    if during != "nothing":  # once a partition is swept, before the others are
        wait_for(lambda: "policy roll-out: partition" in second.log(), 60, "a partition swept")
        if during == "kill_9":
            second.kill()
        else:  # a second worker joins: the partitions not swept yet may move to it
            third = stream.start_worker(data_dir="data-2", GRADER_POLICIES=policies)
        swept_before = second.log().count("policy roll-out: partition")
        assert swept_before < 4, "too late to test anything"
        if during == "kill_9":
            second = stream.start_worker(GRADER_POLICIES=policies)
    second.wait_ready(45)
    if third is not None:  # stopped below: a worker still starting up dies of SIGTERM
        third.wait_ready(45)
    wait_for_tiers(stream, want2, timeout=60)

    changes = policy_changes(stream)
    by_customer = Counter(c["customer_id"] for c in {c["event_id"]: c for c in changes}.values())
    assert set(by_customer) == moved, "a policy change for exactly the customers that move"
    assert set(by_customer.values()) == {1}, "one each (a republished one has the same id)"
    for change in changes:
        assert change["policy"] == "abc-100" and change["policy_version"] == "2"
        assert (change["from_tier"], change["to_tier"]) == ("B", "A")
    assert "graded again" in second.log()
    if third is not None:
        assert third.stop() == 0
    assert second.stop() == 0


def test_changed_rules_without_a_new_version_are_refused(stream: Stream,
                                                          tmp_path: Path) -> None:
    first = stream.start_worker()
    first.wait_ready()
    assert first.stop() == 0
    changed = abc_file(tmp_path / "changed", ('min = ">= 80"', 'min = ">= 75"'))  # still v1
    done = stream.grader("worker", GRADER_POLICIES=f"{changed},stars")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"grader: error: policy abc-100 ({changed}): version 1 was first used "
                    "with other rules; give the changed policy a new version")
    # comments and the description are not rules
    same = abc_file(tmp_path / "same", ('description = "', 'description = "Now: '),
                    head="# a comment\n")
    worker = stream.start_worker(GRADER_POLICIES=f"{same},stars")
    worker.wait_ready()
    assert worker.stop() == 0


def test_whatif_live_equals_whatif_on_the_file(stream: Stream, tmp_path: Path) -> None:
    """`grader whatif --live` from the workers' state gives what the history file gives."""
    lines = events_file(tmp_path / "events.jsonl", customers=200, events=3000, seed=72)
    want, _dead = expected(lines)
    worker = stream.start_worker()
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    v2 = v2_file(tmp_path / "v2")
    live = stream.grader("whatif", "--live", "--current", "abc-100", "--candidate", str(v2),
                         "--out", str(tmp_path / "live"))
    assert live.returncode == 0, live.stderr
    offline = stream.grader("whatif", str(tmp_path / "events.jsonl"), "--as-of", AS_OF,
                            "--current", "abc-100", "--candidate", str(v2),
                            "--out", str(tmp_path / "file"))
    assert offline.returncode == 0, offline.stderr
    for name in ("matrix.csv", "movers.csv"):
        assert (tmp_path / "live" / name).read_text() == (tmp_path / "file" / name).read_text()
    assert len((tmp_path / "live" / "movers.csv").read_text().splitlines()) > 1
    assert live.stdout == offline.stdout

    # what the state cannot say: refused, or said up front
    longer = abc_file(tmp_path / "v3", ('version = "1"', 'version = "3"'),
                      ("monthly_avg_sales(12)", "monthly_avg_sales(24)"))
    done = stream.grader("whatif", "--live", "--current", "abc-100", "--candidate",
                         str(longer), "--out", str(tmp_path / "no"))
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "looks back 24 months; the workers' state keeps 12" in done.stderr
    sticky = abc_file(tmp_path / "v4", ('version = "1"', 'version = "4"'),
                      ("min_days_in_tier = 0", "min_days_in_tier = 30"))
    done = stream.grader("whatif", "--live", "--current", "abc-100", "--candidate",
                         str(sticky), "--out", str(tmp_path / "sticky"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("note: abc-100 v4 has downgrade rules")
    assert worker.stop() == 0
