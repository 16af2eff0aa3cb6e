"""Support queues: what Redis holds for one customer, computed from its state (pure).

GRADING.md section 5: ``{prefix}customer:{id}`` is a hash with ``tier:{policy}``
per policy and ``blacklisted``; ``{prefix}ticket:{ticket_id}`` a hash of an open
ticket; ``{prefix}queue:{queue}`` a sorted set of open ticket ids whose
``ZRANGE 0 -1`` is the service order:

1. blacklisted customers last;
2. then the rank of the customer's tier under the support policy (its
   ``support_priority``, best tier first by default); a customer not graded
   yet (or whose tier the support policy no longer has) below every tier;
3. then the ticket's ``opened_at``, oldest first, to the millisecond;
4. then the ticket id (Redis orders equal scores by member).

The score packs the band (1-2) and the time (3) into one integer below 2**53,
so a double holds it exactly: band * 2**48 + milliseconds since year 1000
(instants are limited to years 1000-8999, grader.core.clock). So a support policy
may have at most :data:`MAX_SUPPORT_TIERS` tiers (checked at start-up).

:func:`view` is what the worker sends to Redis after a customer changed: the
whole of that customer (its hash and every ticket it knows, open or closed),
so a write is absolute and idempotent: writing it twice, or an older
customer's view after a restart, gives the same keys.
"""

from __future__ import annotations

from typing import Any

from grader.core.clock import MIN_INSTANT, format_instant
from grader.core.policy import Policy
from grader.core.state import CustomerState

TIME_BITS = 48
MAX_SUPPORT_TIERS = 30
NOT_GRADED = MAX_SUPPORT_TIERS  # the band below every tier
BLACKLISTED = MAX_SUPPORT_TIERS + 1  # the last band
_MIN_MS = MIN_INSTANT // 1000


def check_support_policy(policy: Policy) -> None:
    """Raise ValueError when the queues cannot order ``policy``'s tiers."""
    if len(policy.support_priority) > MAX_SUPPORT_TIERS:
        raise ValueError(f"support policy {policy.name} has {len(policy.support_priority)} "
                         f"tiers; support queues order at most {MAX_SUPPORT_TIERS}")


def band(state: CustomerState, support: Policy) -> int:
    """The customer's place before its tickets' opening times (smaller is served first)."""
    if state.blacklisted:
        return BLACKLISTED
    tier = state.tiers.get(support.name)
    if tier is None or tier.tier not in support.support_priority:
        return NOT_GRADED
    return support.support_priority.index(tier.tier)


def score(band_: int, opened_at_us: int) -> int:
    """The sorted-set score of a ticket (an integer below 2**53)."""
    return (band_ << TIME_BITS) + (opened_at_us // 1000 - _MIN_MS)


def view(state: CustomerState, support: Policy) -> dict[str, Any]:
    """Everything Redis holds about this customer and its tickets.

    ``fields`` is the customer hash, whole; each ticket is ``[ticket_id,
    open, queue, subject, opened_at, score]`` (a closed one only needs
    removing). ``version`` is [revision, as_of, sum of the tier sequences]: Redis
    refuses a write older than the one it holds (grader.sinks.redis).
    """
    fields = {f"tier:{policy}": t.tier for policy, t in sorted(state.tiers.items())}
    fields["blacklisted"] = "1" if state.blacklisted else "0"
    rank = band(state, support)
    tickets = []
    for ticket_id, ticket in sorted(state.tickets.items()):
        if ticket.is_open:
            assert ticket.opened_at is not None
            tickets.append([ticket_id, True, ticket.queue, ticket.subject,
                            format_instant(ticket.opened_at), score(rank, ticket.opened_at)])
        else:
            tickets.append([ticket_id, False, "", "", "", 0])
    version = [state.revision, state.as_of, sum(t.sequence for t in state.tiers.values())]
    return {"customer_id": state.customer_id, "fields": fields, "tickets": tickets,
            "version": version}
