"""`grader redis-sync`: rewrite the support-queue keys from the workers' state.

The workers' state is their customers changelog topic
(``{topic_prefix}worker-customers-changelog``, compacted): its latest record
per customer is that customer's stored state. redis-sync reads it from the
beginning to its end, writes every customer as the worker would
(grader/sinks/redis.py), then removes what the state does not have: ticket
hashes and queue entries of tickets that are not open, and customer hashes
of customers the workers do not know. Afterwards Redis holds exactly what a
worker that never missed a write would have written (docs/support-queues.md).

Run it with the workers stopped or running: a worker's later write is
newer, and writes are absolute, so it wins.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from grader.core.errors import GraderError
from grader.core.state import CustomerState
from grader.kafka.changelog import read_states
from grader.settings import Settings
from grader.sinks.redis import RedisSetupError, SupportQueues

log = logging.getLogger(__name__)


def redis_sync(settings: Settings, queues: SupportQueues,
               tansu: bool) -> tuple[int, int, list[str]]:
    """Rewrite every key; return (customers written, stale keys removed, the ids of the
    customers whose write Redis refused, each logged)."""
    return asyncio.run(_sync(settings, queues, tansu))


async def _sync(settings: Settings, queues: SupportQueues,
                tansu: bool) -> tuple[int, int, list[str]]:
    try:
        await queues.connect()
        states = await read_states(settings.kafka, settings.topic_prefix, tansu)
        skipped = await queues.write(list(states.values()))
        removed = await remove_stale(queues, states)
        return len(states) - len(skipped), removed, skipped
    except RedisSetupError as exc:
        raise GraderError(str(exc)) from None
    finally:
        await queues.close()


async def remove_stale(queues: SupportQueues, states: dict[str, CustomerState]) -> int:
    """Delete keys under the prefix that no state holds; how many were changed."""
    redis = queues._redis
    prefix = queues.prefix
    open_in: dict[str, str] = {ticket_id: ticket.queue for state in states.values()
                               for ticket_id, ticket in state.tickets.items() if ticket.is_open}
    removed = 0
    async for key in redis.scan_iter(match=_glob(prefix) + "ticket:*", count=1000):
        ticket_id = key.decode()[len(prefix) + len("ticket:"):]
        if ticket_id not in open_in:
            removed += await redis.delete(key)
    async for key in redis.scan_iter(match=_glob(prefix) + "queue:*", count=1000):
        queue = key.decode()[len(prefix) + len("queue:"):]
        found = (await redis.type(key)).decode()
        if found != "zset":  # no open ticket is there: the write would have replaced it
            if found != "none":
                log.warning("Redis key %s held a %s, not a zset: removed (no open ticket "
                            "is in that queue)", key.decode(), found)
            removed += await redis.delete(key)
            continue
        members = [m.decode() for m in await redis.zrange(key, 0, -1)]
        stale = [m for m in members if open_in.get(m) != queue]
        if stale:
            removed += await redis.zrem(key, *stale)
    async for key in redis.scan_iter(match=_glob(prefix) + "customer:*", count=1000):
        if key.decode()[len(prefix) + len("customer:"):] not in states:
            removed += await redis.delete(key)
    return removed


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def main(settings: Settings, queues: SupportQueues) -> int:
    """The command: one summary line on stderr (and one naming the customers Redis
    refused, then a non-zero exit)."""
    written, removed, skipped = redis_sync(settings, queues, settings.broker_quirks == "tansu")
    print(f"redis-sync: wrote {written} customers to Redis at {queues.where}, "
          f"removed {removed} stale keys or queue entries", file=sys.stderr)
    if skipped:
        print(f"redis-sync: {len(skipped)} customers not written, Redis refused them "
              f"(named above): {', '.join(skipped[:10])}", file=sys.stderr)
        return 1
    return 0
