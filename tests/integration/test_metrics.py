"""`/metrics` of real workers on both brokers: parsed with prometheus-client's parser,
checked with promtool where Debian's prometheus package is installed, and compared with
what the test produced and the topics hold."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from grader.core.events import TOPIC_OF_TYPE, Event, parse_event
from grader.devtools.services import free_port
from tests.conftest import in_ci
from tests.integration.conftest import Stream, wait_for
from tests.integration.test_stream import (
    CTX,
    events_file,
    expected,
    final_tick_equals_replay,
)

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name``: its sorted labels -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def promtool_check(text: str, tmp_path: Path) -> None:
    """`promtool check metrics` (Debian's prometheus package), where it is installed."""
    promtool = shutil.which("promtool")
    if promtool is None:  # scripts/install-debian-packages installs it
        if in_ci():
            pytest.fail("promtool (Debian's prometheus package) is needed in CI")
        return  # the parser still checks the format
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_count_what_the_worker_did(stream: Stream, tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=60, events=1500, seed=41)
    want, dead = expected(lines)
    port = free_port()
    worker = stream.start_worker(GRADER_WEB_PORT=str(port))
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    text = scrape(port)
    promtool_check(text, tmp_path)

    # applied: each valid event once, by topic (a redelivery would be a duplicate)
    distinct: dict[tuple[str, str], str] = {}
    for e in (parse_event(line, CTX) for line in lines):
        if isinstance(e, Event):
            distinct.setdefault((e.customer_id, e.event_id), TOPIC_OF_TYPE[e.type])
    by_topic = Counter(distinct.values())
    events_total = samples(text, "grader_events_total")
    got = {dict(k)["topic"]: v for k, v in events_total.items() if dict(k)["outcome"] == "applied"
           and dict(k)["topic"] != "ticks"}
    assert got == dict(by_topic)
    assert events_total[(("outcome", "applied"), ("topic", "ticks"))] == 4  # one per partition
    # rejected: the dead letters the worker wrote (`grader produce` writes those of lines
    # it cannot route itself), by code; a redelivered bad message is counted and
    # dead-lettered again, so the two stay equal
    by_worker = Counter(d["code"] for d in (orjson.loads(r.value) for r in
                                            stream.read("dead-letters"))
                        if d["topic"].startswith(stream.prefix))
    assert by_worker and len(dead) > sum(by_worker.values())
    rejected = sum(v for k, v in events_total.items() if dict(k)["outcome"] == "rejected")
    assert rejected == sum(by_worker.values())
    codes = samples(text, "grader_rejections_total")
    assert {dict(k)["code"]: v for k, v in codes.items()} == dict(by_worker)

    # tier changes: as on the topic, by policy and direction
    on_topic = Counter((c["policy"], c["direction"]) for c in
                       (orjson.loads(r.value) for r in stream.read("tier-changes")))
    changes = {(dict(k)["policy"], dict(k)["direction"]): v
               for k, v in samples(text, "grader_tier_changes_total").items()}
    assert changes == dict(on_topic)
    latency = samples(text, "grader_event_to_tier_change_seconds_count")
    assert 0 < sum(latency.values()) <= sum(on_topic.values())

    # customers per tier: the population of the replay
    population = Counter((policy, tier) for (_c, policy), tier in want.items())
    customers = {(dict(k)["policy"], dict(k)["tier"]): v
                 for k, v in samples(text, "grader_customers").items()}
    assert customers == dict(population)

    # caught up: no input partition behind; one assignment at least; no Redis here
    lag = samples(text, "grader_consumer_lag")
    assert lag and set(lag.values()) == {0.0}
    assert {dict(k)["topic"] for k in lag} >= {"transactions", "ticks"}
    assert samples(text, "grader_rebalances_total")[()] >= 1
    assert samples(text, "grader_redis_errors_total")[()] == 0
    assert samples(text, "grader_batch_seconds_count")[()] > 0
    assert samples(text, "process_cpu_seconds_total")[()] > 0

    # no label value is a customer id
    ids = {c for c, _p in want}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert not ids & set(sample.labels.values()), sample

    # a second worker: right after the rebalance, the two sum to the population
    port2 = free_port()
    second = stream.start_worker(data_dir="data-2", GRADER_WEB_PORT=str(port2))
    second.wait_ready(45)

    def summed() -> dict[Any, float]:
        total: Counter[Any] = Counter()
        for p in (port, port2):
            for k, v in samples(scrape(p), "grader_customers").items():
                total[dict(k)["policy"], dict(k)["tier"]] += v
        owned = [samples(scrape(p), "grader_consumer_lag") for p in (port, port2)]
        both_own = all(owned)
        return dict(total) if both_own and dict(total) == dict(population) else {}

    wait_for(summed, 45, "the two workers' grader_customers to sum to the population")
    assert second.stop() == 0
    assert worker.stop() == 0
