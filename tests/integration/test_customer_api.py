"""`GET /customers/{customer_id}` on real workers, both brokers: the replay's tiers,
forwarding between workers, errors as JSON, and the API token (GRADING.md 6 and 7)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

from grader.core.events import Event, parse_event
from grader.core.rational import round2
from grader.devtools.services import free_port
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_stream import (
    CTX,
    POLICIES,
    events_file,
    expected,
    final_tick_equals_replay,
    write_lines,
)

pytestmark = pytest.mark.integration


def get(port: int, path: str, token: str | None = None,
        method: str = "GET") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of one request."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_customers_as_the_replay_grades_them_from_any_worker(stream: Stream,
                                                            tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=40, events=1000, seed=51)
    want, _dead = expected(lines)
    ports = [free_port(), free_port()]
    first = stream.start_worker(GRADER_WEB_PORT=str(ports[0]))
    first.wait_ready()
    second = stream.start_worker(data_dir="data-2", GRADER_WEB_PORT=str(ports[1]))
    second.wait_ready(45)
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    final_tick_equals_replay(stream, lines, want)
    customers = sorted({c for c, _p in want})
    from grader.settings import resolve_policy

    line_keys = {p: resolve_policy(p, ROOT / "config").line_keys for p in POLICIES}
    for customer in customers:
        answers = [get(port, f"/customers/{customer}") for port in ports]
        assert [status for status, _b, _h in answers] == [200, 200], answers
        assert answers[0][1] == answers[1][1], "forwarded: the owner's answer"
        body = answers[0][1]
        assert body["customer_id"] == customer and body["graded"] is True
        assert body["as_of"] == "2026-11-21T16:00:00Z"  # the final tick, AS_OF in UTC
        for policy in POLICIES:
            graded = body["policies"][policy]
            assert graded["tier"] == want[customer, policy]
            exact = Fraction(graded["score_exact"])
            assert float(round2(exact)) == graded["score"]  # half away from zero, as everywhere
            assert list(graded["breakdown"]) == list(line_keys[policy])
            assert list(graded["metrics"]) == list(line_keys[policy])
            assert graded["sequence"] >= 1 and isinstance(graded["pinned"], bool)
        assert isinstance(body["blacklisted"], bool)
        for override in body["overrides"]:
            assert {"action", "actor", "reason", "occurred_at"} <= set(override)
    assert any(get(p, f"/customers/{customers[0]}")[0] == 200 for p in ports)


    # errors: JSON bodies with the right status, on either worker
    for port in ports:
        status, body, _h = get(port, "/customers/NOBODY-HERE")
        assert (status, body) == (404, {"error": "no customer NOBODY-HERE"})
        for bad in ("bad%20id", "x" * 65, "%C3%A9t%C3%A9"):
            status, body, _h = get(port, f"/customers/{bad}")
            assert status == 400 and "customer_id" in body["error"], (bad, body)
        status, body, _h = get(port, "/no/such/path")
        assert status == 404 and "error" in body
        status, body, headers = get(port, f"/customers/{customers[0]}", method="POST")
        assert status == 405 and "error" in body and headers.get("Allow") == "GET"

    # the owner leaves abruptly: the other worker answers (owner or not) or says 503,
    # never hangs
    first.kill()
    for customer in customers[:10]:
        started = time.monotonic()
        status, body, headers = get(ports[1], f"/customers/{customer}")
        assert time.monotonic() - started < 13
        assert status in (200, 503), body
        if status == 503:
            assert headers.get("Retry-After") == "1"
    wait_for(lambda: all(get(ports[1], f"/customers/{c}")[0] == 200 for c in customers[:10]),
             45, "the remaining worker to answer for every customer")
    assert second.stop() == 0


def test_the_api_token(stream: Stream, tmp_path: Path) -> None:
    lines = events_file(tmp_path / "events.jsonl", customers=10, events=200, seed=52)
    token = "s3cret-token-for-the-test"
    ports = [free_port(), free_port()]
    first = stream.start_worker(GRADER_WEB_PORT=str(ports[0]), GRADER_API_TOKEN=token)
    first.wait_ready()
    second = stream.start_worker(data_dir="data-2", GRADER_WEB_PORT=str(ports[1]),
                                 GRADER_API_TOKEN=token)
    second.wait_ready(45)
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    customers = sorted({e.customer_id for e in (parse_event(line, CTX) for line in lines)
                        if isinstance(e, Event) and e.type == "sale"})

    def answered() -> bool:
        return all(get(p, f"/customers/{c}", token)[0] == 200 for p in ports
                   for c in customers[:5])

    wait_for(answered, 45, "both workers to answer with the token (forwarding it)")
    for port in ports:
        status, body, headers = get(port, f"/customers/{customers[0]}")
        assert status == 401 and "token" in body["error"]
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert get(port, f"/customers/{customers[0]}", "wrong")[0] == 401
        assert get(port, "/no/such/path")[0] == 401  # nothing is told without the token
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200  # /metrics stays open
    for worker in (first, second):
        assert token not in worker.log()
    assert second.stop() == 0 and first.stop() == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_an_open_endpoint_off_loopback_is_refused(stream: Stream, host: str) -> None:
    done = stream.grader("worker", GRADER_WEB_HOST=host, GRADER_KAFKA_URL="kafka://127.0.0.1:1")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == (f"grader: error: setting web_host (GRADER_WEB_HOST): {host} is not a "
                        "loopback address, so the customer endpoint needs GRADER_API_TOKEN or "
                        "GRADER_API_TOKENS_FILE")


def test_the_endpoint_keeps_its_openapi_document(stream: Stream, tmp_path: Path) -> None:
    """schemathesis against a running worker: every documented status, header and body
    shape, for generated ids and the document's example (a customer the test grades)."""
    lines = events_file(tmp_path / "events.jsonl", customers=10, events=200, seed=53)
    lines.append(orjson.dumps({"event_id": "openapi-example", "type": "sale",
                               "customer_id": "C000001", "amount": "100", "currency": "CNY",
                               "occurred_at": "2026-11-01T10:00:00+08:00"}))
    write_lines(tmp_path / "events.jsonl", lines)
    port = free_port()
    worker = stream.start_worker(GRADER_WEB_PORT=str(port))
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    wait_for(lambda: get(port, "/customers/C000001")[0] == 200, 45, "the example customer")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run",
         str(ROOT / "docs" / "openapi.yaml"), "--url", f"http://127.0.0.1:{port}",
         "--checks", "all", "--max-examples", "60", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 selected / 2 total" in done.stdout and "No issues found" in done.stdout
    assert worker.stop() == 0
