"""Zombie workers (issue 20, section 1): a worker that stalls past its group session, or
loses its network to the broker while Redis stays reachable, never writes anything older
than what the new owner of its partitions already wrote.

Two workers share the partitions; events keep arriving while one of them is

* frozen with SIGSTOP for longer than its session, then thawed (SIGCONT);
* cut off from the broker for 30 s, then healed: it runs in a network namespace of the
  test's own, reaching the broker over one veth pair and Redis over another; the host
  end of the broker's pair is set down (its packets are dropped) and up again.

At the end, the topics and Redis hold exactly the replay's tiers, and the recorded
sequence of writes never goes back: per customer, the changelog's revisions strictly
increase in offset order; customer-tiers sequences never decrease and a tier-change
event_id never names two changes (``assert_outputs_consistent``); a tier change published
for the first time is never older than one published before it; and every view Redis
accepted (its MONITOR, the Lua script's SET of the customer's version) is the view of a
changelog revision, never older than the one before it. See docs/streaming.md, "Zombies".
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis

from grader.core.step import decode_record
from grader.core.support import view
from grader.devtools.kafkabroker import KafkaBroker
from grader.devtools.services import RedisServer
from grader.stream.lease import LEASE_LOST_EXIT
from tests.conftest import in_ci
from tests.integration.conftest import Stream, WorkerProcess
from tests.integration.test_stream import events_file, expected, final_tick_equals_replay
from tests.integration.test_support_queues import SUPPORT, assert_keys_equal, expected_keys

pytestmark = pytest.mark.integration

CHUNKS = 8  # the events go in this many parts, spread over the fault
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')  # the words of a MONITOR line


@dataclass
class Namespace:
    """A network namespace of the test's own: the broker over one veth pair, Redis over
    another (by its port), both at 127.0.0.1 as the host's other clients see them."""

    name: str
    broker_link: str  # the host end of the broker's pair: down = the path is cut
    address: str  # the namespace's address on the broker's pair (the web port binds it)

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.name, sys.executable, "-m", "grader", "worker"]

    def cut(self) -> None:
        run("ip", "link", "set", self.broker_link, "down")

    def heal(self) -> None:
        run("ip", "link", "set", self.broker_link, "up")


def run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"


@pytest.fixture
def namespace(redis_server: RedisServer) -> Iterator[Namespace]:
    """The namespace, its two veth pairs and routes; deleted afterwards (with the pairs).

    127.0.0.1 inside it is routed out over a veth (route_localnet on both ends lets the
    loopback address cross the link), so the worker's connections to the broker and to
    Redis are plain TCP connections to the host's servers: no proxy holds bytes between.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        why = "a network namespace needs root and iproute2 (ip)"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    tag = uuid.uuid4().hex[:6]
    name = f"zombie-{tag}"
    net = random.randrange(16, 250)
    pairs = {"b": (f"zb{tag}h", f"zb{tag}n", f"10.213.{net}."),
             "r": (f"zr{tag}h", f"zr{tag}n", f"10.214.{net}.")}
    run("ip", "netns", "add", name)
    try:
        inside = ["ip", "netns", "exec", name]
        # lo stays down: 127.0.0.0/8 then has no local route in the namespace
        run(*inside, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        for host, ns, net_prefix in pairs.values():
            run("ip", "link", "add", host, "type", "veth", "peer", "name", ns)
            run("ip", "link", "set", ns, "netns", name)
            run("ip", "addr", "add", f"{net_prefix}1/30", "dev", host)
            run("ip", "link", "set", host, "up")
            run("sysctl", "-qw", f"net.ipv4.conf.{host}.route_localnet=1")
            run(*inside, "ip", "addr", "add", f"{net_prefix}2/30", "dev", ns)
            run(*inside, "ip", "link", "set", ns, "up")
            run(*inside, "sysctl", "-qw", f"net.ipv4.conf.{ns}.route_localnet=1")
        bhost, bns, bnet = pairs["b"]
        _rhost, rns, rnet = pairs["r"]
        run(*inside, "ip", "route", "add", "127.0.0.1/32", "via", f"{bnet}1", "dev", bns,
            "src", f"{bnet}2")  # the broker (any port but Redis's)
        run(*inside, "ip", "route", "add", "127.0.0.1/32", "via", f"{rnet}1", "dev", rns,
            "src", f"{rnet}2", "table", "101")
        run(*inside, "ip", "rule", "add", "pref", "10", "ipproto", "tcp", "dport",
            str(redis_server.port), "to", "127.0.0.1", "table", "101")
        yield Namespace(name, bhost, f"{bnet}2")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        for host, _ns, _net in pairs.values():  # gone with the namespace, normally
            subprocess.run(["ip", "link", "del", host], capture_output=True, timeout=20)


class Monitor:
    """Redis MONITOR on a socket of its own, read in a thread: each SET of a customer's
    version by the Lua script, and the HSET of its hash right after it, in the order Redis
    ran them."""

    def __init__(self, server: RedisServer, prefix: str) -> None:
        self.prefix = prefix
        self.writes: list[tuple[str, tuple[int, ...], dict[str, str]]] = []
        self.attempts = 0  # EVALSHA calls seen (accepted or refused)
        self.error: BaseException | None = None  # what stopped the reader early
        self._pending: dict[str, tuple[int, ...]] = {}  # customer -> version, until its HSET
        self._sock = socket.create_connection((server.host, server.port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self._lines = self._sock.makefile("rb")
        assert self._lines.readline().startswith(b"+OK"), "MONITOR refused"
        self._sock.settimeout(None)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._lines:
                if self._stop:
                    return
                self._take(line.decode(errors="replace"))
        except Exception as exc:  # the socket closed at stop()
            if not self._stop:
                self.error = exc

    def _take(self, text: str) -> None:
        version_key, customer_key = self.prefix + "version:", self.prefix + "customer:"
        words = [w.replace('\\"', '"') for w in QUOTED.findall(text)]
        if len(words) < 2:
            return
        name = words[0].upper()
        if name in ("EVALSHA", "EVAL"):
            self.attempts += 1
        elif name == "SET" and words[1].startswith(version_key):
            self._pending[words[1][len(version_key):]] = tuple(int(w)
                                                               for w in words[2].split())
        elif name == "HSET" and words[1].startswith(customer_key):
            customer = words[1][len(customer_key):]
            if customer in self._pending:
                fields = dict(zip(words[2::2], words[3::2], strict=True))
                self.writes.append((customer, self._pending.pop(customer), fields))

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._sock.close()


def changelog_revisions(stream: Stream) -> dict[tuple[str, int], dict[str, str]]:
    """Per customer, the changelog's revisions strictly increase in offset order (no
    record older than one before it); (customer, revision) -> that revision's view."""
    last: dict[str, tuple[int, int, int]] = {}
    views: dict[tuple[str, int], dict[str, str]] = {}
    backwards = []
    for record in stream.read("worker-customers-changelog"):
        stored = decode_record(record.value)
        customer, revision = stored.state.customer_id, stored.state.revision
        before = last.get(customer)
        if before is not None and revision <= before[0]:
            backwards.append(f"{customer}: revision {before[0]} at p{before[1]}@{before[2]}, "
                             f"then {revision} at p{record.partition}@{record.offset} "
                             f"(epoch {stored.epoch[:8]})")
        last[customer] = (revision, record.partition, record.offset)
        views[customer, revision] = view(stored.state, SUPPORT)["fields"]
    assert not backwards, (f"{len(backwards)} changelog records not newer than the one "
                           f"before them: {backwards[:5]}")
    return views


def assert_new_changes_never_older(stream: Stream) -> None:
    """A tier change published for the first time (a new event_id) carries a higher
    sequence than every change of its customer and policy published before it; a
    republished one repeats an id already seen (at-least-once)."""
    seen: set[str] = set()
    top: dict[tuple[str, str], int] = {}
    older = []
    for record in stream.read("tier-changes"):
        change = orjson.loads(record.value)
        if change["event_id"] in seen:
            continue
        seen.add(change["event_id"])
        key = (change["customer_id"], change["policy"])
        if change["sequence"] <= top.get(key, 0):
            older.append(f"{key}: sequence {change['sequence']} after {top[key]} "
                         f"(p{record.partition}@{record.offset})")
        top[key] = max(top.get(key, 0), change["sequence"])
    assert not older, f"{len(older)} new tier changes older than earlier ones: {older[:5]}"


def assert_redis_writes_never_older(monitor: Monitor,
                                    views: dict[tuple[str, int], dict[str, str]]) -> None:
    """Each view Redis accepted is a changelog revision's, and per customer its version
    never goes back."""
    assert monitor.error is None, f"MONITOR stopped: {monitor.error!r}"
    assert monitor.writes, "MONITOR saw no write"
    last: dict[str, tuple[int, ...]] = {}
    problems = []
    for customer, version, fields in monitor.writes:
        revision = version[0]
        if views.get((customer, revision)) != fields:
            problems.append(f"{customer} revision {revision}: Redis got {fields}, the "
                            f"changelog holds {views.get((customer, revision))}")
        if customer in last and version < last[customer]:
            problems.append(f"{customer}: version {version} written after {last[customer]}")
        last[customer] = version
    assert not problems, f"{len(problems)} bad Redis writes: {problems[:5]}"


def produce_parts(stream: Stream, tmp_path: Path, lines: list[bytes]) -> list[Path]:
    size = -(-len(lines) // CHUNKS)
    paths = []
    for n in range(CHUNKS):
        path = tmp_path / f"part-{n}.jsonl"
        path.write_bytes(b"\n".join(lines[n * size:(n + 1) * size]) + b"\n")
        paths.append(path)
    return paths


def produce(stream: Stream, path: Path) -> None:
    done = stream.grader("produce", str(path))
    assert done.returncode == 0, done.stderr


def zombie_scenario(stream: Stream, redis_server: RedisServer, tmp_path: Path,
                    fault: str, namespace: Namespace | None = None) -> None:
    """Two workers, events arriving; the fault on the first one mid-stream; the checks."""
    lines = events_file(tmp_path / "events.jsonl", customers=80, events=3200, seed=47)
    want, _dead = expected(lines)
    parts = produce_parts(stream, tmp_path, lines)
    redis_env = {"GRADER_REDIS_URL": redis_server.url, "GRADER_REDIS_PREFIX": stream.prefix}
    monitor = Monitor(redis_server, stream.prefix)
    try:
        if namespace is None:
            zombie = stream.start_worker("a", **redis_env)
        else:
            # its web port binds the namespace's address: not loopback, so a token
            env = stream.env("a", GRADER_WEB_HOST=namespace.address,
                             GRADER_API_TOKEN=uuid.uuid4().hex, **redis_env)
            zombie = WorkerProcess(env, tmp_path / "worker-zombie.log", namespace.command())
            stream.workers.append(zombie)
        zombie.wait_ready(45)
        produce(stream, parts[0])
        other = stream.start_worker("b", **redis_env)
        other.wait_ready(60)
        produce(stream, parts[1])
        time.sleep(0.3)  # the fault comes while it grades that part (a batch in flight)
        kafka = isinstance(stream.broker, KafkaBroker)
        session = 10.0 if kafka else 6.0  # grader.stream.options
        fault_seconds = 30.0 if fault == "network" else session + 8
        pid = zombie.process.pid
        if fault == "freeze":
            os.kill(pid, signal.SIGSTOP)
        else:
            assert namespace is not None
            namespace.cut()
        started = time.monotonic()
        try:
            for path in parts[2:]:  # events keep arriving for its customers
                produce(stream, path)
                time.sleep(fault_seconds / (CHUNKS + 2))
            time.sleep(max(0.0, fault_seconds - (time.monotonic() - started)))
        finally:
            if fault == "freeze":
                os.kill(pid, signal.SIGCONT)
            else:
                assert namespace is not None
                namespace.heal()
        with contextlib.suppress(subprocess.TimeoutExpired):
            zombie.process.wait(15)  # it gives up (an in-flight batch) or rejoins
        code = zombie.process.poll()
        gave_up = code == LEASE_LOST_EXIT
        assert code in (None, LEASE_LOST_EXIT), f"exit {code}:\n{zombie.log()[-3000:]}"
        if gave_up:
            assert "lease on the partitions lost" in zombie.log()
        print(f"zombie after the {fault}: {'exited, lease lost' if gave_up else 'rejoined'}")
        final_tick_equals_replay(stream, lines, want)  # tiers = replay; outputs consistent
        assert_new_changes_never_older(stream)
        views = changelog_revisions(stream)
        client = redis.Redis.from_url(redis_server.url)
        assert_keys_equal(client, expected_keys(lines, stream.prefix), stream.prefix)
    finally:
        monitor.stop()
    assert_redis_writes_never_older(monitor, views)
    print(f"Redis: {len(monitor.writes)} writes accepted of {monitor.attempts} script calls")
    for worker in stream.workers:
        if worker.process.poll() is None:
            assert worker.stop() == 0


def test_zombie_frozen_past_its_session_then_thawed(stream: Stream, redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    zombie_scenario(stream, redis_server, tmp_path, "freeze")


def test_zombie_cut_from_the_broker_for_30_s_then_healed(
        stream: Stream, redis_server: RedisServer, namespace: Namespace,
        tmp_path: Path) -> None:
    zombie_scenario(stream, redis_server, tmp_path, "network", namespace)
