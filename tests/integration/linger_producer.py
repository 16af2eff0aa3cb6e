"""A plain aiokafka producer that exits with a produce request stuck behind a cut network.

Run by tests/integration/test_lease_hooks.py inside a network namespace:

    python linger_producer.py BOOTSTRAP TOPIC {as_is,guarded}

It writes one record and prints ``ready``; after a line on stdin (the test has cut the
path to the broker by then) it sends a second record, waits until the request's bytes
are in the kernel's send queue of its socket (unacknowledged: the path is cut), prints
``exiting`` and exits at once, as the worker does when its lease runs out. ``guarded``
applies grader's guard_producer (grader/stream/faust_patches/lease_hooks.py) with a
lease that holds throughout: only its abortive close (SO_LINGER 0) is at play.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import sys
import termios
import time

from aiokafka import AIOKafkaProducer

from grader.stream.faust_patches.lease_hooks import guard_producer
from grader.stream.lease import Lease


def unsent(producer: AIOKafkaProducer) -> int:
    """Bytes in the kernel's send queues of the producer's sockets, not yet acknowledged."""
    total = 0
    for conn in producer.client._conns.values():
        sock = conn._writer.transport.get_extra_info("socket")
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        total += struct.unpack("i", queued)[0]
    return total


async def main(bootstrap: str, topic: str, how: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                request_timeout_ms=300_000)
    if how == "guarded":
        lease = Lease(session=3600.0)
        lease.renew(time.monotonic())
        lease.begin()
        guard_producer(producer.client, lease)
    await producer.start()
    await producer.send_and_wait(topic, b"first, acknowledged", partition=0)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await producer.send(topic, b"second, written behind the cut", partition=0)
    while not unsent(producer):
        await asyncio.sleep(0.05)
    print("exiting", flush=True)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
