"""Graded access on real workers, both brokers (issue 24, GRADING.md section 7): callers
from a tokens file made by `grader token add`, their scopes through a forward, the
access-log topic read back, and no token in any log, metric or topic."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from grader.core.clock import parse_instant
from grader.devtools.services import free_port
from tests.integration.conftest import ROOT, Stream, wait_for
from tests.integration.test_redis_security import ticket
from tests.integration.test_stream import write_lines
from tests.integration.test_support_queues import order_events

pytestmark = pytest.mark.integration

API_TOKEN = "api-token-of-the-access-test-0123456789"
LOGGED = (200, 403, 404)
SCORES = ("score", "breakdown", "metrics", "overrides", "score_exact")


class Callers:
    """The test's tokens file, made with `grader token add`, and every request made with
    its callers: what the access-log must hold, exactly."""

    def __init__(self, stream: Stream, path: Path) -> None:
        self.stream, self.path = stream, path
        self.tokens: dict[str, str] = {"api-token": API_TOKEN}
        self.scopes: dict[str, str] = {"api-token": "detail"}
        self.expected: Counter[tuple[str, str, str, int]] = Counter()

    def add(self, name: str, *args: str) -> None:
        done = self.stream.grader("token", "add", name, *args,
                                  GRADER_API_TOKENS_FILE=str(self.path))
        assert done.returncode == 0, done.stderr
        self.tokens[name] = done.stdout.removesuffix("\n")
        self.scopes[name] = args[1]

    def get(self, port: int, name: str | None, customer: str, query: str = ""
            ) -> tuple[int, Any]:
        """(status, JSON body) of GET /customers/{customer} as caller ``name``."""
        request = urllib.request.Request(f"http://127.0.0.1:{port}/customers/{customer}{query}")
        if name is not None:
            request.add_header("Authorization", f"Bearer {self.tokens[name]}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                status, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, body = exc.code, json.loads(exc.read())
        if name is not None and status in LOGGED:
            self.expected[name, customer, self.scopes[name], status] += 1
        return status, body


def events(path: Path) -> None:
    when = "2026-11-01T10:00:00+08:00"
    lines = order_events("BIG", 300000, when, 1) + order_events("SMALL", 1000, when, 1)
    lines.append(ticket("ticket_opened", "ASKER", "T1", 0))  # known, never graded
    write_lines(path, lines)


def test_scopes_forwarding_and_the_access_log(stream: Stream, tmp_path: Path) -> None:
    callers = Callers(stream, tmp_path / "tokens.toml")
    callers.add("desk", "--scope", "tier")
    callers.add("audit-b", "--scope", "detail", "--detail-up-to", "B")
    callers.add("full", "--scope", "detail")
    ports = [free_port(), free_port()]
    access = {"GRADER_API_TOKENS_FILE": str(callers.path), "GRADER_API_TOKEN": API_TOKEN}
    first = stream.start_worker(GRADER_WEB_PORT=str(ports[0]), **access)
    first.wait_ready()
    second = stream.start_worker(data_dir="data-2", GRADER_WEB_PORT=str(ports[1]), **access)
    second.wait_ready(45)
    events(tmp_path / "events.jsonl")
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    customers = ("BIG", "SMALL", "ASKER")
    wait_for(lambda: all(callers.get(p, "full", c)[0] == 200 for p in ports for c in customers),
             60, "both workers to answer for every customer")

    for port in ports:  # each customer from its owner and through a forward
        full = {c: callers.get(port, "full", c)[1] for c in customers}
        assert full["BIG"]["policies"]["abc-100"]["tier"] == "A"
        assert full["SMALL"]["policies"]["abc-100"]["tier"] == "B"
        assert full["ASKER"]["graded"] is False
        assert callers.get(port, "api-token", "BIG") == (200, full["BIG"])
        for customer in customers:
            status, tiers = callers.get(port, "desk", customer)
            assert status == 200 and set(tiers) == {"customer_id", "graded", "blacklisted",
                                                    "as_of", "policies"}
            for policy, grade in tiers["policies"].items():
                assert set(grade) <= {"tier", "pinned", "drops_on", "to_tier"}
                assert grade["tier"] == full[customer]["policies"][policy]["tier"]
            assert not any(f'"{key}"' in json.dumps(tiers) for key in SCORES)
        status, refused = callers.get(port, "audit-b", "BIG")  # an A customer's detail
        assert status == 403 and "up to tier B" in refused["error"], refused
        assert callers.get(port, "audit-b", "SMALL") == (200, full["SMALL"])
        assert callers.get(port, "audit-b", "ASKER") == (200, full["ASKER"])
        assert callers.get(port, "desk", "NOBODY")[0] == 404
        # not logged: a wrong token, none, a token in the query string only
        for query in ("", f"?access_token={API_TOKEN}", f"?token={callers.tokens['full']}"):
            assert callers.get(port, None, "BIG", query)[0] == 401
        callers.tokens["wrong"] = "not-a-token"
        assert callers.get(port, "wrong", "BIG")[0] == 401

    records = [orjson.loads(r.value) for r in stream.read("access-log")]
    for record in records:
        assert set(record) == {"at", "caller", "customer_id", "scope", "status", "worker"}
        parse_instant(record["at"])
    got = Counter((r["caller"], r["customer_id"], r["scope"], r["status"]) for r in records)
    assert got == callers.expected, "the access-log holds exactly the requests made"
    workers = {f"http://127.0.0.1:{p}" for p in ports}
    by_customer = {c: {r["worker"] for r in records if r["customer_id"] == c}
                   for c in (*customers, "NOBODY")}
    assert all(len(w) == 1 and w <= workers for w in by_customer.values()), by_customer

    secrets = list(callers.tokens.values())
    topics = b"".join(r.value or b"" for t in ("access-log", "customer-tiers", "tier-changes")
                      for r in stream.read(t))
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read()
        for secret in secrets:
            assert secret.encode() not in metrics + topics
    assert second.stop() == 0 and first.stop() == 0
    for worker in (first, second):
        for secret in secrets:
            assert secret not in worker.log()
    assert all(secret not in callers.path.read_text() for secret in secrets)


def test_the_openapi_document_with_a_tokens_file(stream: Stream, tmp_path: Path) -> None:
    """schemathesis against a worker with a tokens file, as a tier caller and as a detail
    caller limited to B: the tier shape and the 403 are the document's."""
    callers = Callers(stream, tmp_path / "tokens.toml")
    callers.add("desk", "--scope", "tier")
    callers.add("audit-b", "--scope", "detail", "--detail-up-to", "B")
    lines = order_events("C000001", 300000, "2026-11-01T10:00:00+08:00", 1)  # the example: A
    write_lines(tmp_path / "events.jsonl", lines)
    port = free_port()
    worker = stream.start_worker(GRADER_WEB_PORT=str(port),
                                 GRADER_API_TOKENS_FILE=str(callers.path))
    worker.wait_ready()
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    wait_for(lambda: callers.get(port, "audit-b", "C000001")[0] == 403, 45,
             "the example customer, tier A")
    for name in ("desk", "audit-b"):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "run",
             str(ROOT / "docs" / "openapi.yaml"), "--url", f"http://127.0.0.1:{port}",
             "-H", f"Authorization: Bearer {callers.tokens[name]}",
             "--checks", "all", "--max-examples", "40", "--no-color"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert re.search(r"\n +(\d+) generated, \1 passed\n", done.stdout), done.stdout[-3000:]
        if name == "desk":
            assert "No issues found" in done.stdout, done.stdout[-3000:]
        else:  # its one customer is A: schemathesis warns that it saw only 401/403 and 404
            assert "only 401/403 responses" in done.stdout, done.stdout[-3000:]
    assert worker.stop() == 0
