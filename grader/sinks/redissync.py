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
import sys

from grader.core.errors import GraderError
from grader.kafka.changelog import read_states
from grader.settings import Settings
from grader.sinks.redis import RedisSetupError, SupportQueues


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
        removed = await queues.remove_stale(states)
        return len(states) - len(skipped), removed, skipped
    except RedisSetupError as exc:
        raise GraderError(str(exc)) from None
    finally:
        await queues.close()


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
