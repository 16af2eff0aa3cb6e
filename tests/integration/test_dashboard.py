"""The Grafana dashboard's queries against a real Prometheus scraping a real worker.

Debian's Prometheus (/usr/bin/prometheus, scripts/install-debian-packages) runs on a
free loopback port with a data dir of its own and deploy/prometheus.yml's `grader`
job, pointed at a test worker's /metrics and scraped every second. The worker grades
a generated stream with bad lines (so there are rejections) and a final tick (so
tiers change), writing its support queues to Redis. Then every query of every panel
of deploy/grafana/dashboards/grader.json, with Grafana's variables replaced
(tests/unit/test_compose.py, VARIABLES), goes through Prometheus' HTTP API: each
must parse and return data, and a few are compared with what the worker did.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from grader.devtools.services import RedisServer, free_port
from tests.conftest import in_ci
from tests.integration.conftest import Stream, wait_for
from tests.integration.test_metrics import samples, scrape
from tests.integration.test_stream import (
    AS_OF,
    events_file,
    expected,
    expected_risk,
    final_tick_equals_replay,
    write_lines,
)
from tests.unit.test_compose import PROMETHEUS_CONFIG, dashboard, panel_queries, promql

pytestmark = pytest.mark.integration

PROMETHEUS = Path("/usr/bin/prometheus")


def need_prometheus() -> Path:
    """Debian's prometheus; missing: a failure in CI (`CI` set), else a skip saying why."""
    if os.access(PROMETHEUS, os.X_OK):
        return PROMETHEUS
    why = (f"{PROMETHEUS} not installed (Debian's prometheus package, "
           "scripts/install-debian-packages)")
    if in_ci():
        pytest.fail(f"{why}: needed in CI")
    pytest.skip(why)


class Prometheus:
    """A running Prometheus; ``query`` is its HTTP API's instant query."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:  # 400/422: the body says why
            return json.load(exc)

    def query(self, expr: str, at: float | None = None) -> Any:
        """An instant query, now or evaluated ``at`` a Unix time."""
        if at is None:
            return self.get("/api/v1/query", query=expr)
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")

    def vector(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result of an instant query that must succeed."""
        answer = self.query(expr, at)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def last_scrape(self, target: str) -> float:
        """When Prometheus last scraped ``target`` (its sample time, Unix seconds)."""
        found = self.vector(f'timestamp(up{{job="grader",instance="{target}"}})')
        return value(found[0]) if found else 0.0

    def first_time(self, expr: str, reached: float, start: float, end: float) -> float:
        """The first second in [start, end] at which the scalar ``expr`` was ``reached``."""
        answer = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}",
                          end=f"{end:.3f}", step="1")
        assert answer["status"] == "success", (expr, answer)
        [series] = answer["data"]["result"]
        return min(float(t) for t, v in series["values"] if float(v) >= reached)


@contextmanager
def run_prometheus(binary: Path, config: Path, data_dir: Path,
                   log_path: Path) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port until the block ends; it is stopped then (SIGTERM,
    SIGKILL after 10 s), whatever happens."""
    port = free_port()
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches pytest only
        )
    server = Prometheus(port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited:\n{server.log()}"
            try:
                with urllib.request.urlopen(f"{server.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{server.log()}"
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, f"prometheus exit code {process.returncode}:\n{server.log()}"


def scrape_config(path: Path, target: str) -> Path:
    """deploy/prometheus.yml with its `grader` job pointed at ``target`` and every scrape
    every second; the other jobs dropped (they name the stack's hosts)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "grader"]
    job["static_configs"] = [{"targets": [target]}]
    job.pop("scrape_interval", None)
    job.pop("scrape_timeout", None)
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"})
    config["scrape_configs"] = [job]
    path.write_text(yaml.safe_dump(config))
    return path


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def test_every_panel_query_returns_data(stream: Stream, redis_server: RedisServer,
                                        tmp_path: Path) -> None:
    binary = need_prometheus()
    lines = events_file(tmp_path / "events.jsonl", customers=40, events=800, seed=53)
    # A customer whose only sale leaves the 12-month window on 2026-12-01, 9 days after
    # AS_OF: at risk within 30 days under both policies (the generated ones may not be).
    lines.append(orjson.dumps({"event_id": "risk-1", "type": "sale", "customer_id": "RISK-1",
                               "occurred_at": "2025-12-23T10:00:00+08:00", "amount": "1000",
                               "currency": "CNY"}))
    write_lines(tmp_path / "events.jsonl", lines)
    want, _dead = expected(lines)
    port = free_port()
    worker = stream.start_worker(GRADER_WEB_PORT=str(port), GRADER_REDIS_URL=redis_server.url,
                                 GRADER_REDIS_PREFIX=stream.prefix)
    worker.wait_ready()
    target = f"127.0.0.1:{port}"
    config = scrape_config(tmp_path / "prometheus.yml", target)
    with run_prometheus(binary, config, tmp_path / "prometheus-data",
                        tmp_path / "prometheus.log") as prometheus:
        wait_for(lambda: [s for s in prometheus.vector(f'up{{job="grader",instance="{target}"}}')
                          if value(s) == 1], 30, "Prometheus to scrape the worker")
        started = prometheus.last_scrape(target)
        produced = stream.grader("produce", str(tmp_path / "events.jsonl"))
        assert produced.returncode == 0, produced.stderr
        final_tick_equals_replay(stream, lines, want)

        # what the worker did, from its /metrics: a scrape that Prometheus has by now too
        text = scrape(port)
        codes = {dict(k)["code"]: v for k, v in samples(text, "grader_rejections_total").items()}
        assert codes, "the bad lines were rejected"
        changes = samples(text, "grader_tier_changes_total")
        assert changes
        population = Counter((policy, tier) for (_c, policy), tier in want.items())
        today = date.fromisoformat(AS_OF[:10])  # the presets' timezone is AS_OF's
        at_risk = Counter((policy, want[c, policy]) for (c, policy), (day, _to)
                          in expected_risk(lines)[0].items()
                          if day is not None and (date.fromisoformat(day) - today).days <= 30)
        assert at_risk, "some tiers would drop within 30 days"

        def caught_up() -> bool:
            got = {(s["metric"]["policy"], s["metric"]["tier"]): value(s) for s in
                   prometheus.vector('sum by (policy, tier) (grader_customers{job="grader"})')}
            rejected = {s["metric"]["code"]: value(s) for s in
                        prometheus.vector('grader_rejections_total{job="grader"}')}
            risky = {(s["metric"]["policy"], s["metric"]["tier"]): value(s) for s in
                     prometheus.vector('sum by (policy, tier) '
                                       '(grader_customers_at_risk{job="grader"})')}
            return got == dict(population) and rejected == codes and risky == dict(at_risk)

        wait_for(caught_up, 30, "Prometheus to scrape the final population and rejections")
        # Every query is evaluated at one instant of Prometheus' own time, two scrapes
        # after the final state, whatever the wall clock did meanwhile; the latency
        # panels a second after their histogram's last observation, so that their
        # [$__rate_interval] window holds it however long the test's waits took.
        final = prometheus.last_scrape(target)
        wait_for(lambda: prometheus.last_scrape(target) >= final + 2, 30,
                 "Prometheus to scrape the worker twice more")
        at = prometheus.last_scrape(target)
        count = 'sum(grader_event_to_tier_change_seconds_count{job="grader"})'
        observed = value(prometheus.vector(count, at)[0])
        assert observed > 0, "tier changes caused by events were timed"
        last_observed = min(prometheus.first_time(count, observed, started, at) + 1, at)

        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for title, ref, expr in panel_queries(dashboard()):
            query = promql(expr)
            latency = "grader_event_to_tier_change_seconds_bucket" in query
            answer = prometheus.query(query, last_observed if latency else at)
            assert answer["status"] == "success", (title, ref, query, answer)
            result = answer["data"]["result"]
            assert answer["data"]["resultType"] == "vector", (title, ref, query)
            assert result, f"no data for panel {title!r} ({ref}): {query}"
            results[title, ref] = result

        # the Grafana variable's query (label_values(up{job="grader"}, instance))
        instances = prometheus.get("/api/v1/label/instance/values",
                                   **{"match[]": 'up{job="grader"}'})
        assert instances["status"] == "success" and instances["data"] == [target]

    by_title = {title: result for (title, _ref), result in results.items()}
    # the population panel: the replay's population
    assert {(s["metric"]["policy"], s["metric"]["tier"]): value(s)
            for s in by_title["Tier population per policy"]} == dict(population)
    # the at-risk panel: the replay's tiers that would drop within 30 days (issue 23)
    assert {(s["metric"]["policy"], s["metric"]["tier"]): value(s)
            for s in by_title["Customers at risk within 30 days"]} == dict(at_risk)
    # tier changes by direction: the directions the worker counted
    directions = {dict(k)["direction"] for k in changes}
    assert {s["metric"]["direction"] for s in
            by_title["Tier changes per minute by direction"]} == directions
    # rejections by code: the codes the worker counted
    assert {s["metric"]["code"] for s in
            by_title["Rejections per minute by code"]} == set(codes)
    # latency: evaluated just after the last observation, so both quantiles are numbers
    latency = results["Event to tier change latency (p50, p99)", "A"]
    latency += results["Event to tier change latency (p50, p99)", "B"]
    assert all(math.isfinite(value(s)) and value(s) >= 0 for s in latency), latency
    # caught up, one worker up, no Redis error, at least one rebalance
    assert all(value(s) == 0 for s in by_title["Consumer lag by topic"])
    assert {s["metric"]["topic"] for s in by_title["Consumer lag by topic"]} >= {
        "transactions", "ticks"}
    assert [value(s) for s in results["Workers up", "A"]] == [1.0]  # up
    assert [value(s) for s in results["Workers up", "B"]] == [1.0]  # targets
    assert [(s["metric"]["instance"], value(s)) for s in
            by_title["Redis write errors per minute"]] == [(target, 0.0)]
    assert [s["metric"]["instance"] for s in
            by_title["Rebalances per worker (last 5 minutes)"]] == [target]
    assert worker.stop() == 0
