"""grader/stream/faust_patches/lease_hooks.py on plain aiokafka clients and Apache Kafka,
grader's worker out of the picture: aiokafka has no hook for a consumer's group answers,
nor one before a produce request is written to its socket.

* ``watch_group``: a lease fed by a consumer's own JoinGroup, SyncGroup and Heartbeat
  answers becomes valid once the member is synced and a Heartbeat was answered; without
  the hook it never learns of them.
* ``guard_producer``: a produce request written after the lease ran out is refused at the
  write, on a connection that already carried a record under the lease; without the hook
  aiokafka delivers it.

* ``guard_producer``'s abortive close (SO_LINGER 0): a producer that exits with a produce
  request stuck behind a cut network leaves, without it, the request's bytes to the kernel,
  which delivers them once the network heals; with it they die with the process. The
  producer runs in a network namespace of the test's own (tests/integration/test_zombie.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from grader.stream.faust_patches.lease_hooks import guard_producer, watch_group
from grader.stream.lease import Lease
from tests.integration.conftest import ROOT, Server, wait_for
from tests.integration.test_zombie import Namespace, namespace  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def new_topic(broker: Server, name: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(name, 1, 1)])
    admin.close()
    return name


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
def test_watch_group_feeds_the_lease_from_a_consumers_group_answers(broker: Server) -> None:
    topic = new_topic(broker, f"watch-{uuid.uuid4().hex[:8]}")
    lease = Lease(session=6.0)

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                    group_id=f"{topic}-group", session_timeout_ms=6000,
                                    heartbeat_interval_ms=200)
        watch_group(consumer._client, lease)
        assert not lease.valid()  # no partitions before the first SyncGroup
        await consumer.start()
        try:
            # JoinGroup and SyncGroup: an assignment, then a Heartbeat answered under it
            await until(lambda: lease.synced >= 1 and not lease.unconfirmed, 60,
                        "the lease to learn of the sync and a Heartbeat")
            assert lease.valid()
        finally:
            await consumer.stop()

    asyncio.run(scenario())


class LeaseLost(KafkaError):  # type: ignore[misc]
    """What the test's lease raises where the worker's exits (grader.stream.lease)."""


def end_offset(broker: Server, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition(topic, 0)
    end: int = consumer.end_offsets([tp])[tp]
    consumer.close()
    return end


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
@pytest.mark.parametrize("guarded", [False, True], ids=["aiokafka_as_is", "with_guard"])
def test_guard_producer_refuses_a_produce_request_written_after_the_lease_ran_out(
        broker: Server, guarded: bool) -> None:
    topic = new_topic(broker, f"guard-{uuid.uuid4().hex[:8]}")
    now = [0.0]
    refused: list[str] = []

    def lost(what: str) -> None:
        refused.append(what)
        raise LeaseLost(what)

    lease = Lease(session=10.0, clock=lambda: now[0], on_lost=lost)
    lease.renew(0.0)  # as a SyncGroup answer would: valid until 10 s less its margin
    lease.begin()

    lingers: list[tuple[int, int]] = []

    async def scenario() -> tuple[int, BaseException | None]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        if guarded:
            guard_producer(producer.client, lease)
        await producer.start()
        try:
            first = await producer.send_and_wait(topic, b"under the lease", partition=0)
            for conn in producer.client._conns.values():  # their sockets' SO_LINGER
                sock = conn._writer.transport.get_extra_info("socket")
                lingers.append(struct.unpack("ii", sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, 8)))
            now[0] = 60.0  # no Heartbeat answered for a session: the lease ran out
            second = await producer.send(topic, b"after the lease", partition=0)
            try:
                await second
            except LeaseLost as exc:
                return first.offset, exc
            return first.offset, None
        finally:
            await producer.stop()

    first, error = asyncio.run(scenario())
    assert first == 0
    if guarded:
        assert isinstance(error, LeaseLost)
        assert refused == ["writing a produce request"]
        assert end_offset(broker, topic) == 1, "only the record written under the lease"
        # the connection that carried the produce requests closes abortively (test_zombie)
        assert (1, 0) in lingers
    else:
        # aiokafka as it is writes the request however long ago the group last answered:
        # when it has a hook of its own, guard_producer's check may be moot
        assert error is None
        assert end_offset(broker, topic) == 2
        assert (1, 0) not in lingers  # a graceful close: unsent bytes still go out


LINGER = Path(__file__).with_name("linger_producer.py")


def stuck_sockets(ns: Namespace, port: int) -> list[str]:
    """The namespace's TCP sockets to the broker's port that still hold unsent bytes."""
    found = subprocess.run(["ip", "netns", "exec", ns.name, "ss", "-tnH", "dst",
                            f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=20)
    assert found.returncode == 0, found.stderr
    return [line for line in found.stdout.splitlines() if int(line.split()[2]) > 0]


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
@pytest.mark.parametrize("guarded", [False, True], ids=["aiokafka_as_is", "with_guard"])
def test_a_produce_request_stuck_behind_a_cut_network_dies_with_the_process(
        broker: Server, namespace: Namespace, guarded: bool) -> None:  # noqa: F811
    topic = new_topic(broker, f"linger-{uuid.uuid4().hex[:8]}")
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace.name, sys.executable, str(LINGER), broker.bootstrap,
         topic, "guarded" if guarded else "as_is"],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == b"ready\n"
        namespace.cut()
        process.stdin.write(b"go\n")
        process.stdin.flush()
        said = process.stdout.readline()
        assert said == b"exiting\n", said + process.stdout.read()
        process.wait(30)
        stuck = stuck_sockets(namespace, port)  # the process is gone; is its request?
        namespace.heal()
        if guarded:
            assert stuck == [], "SO_LINGER 0: the unsent request died with the process"
        else:
            # aiokafka as it is closes gracefully: the kernel keeps the request's bytes and
            # delivers them once the network heals, after the process is gone
            assert stuck, "no unsent bytes left behind: guard_producer's SO_LINGER is moot"
            wait_for(lambda: end_offset(broker, topic) == 2, 120,
                     "the stuck request to reach the broker after the process exited")
    finally:
        namespace.heal()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()
        process.stdout.close()
