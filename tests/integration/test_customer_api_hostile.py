"""The worker's web server against what anyone can send it, before any token: raw bytes
in headers, paths and ids, oversized lines, connections held open (issue 19). Every
answer is JSON, no request leaves a traceback in the log, and no connection is held
longer than ``web_idle_timeout``. Real workers, both brokers (docs/api.md)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grader.devtools.services import free_port
from tests.integration.conftest import Server, Stream, WorkerProcess, wait_for
from tests.integration.test_stream import write_lines

pytestmark = pytest.mark.integration

TOKEN = b"s3cret-token-for-the-hostile-test"
IDLE = 2  # GRADER_WEB_IDLE_TIMEOUT of the workers here, seconds


def request(path: bytes, *headers: tuple[bytes, bytes], close: bool = True) -> bytes:
    """A GET request's bytes, with raw ``headers``."""
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Connection: close"] if close else []
    return b"\r\n".join([*lines, b"", b""])


def answer(sock: socket.socket) -> tuple[int, str, Any]:
    """(status, Content-Type, body as JSON or bytes) of the next answer on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    content_type = response.getheader("Content-Type", "")
    return response.status, content_type, (
        json.loads(body) if content_type.startswith("application/json") else body)


def send(port: int, data: bytes) -> tuple[int, str, Any]:
    """The answer to ``data`` sent on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        return answer(sock)


def bearer(token: bytes = TOKEN) -> tuple[bytes, bytes]:
    return b"Authorization", b"Bearer " + token


def assert_no_traceback(worker: WorkerProcess) -> None:
    log = worker.log()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


@pytest.fixture(scope="module")
def worker(broker: Server,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, WorkerProcess]]:
    """One worker with a token and a 2 s idle timeout, for the module (on each broker)."""
    stream = Stream(broker, tmp_path_factory.mktemp("hostile"))
    port = free_port()
    running = stream.start_worker(GRADER_WEB_PORT=str(port), GRADER_API_TOKEN=TOKEN.decode(),
                                  GRADER_WEB_IDLE_TIMEOUT=str(IDLE))
    try:
        running.wait_ready()
        yield port, running
        assert running.stop() == 0
    finally:
        if running.process.poll() is None:
            running.kill()


def test_undecodable_authorization_is_a_json_401(worker: tuple[int, WorkerProcess]) -> None:
    port, process = worker
    for value in (b"Bearer \xff\xfe", b"\xc3\x28", b"Bearer " + TOKEN + b"\x80",
                  b"\xe9t\xe9 " + TOKEN):
        status, content_type, body = send(port, request(b"/customers/C1",
                                                        (b"Authorization", value)))
        assert (status, content_type) == (401, "application/json; charset=utf-8"), body
        assert "token" in body["error"]
    assert_no_traceback(process)


@pytest.mark.parametrize(("name", "data"), [
    ("request line", request(b"/customers/" + b"x" * 9000, bearer())),
    ("header", request(b"/customers/C1", bearer(), (b"X-Big", b"y" * 9000))),
    ("header name", request(b"/customers/C1", bearer(), (b"X-" + b"n" * 9000, b"1"))),
    ("too many headers", request(b"/customers/C1", *[(b"X-%d" % i, b"1") for i in range(200)])),
    ("bytes HTTP does not allow", request(b"/customers/C1", (b"X-Nul", b"a\x00b"))),
    ("no HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
])
def test_a_request_that_cannot_be_parsed_is_a_json_400(worker: tuple[int, WorkerProcess],
                                                      name: str, data: bytes) -> None:
    port, process = worker
    status, content_type, body = send(port, data)
    assert (status, content_type) == (400, "application/json; charset=utf-8"), (name, body)
    assert set(body) == {"error"}
    if name in ("request line", "header", "header name"):
        assert "too long" in body["error"]
    assert_no_traceback(process)


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_the_bearer_scheme_in_any_case(worker: tuple[int, WorkerProcess],
                                       scheme: bytes) -> None:
    port, _process = worker
    for spaces in (b" ", b"  "):
        status, _type, body = send(port, request(
            b"/customers/NOBODY", (b"Authorization", scheme + spaces + TOKEN)))
        assert (status, body) == (404, {"error": "no customer NOBODY"})  # past the token check
    for wrong in (b"Basic " + TOKEN, scheme + TOKEN, scheme + b" " + TOKEN[:-1], scheme):
        status, _type, _body = send(port, request(b"/customers/NOBODY",
                                                  (b"Authorization", wrong)))
        assert status == 401, wrong


def test_idle_and_half_open_connections_are_closed(worker: tuple[int, WorkerProcess]) -> None:
    port, process = worker
    opened = time.monotonic()
    held = {name: socket.create_connection(("127.0.0.1", port), timeout=20)
            for name in ("idle", "partial request", "trickling", "after an answer")}
    try:
        held["partial request"].sendall(b"GET /customers/C1 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        held["trickling"].sendall(b"GET /metrics HTTP/1.1\r\n")
        held["after an answer"].sendall(request(b"/metrics", close=False))
        assert answer(held["after an answer"])[0] == 200
        for _second in range(IDLE * 2 - 1):  # a header a second, each before the limit
            time.sleep(0.5)
            held["trickling"].sendall(b"X-Slow: 1\r\n")
        time.sleep(max(0.0, opened + IDLE - 0.5 - time.monotonic()))
        for name, sock in held.items():  # still open before the limit
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
                raise AssertionError(f"the {name} connection closed early")
            sock.setblocking(True)
        for name, sock in held.items():
            sock.settimeout(max(0.1, opened + IDLE + 3 - time.monotonic()))
            try:
                assert sock.recv(1) == b"", name  # the server closed it
            except ConnectionResetError:
                pass
            except TimeoutError:
                raise AssertionError(f"the {name} connection is still open") from None
    finally:
        for sock in held.values():
            sock.close()
    status, _type, _body = send(port, request(b"/customers/NOBODY", bearer()))
    assert status == 404
    assert_no_traceback(process)


CUSTOMER_ID_BYTES = st.binary(max_size=80) | st.text(
    "AZaz09._:-%/?#\\ \t\x00é", max_size=70).map(lambda t: t.encode("utf-8", "surrogatepass"))
HEADER_BYTES = st.binary(max_size=60) | st.sampled_from([b"\xff", b"\r\n", b"\x00", b" "])


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.one_of(CUSTOMER_ID_BYTES.map(lambda i: b"/customers/" + i),
                      st.binary(max_size=40).map(lambda p: b"/" + p),
                      st.sampled_from([b"/customers/..", b"/customers/.", b"/customers/%2E%2E",
                                       b"/customers/%ff", b"/customers/a%00b", b"//customers/x",
                                       b"/customers/x/..", b"*", b"/customers/\xff"])),
       authorization=st.none() | st.just(b"Bearer " + TOKEN) | st.just(b"bearer " + TOKEN)
       | HEADER_BYTES | HEADER_BYTES.map(lambda v: b"Bearer " + v),
       extra=st.none() | st.tuples(st.binary(min_size=1, max_size=20), HEADER_BYTES))
def test_any_bytes_get_a_json_answer_and_no_traceback(
        worker: tuple[int, WorkerProcess], path: bytes, authorization: bytes | None,
        extra: tuple[bytes, bytes] | None) -> None:
    assume(path.split(b"?")[0] != b"/metrics")  # open, and Prometheus' text format
    port, process = worker
    headers = [(b"Authorization", authorization)] if authorization is not None else []
    headers += [extra] if extra is not None else []
    status, content_type, body = send(port, request(path, *headers))
    assert 200 <= status < 300 or 400 <= status < 500, (status, body)
    assert content_type.startswith("application/json"), (status, content_type, body)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert_no_traceback(process)


def test_dot_ids_through_a_non_owner(stream: Stream, tmp_path: Path) -> None:
    """``..`` and ``.`` are valid ids: a worker that forwards them gets the owner's answer
    for that customer (not Faust's index page at ``/``, nor a 404 for ``/customers/``)."""
    ids = ["..", ".", "a.b:c", "...", "-.-"]
    write_lines(tmp_path / "events.jsonl", [orjson.dumps(
        {"event_id": f"dots-{n}", "type": "sale", "customer_id": customer, "amount": "100",
         "currency": "CNY", "occurred_at": "2026-11-01T10:00:00+08:00"})
        for n, customer in enumerate(ids)])
    ports = [free_port(), free_port()]
    workers = [stream.start_worker(GRADER_WEB_PORT=str(ports[0]))]
    workers[0].wait_ready()
    workers.append(stream.start_worker(data_dir="data-2", GRADER_WEB_PORT=str(ports[1])))
    workers[1].wait_ready(45)
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0

    def answers(customer: str) -> list[tuple[int, str, Any]]:
        path = b"/customers/" + customer.encode()
        return [send(port, request(path)) for port in ports]

    wait_for(lambda: all(a[0] == 200 for c in ids for a in answers(c)), 45,
             "both workers to answer 200 for every dotted id")
    for customer in ids:
        first, second = answers(customer)
        assert first == second, customer  # the owner's answer, relayed by the other
        assert first[2]["customer_id"] == customer and first[2]["graded"] is True
    # a non-owner forwards no undecodable Authorization bytes (there is no token here)
    for customer in ids:
        for port in ports:
            status, _type, body = send(port, request(b"/customers/" + customer.encode(),
                                                     (b"Authorization", b"Bearer \xff")))
            assert status == 200 and body["customer_id"] == customer
    for process in workers:
        assert_no_traceback(process)
    assert workers[1].stop() == 0 and workers[0].stop() == 0
