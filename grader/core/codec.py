"""CustomerState <-> bytes (JSON via orjson), for the worker's table and its changelog.

The layout is versioned (``"v"``); derived fields (an invoice's first sale and
completing payment) are recomputed on load rather than stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from grader.core.state import CustomerState, Invoice, Risk, Ticket, TierState

VERSION = 5  # 2 added "digests" (a version 1 state loads with none: no conflict is seen);
# 3 added "tickets" (an older state loads with none: tickets were not kept before);
# 4 added "under" (an older state loads with none: it is graded again once, as in a roll-out);
# 5 added "risk" and "risk_stale" (an older state loads with none: its next refresh computes
# drops_on, says so in a customer-tiers message, and warns about a date within warn_days once)


def dump_state(state: CustomerState) -> bytes:
    """Serialise a customer's state."""
    return orjson.dumps(
        {
            "v": VERSION,
            "id": state.customer_id,
            "as_of": state.as_of,
            "horizon": state.horizon,
            "seen": state.seen,
            "digests": state.digests,
            "first": state.first_activity,
            "last_sale": state.last_sale,
            "lifetime": state.lifetime_sales,
            "months": {tz: {str(m): b for m, b in by.items()} for tz, by in state.months.items()},
            "inter": {
                tz: {k: {str(m): c for m, c in counts.items()} for k, counts in kinds.items()}
                for tz, kinds in state.interactions.items()
            },
            "invoices": {
                i: {"s": inv.sales, "p": inv.payments} for i, inv in state.invoices.items()
            },
            "assess": state.assessments,
            "pins": state.pins,
            "blacklist": state.blacklist,
            "audit": state.audit,
            "tiers": {
                p: [t.tier, *t.score, t.sequence, t.changed_at, t.pinned]
                for p, t in state.tiers.items()
            },
            "tickets": {
                i: [t.opened_at, t.last_open, t.last_open_id, t.queue, t.subject, t.closed_at]
                for i, t in state.tickets.items()
            },
            "under": state.graded_under,
            "risk": {p: [r.drops_on, r.to_tier, r.warned] for p, r in state.risk.items()},
            "risk_stale": state.risk_stale,
        }
    )


def load_state(data: bytes) -> CustomerState:
    """Rebuild a customer's state from ``dump_state`` output."""
    raw: dict[str, Any] = orjson.loads(data)
    if raw.get("v") not in (1, 2, 3, 4, VERSION):
        raise ValueError(f"unsupported state version {raw.get('v')!r}")
    state = CustomerState(
        raw["id"],
        as_of=raw["as_of"],
        horizon=raw["horizon"],
        seen=raw["seen"],
        digests=raw.get("digests", {}),
        first_activity=raw["first"],
        last_sale=raw["last_sale"],
        lifetime_sales=raw["lifetime"],
    )
    state.months = {tz: {int(m): b for m, b in by.items()} for tz, by in raw["months"].items()}
    state.interactions = {
        tz: {k: {int(m): c for m, c in counts.items()} for k, counts in kinds.items()}
        for tz, kinds in raw["inter"].items()
    }
    state.invoices = {
        i: Invoice(
            [tuple(e) for e in inv["s"]],
            [tuple(e) for e in inv["p"]],
        )
        for i, inv in raw["invoices"].items()
    }
    state.assessments = {k: tuple(v) for k, v in raw["assess"].items()}
    state.pins = {k: tuple(v) for k, v in raw["pins"].items()}
    state.blacklist = tuple(raw["blacklist"]) if raw["blacklist"] else None
    state.audit = raw["audit"]
    state.tiers = {
        p: TierState(t[0], (t[1], t[2]), t[3], t[4], t[5]) for p, t in raw["tiers"].items()
    }
    state.tickets = {i: Ticket(*t) for i, t in raw.get("tickets", {}).items()}
    state.graded_under = {p: (v[0], v[1]) for p, v in raw.get("under", {}).items()}
    state.risk = {p: Risk(r[0], r[1], list(r[2])) for p, r in raw.get("risk", {}).items()}
    state.risk_stale = raw.get("risk_stale", False)
    return state
