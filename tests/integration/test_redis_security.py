"""Support queues in a Redis reached over TLS as an ACL user (issue 12, "Settings").

Debian's redis-server, built with TLS (grader.devtools.services.start_secure_redis;
installed by scripts/install-debian-packages), listens for TLS only, with a
server certificate for 127.0.0.1 signed by a CA this module makes with the
openssl CLI (tests/pki.py), and one ACL user; its ``default`` user is off.
Two servers: one that checks a client certificate if shown
(``tls-auth-clients optional``, the worker shows none) and one that requires
it (``yes``, the worker shows GRADER_REDIS_CERT_FILE and KEY_FILE).

On both brokers: a worker writes the queues over TLS (read back here with
redis-py over TLS), `grader redis-sync` rebuilds them over TLS, and a wrong
ACL password, an unknown CA or a missing client certificate each end in one
error line naming the setting to check, with a non-zero exit, within 15 s.
The password is in no line any command or worker writes, at debug level too.
Where Debian's redis-server is missing these tests are skipped saying why,
except in CI (`CI` set), where that fails.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from grader.devtools.services import RedisServer, RedisTls, start_secure_redis, tls_redis_available
from grader.sinks.redis import desk_acl
from tests.conftest import in_ci
from tests.integration.conftest import Stream, wait_for
from tests.integration.test_stream import write_lines
from tests.integration.test_support_queues import order_events, redis_keys
from tests.pki import Pki, make_pki, openssl_or_skip

pytestmark = pytest.mark.integration

USER = "desk-writer"
FAIL_WITHIN = 15.0  # seconds for a command to give up on a Redis it cannot use
MODES = ("optional", "yes")  # redis-server's tls-auth-clients


def tls_redis_or_skip() -> None:
    """Skip without Debian's redis-server; fail in CI, where it must run."""
    why = tls_redis_available()
    if why is not None:
        if in_ci():
            pytest.fail(f"Debian's redis-server is needed in CI: {why}")
        pytest.skip(why)


@dataclass(frozen=True)
class SecureRedis:
    """A redis-server listening for TLS only, with USER and its password."""

    server: RedisServer
    pki: Pki
    password: str
    auth_clients: str  # "yes": a client certificate is required

    def url(self, password: str | None = None) -> str:
        """``rediss://USER:password@127.0.0.1:port/0``, the right password by default."""
        return f"rediss://{USER}:{password or self.password}@127.0.0.1:{self.server.port}/0"

    def env(self, stream: Stream, password: str | None = None) -> dict[str, str]:
        """A grader process's settings for this Redis; the client certificate only where
        the server requires one."""
        env = {"GRADER_REDIS_URL": self.url(password), "GRADER_REDIS_PREFIX": stream.prefix,
               "GRADER_REDIS_CA_FILE": str(self.pki.ca)}
        if self.auth_clients == "yes":
            env.update(GRADER_REDIS_CERT_FILE=str(self.pki.client_cert),
                       GRADER_REDIS_KEY_FILE=str(self.pki.client_key))
        return env

    def client(self) -> redis.Redis:
        """redis-py over TLS as USER, checking the server against the test CA."""
        return redis.Redis(host="127.0.0.1", port=self.server.port, username=USER,
                           password=self.password, ssl=True, ssl_ca_certs=str(self.pki.ca),
                           ssl_certfile=str(self.pki.client_cert),
                           ssl_keyfile=str(self.pki.client_key), socket_timeout=10)


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SecureRedis]]:
    """Two TLS redis-servers with USER, by tls-auth-clients: "optional" and "yes"."""
    tls_redis_or_skip()
    openssl_or_skip()
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    password = f"pw-{secrets.token_hex(12)}"
    servers: dict[str, SecureRedis] = {}
    try:
        for mode in MODES:
            tls = RedisTls(pki.server_cert, pki.server_key, pki.ca, auth_clients=mode)
            server = start_secure_redis(tls=tls, users={USER: password})
            servers[mode] = SecureRedis(server, pki, password, mode)
        yield servers
    finally:
        for running in servers.values():
            running.server.stop()


def ticket(event: str, customer: str, ticket_id: str, minute: int) -> bytes:
    return orjson.dumps({"event_id": f"{event}-{ticket_id}", "type": event,
                         "customer_id": customer, "ticket_id": ticket_id, "queue": "desk",
                         "occurred_at": f"2026-11-02T10:{minute:02d}:00+08:00",
                         "subject": f"about {ticket_id}"})


def tickets_file(path: Path) -> list[bytes]:
    """A big buyer (tier A) and a small one (tier B) with tickets in queue "desk"."""
    when = "2026-11-01T10:00:00+08:00"
    lines = order_events("SMALL", 1000, when, 1) + order_events("BIG", 300000, when, 1)
    lines += [ticket("ticket_opened", "SMALL", "S1", 0), ticket("ticket_opened", "BIG", "B1", 5),
              ticket("ticket_opened", "SMALL", "S2", 10), ticket("ticket_opened", "BIG", "B2", 15),
              ticket("ticket_closed", "BIG", "B2", 20)]
    write_lines(path, lines)
    return lines


def assert_no_password(text: str, *passwords: str) -> None:
    for password in passwords:
        assert password not in text, "a password was written out"


def assert_one_error_line(done: Any, elapsed: float, named: str) -> str:
    """Exit code not 0 within FAIL_WITHIN s; stderr: progress lines, then one error line."""
    lines: list[str] = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stderr
    assert elapsed < FAIL_WITHIN, f"took {elapsed:.1f}s: {done.stderr}"
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == [lines[-1]], done.stderr
    assert all(line.startswith("grader: ") for line in lines), done.stderr
    assert lines[-2].startswith("grader: support queues in Redis at 127.0.0.1:"), done.stderr
    assert lines[-1].startswith(f"grader: error: setting {named}: "), done.stderr
    print(f"\n{elapsed:.2f}s exit {done.returncode}: {lines[-1]}")
    return lines[-1]


def timed(stream: Stream, *args: str, **env: str) -> tuple[Any, float]:
    started = time.monotonic()
    done = stream.grader(*args, **env)
    return done, time.monotonic() - started


@pytest.mark.parametrize("mode", MODES, ids=["client_cert_optional", "client_cert_required"])
def test_worker_and_redis_sync_over_tls_as_an_acl_user(
        stream: Stream, secure_redis: dict[str, SecureRedis], tmp_path: Path, mode: str) -> None:
    secure = secure_redis[mode]
    tickets_file(tmp_path / "events.jsonl")
    worker = stream.start_worker(GRADER_LOG_LEVEL="debug", **secure.env(stream))
    worker.wait_ready(45)
    produced = stream.grader("produce", str(tmp_path / "events.jsonl"))
    assert produced.returncode == 0, produced.stderr
    client = secure.client()
    queue = f"{stream.prefix}queue:desk"
    wait_for(lambda: client.zrange(queue, 0, -1) == [b"B1", b"S1", b"S2"],
             45, "the queue in service order (tier A first, then oldest first)")
    wait_for(lambda: client.hget(f"{stream.prefix}customer:SMALL", "tier:abc-100") == b"B",
             30, "the small buyer's tier")
    keys = redis_keys(client, stream.prefix)
    assert keys[f"{stream.prefix}ticket:S1"] == {
        "customer_id": "SMALL", "queue": "desk", "subject": "about S1",
        "opened_at": "2026-11-02T02:00:00Z"}
    assert f"{stream.prefix}ticket:B2" not in keys  # closed
    assert keys[f"{stream.prefix}customer:BIG"]["tier:abc-100"] == "A"
    assert worker.stop() == 0
    log = worker.log()
    assert f"grader: support queues in Redis at 127.0.0.1:{secure.server.port} ..." in log
    # redis-sync, over TLS as the same user, rebuilds the same keys
    for key in client.scan_iter(match=stream.prefix + "*"):
        client.delete(key)
    synced = stream.grader("redis-sync", **secure.env(stream))
    assert synced.returncode == 0, synced.stderr
    assert "wrote 2 customers" in synced.stderr, synced.stderr
    assert redis_keys(client, stream.prefix) == keys
    for text in (log, produced.stdout + produced.stderr, synced.stdout + synced.stderr):
        assert_no_password(text, secure.password)


@pytest.mark.parametrize("command", ["worker", "redis-sync"])
def test_a_wrong_acl_password_is_one_line(stream: Stream, secure_redis: dict[str, SecureRedis],
                                          command: str) -> None:
    secure = secure_redis["yes"]
    wrong = f"wrong-{secrets.token_hex(8)}"
    done, elapsed = timed(stream, command, **secure.env(stream, password=wrong))
    line = assert_one_error_line(done, elapsed, "redis_url (GRADER_REDIS_URL)")
    assert line.endswith(f"Redis at 127.0.0.1:{secure.server.port} refused the user name or "
                         f"password")
    assert_no_password(done.stdout + done.stderr, secure.password, wrong)


@pytest.mark.parametrize("command", ["worker", "redis-sync"])
def test_an_unknown_ca_is_one_line(stream: Stream, secure_redis: dict[str, SecureRedis],
                                   command: str) -> None:
    secure = secure_redis["optional"]
    env = {**secure.env(stream), "GRADER_REDIS_CA_FILE": str(secure.pki.other_ca)}
    done, elapsed = timed(stream, command, **env)
    line = assert_one_error_line(done, elapsed, "redis_ca_file (GRADER_REDIS_CA_FILE)")
    assert (f"the certificate of Redis at 127.0.0.1:{secure.server.port} is not trusted by "
            f"redis_ca_file ({secure.pki.other_ca})") in line
    assert_no_password(done.stdout + done.stderr, secure.password)


def test_a_missing_client_certificate_is_one_line(stream: Stream,
                                                  secure_redis: dict[str, SecureRedis]) -> None:
    secure = secure_redis["yes"]
    env = {**secure.env(stream), "GRADER_REDIS_CERT_FILE": "", "GRADER_REDIS_KEY_FILE": ""}
    done, elapsed = timed(stream, "worker", **env)
    line = assert_one_error_line(done, elapsed, "redis_cert_file (GRADER_REDIS_CERT_FILE)")
    assert "client certificate, and redis_cert_file is empty" in line
    assert_no_password(done.stdout + done.stderr, secure.password)


def test_a_plain_url_to_a_tls_port_is_one_line(stream: Stream,
                                               secure_redis: dict[str, SecureRedis]) -> None:
    """redis:// (no TLS) to a server that speaks TLS only: unreachable, naming redis_url."""
    secure = secure_redis["optional"]
    env = {**secure.env(stream), "GRADER_REDIS_CA_FILE": "",
           "GRADER_REDIS_URL": secure.url().replace("rediss://", "redis://")}
    done, elapsed = timed(stream, "worker", **env)
    line = assert_one_error_line(done, elapsed, "redis_url (GRADER_REDIS_URL)")
    assert f"cannot reach Redis at 127.0.0.1:{secure.server.port}" in line
    assert_no_password(done.stdout + done.stderr, secure.password)


def test_a_client_key_that_does_not_match_is_one_line(stream: Stream,
                                                      secure_redis: dict[str, SecureRedis]) -> None:
    """Checked before connecting, as the TLS connection would load it."""
    secure = secure_redis["yes"]
    env = {**secure.env(stream), "GRADER_REDIS_KEY_FILE": str(secure.pki.server_key)}
    done, elapsed = timed(stream, "worker", **env)
    line = assert_one_error_line(done, elapsed, "redis_cert_file (GRADER_REDIS_CERT_FILE)")
    assert line.endswith(f"with the key redis_key_file ({secure.pki.server_key}): "
                         f"KEY_VALUES_MISMATCH")
    assert_no_password(done.stdout + done.stderr, secure.password)


def test_a_support_desk_user_reads_the_queues_and_nothing_else(
        stream: Stream, secure_redis: dict[str, SecureRedis], tmp_path: Path) -> None:
    """GRADING.md section 7: a desk's ACL user (docs/support-queues.md, desk_acl) reads the
    queues, tickets and customers the worker wrote, and Redis refuses it anything else."""
    secure = secure_redis["optional"]
    prefix = stream.prefix
    tickets_file(tmp_path / "events.jsonl")
    worker = stream.start_worker(**secure.env(stream))
    worker.wait_ready(45)
    assert stream.grader("produce", str(tmp_path / "events.jsonl")).returncode == 0
    admin = secure.client()
    desk_name, desk_password = f"desk-{secrets.token_hex(4)}", f"pw-{secrets.token_hex(12)}"
    admin.execute_command("ACL", "SETUSER", desk_name, "on", f">{desk_password}",
                          *desk_acl(prefix))
    admin.set("elsewhere:secret", "x")
    admin.hset("other:customer:BIG", "tier:abc-100", "A")
    desk = redis.Redis(host="127.0.0.1", port=secure.server.port, username=desk_name,
                       password=desk_password, ssl=True, ssl_ca_certs=str(secure.pki.ca),
                       socket_timeout=10)
    queue = f"{prefix}queue:desk"
    wait_for(lambda: desk.zrange(queue, 0, -1) == [b"B1", b"S1", b"S2"], 45,
             "the desk to read the queue in service order")
    assert desk.hgetall(f"{prefix}ticket:B1")[b"customer_id"] == b"BIG"
    assert desk.hget(f"{prefix}customer:BIG", "tier:abc-100") == b"A"
    assert desk.zcard(queue) == 3 and desk.ping()
    refused: list[tuple[Any, ...]] = [
        ("ZADD", queue, "0", "X1"), ("ZREM", queue, "B1"), ("HSET", f"{prefix}customer:BIG",
                                                           "tier:abc-100", "C"),
        ("DEL", queue), ("SET", f"{prefix}queue:new", "x"), ("EXPIRE", queue, "1"),
        ("KEYS", "*"), ("KEYS", f"{prefix}*"), ("SCAN", "0"), ("GET", "elsewhere:secret"),
        ("HGETALL", "other:customer:BIG"), ("ZRANGE", "elsewhere:secret", "0", "-1"),
        ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "save", ""),
        ("EVAL", "return redis.call('FLUSHALL')", "0"), ("EVAL", "return 1", "0"),
        ("FUNCTION", "LIST"), ("ACL", "LIST"), ("ACL", "SETUSER", desk_name, "+@all"),
        ("SUBSCRIBE", "x"), ("CLIENT", "LIST"), ("INFO",), ("MONITOR",),
    ]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            desk.execute_command(*command)
    assert admin.zrange(queue, 0, -1) == [b"B1", b"S1", b"S2"]  # nothing was changed
    assert admin.get("elsewhere:secret") == b"x"
    assert worker.stop() == 0
