"""The lease's hooks into aiokafka's clients (grader.stream.lease; docs/streaming.md,
"Zombies"): aiokafka has no hook for the answers to a consumer's group requests,
nor one before a produce request is written to its socket, and closes its
connections gracefully (unsent bytes are still delivered once a broken network
heals). These patch one client instance each, never a class.

Kept by tests/integration/test_lease_hooks.py (plain aiokafka clients on
Apache Kafka: without ``watch_group`` the lease never learns of a Heartbeat;
without ``guard_producer`` a produce request written after the lease ran out
is delivered, and one stuck behind a cut network when the process exits is
delivered once the network heals; tried 2026-12-08), tests/stream/test_lease.py and
tests/integration/test_zombie.py (a worker frozen past its session, a worker
cut from the broker: the thawed or healed worker must not write after the new
owner).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any

from grader.stream.lease import HEARTBEAT, JOIN_GROUP, PRODUCE, SYNC_GROUP, Lease

log = logging.getLogger(__name__)


def watch_group(client: Any, lease: Lease) -> None:
    """Feed ``lease`` from the group requests a consumer's aiokafka client sends."""
    send = client.send

    async def watched(node_id: Any, request: Any, **kwargs: Any) -> Any:
        sent = time.monotonic()
        response = await send(node_id, request, **kwargs)
        api_key = getattr(request, "API_KEY", None)
        if api_key in (HEARTBEAT, JOIN_GROUP, SYNC_GROUP):
            lease.saw(api_key, sent, getattr(response, "error_code", None))
        return response

    client.send = watched


LINGER_0 = struct.pack("ii", 1, 0)


def guard_producer(client: Any, lease: Lease) -> None:
    """Check ``lease`` at each produce request's write to its socket, and make each
    connection's close abortive (SO_LINGER 0: unsent bytes are dropped, not delivered
    once a broken network heals)."""
    get_conn = client._get_conn

    async def guarded(node_id: Any, **kwargs: Any) -> Any:
        conn = await get_conn(node_id, **kwargs)
        if conn is not None and not getattr(conn, "_grader_guarded", False):
            _guard(conn, lease)
        return conn

    client._get_conn = guarded


def _guard(conn: Any, lease: Lease) -> None:
    conn._grader_guarded = True
    writer = getattr(conn, "_writer", None)
    sock = writer.transport.get_extra_info("socket") if writer is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
        except OSError as exc:  # pragma: no cover - a socket type without SO_LINGER
            log.warning("cannot set SO_LINGER on a producer connection: %s", exc)
    send = conn.send

    def checked(request: Any, expect_response: bool = True) -> Any:
        if getattr(request, "API_KEY", None) == PRODUCE:
            lease.check("writing a produce request")  # no await between this and the write
        return send(request, expect_response=expect_response)

    conn.send = checked
