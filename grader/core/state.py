"""What is kept per customer, and how one event changes it (no grading here).

Windowed aggregates are bucketed by local month, once per timezone in use,
which is exact because every window is a whole number of local months. Event
details are kept only where a metric needs them (invoices, for payment days)
and only while inside the customer's horizon. Aggregation is commutative, so
applying the same set of events in any order gives the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grader.core.clock import NEVER, local_day, local_month, month_start
from grader.core.events import Event, content_digest

# A month bucket: [sales, refunds, gross_profit, sales_with_gross_profit, sale_count]
SALES, REFUNDS, GP, GP_COUNT, COUNT = range(5)
Entry = tuple[int, str, int]  # (occurred_at us, event_id, amount minor)
# An invoice in one timezone: (first sale's local day, paid-in-full local day or None,
# ((local month, sale amount), ...))
LocalInvoice = tuple[int, int | None, tuple[tuple[int, int], ...]]


class Invoice:
    """A credit invoice: its sales and payments, and when it was paid in full."""

    __slots__ = ("_local", "first_ts", "paid_ts", "payments", "sales")

    def __init__(
        self, sales: list[Entry] | None = None, payments: list[Entry] | None = None
    ) -> None:
        self.sales: list[Entry] = sales or []
        self.payments: list[Entry] = payments or []
        self.refresh()

    def refresh(self) -> None:
        """Recompute the first sale and the payment that completes the invoice."""
        self.sales.sort()
        self.payments.sort()
        self.first_ts: int | None = self.sales[0][0] if self.sales else None
        self.paid_ts: int | None = None
        self._local: dict[str, LocalInvoice] = {}
        if not self.sales:
            return
        due, paid = sum(e[2] for e in self.sales), 0
        for ts, _eid, amount in self.payments:
            paid += amount
            if paid >= due:
                self.paid_ts = ts
                break

    def local(self, tz: str) -> LocalInvoice:
        """In ``tz``: the local days of the first sale and of the completing payment
        (None while open), and the sale amounts by local month. Needs a sale."""
        cached = self._local.get(tz)
        if cached is None:
            assert self.first_ts is not None
            months: dict[int, int] = {}
            for ts, _eid, amount in self.sales:
                month = local_month(ts, tz)
                months[month] = months.get(month, 0) + amount
            paid = None if self.paid_ts is None else local_day(self.paid_ts, tz)
            cached = (local_day(self.first_ts, tz), paid, tuple(months.items()))
            self._local[tz] = cached
        return cached

    def latest_ts(self) -> int:
        """The latest occurred_at of anything on this invoice."""
        return max(e[0] for e in self.sales + self.payments)


@dataclass(slots=True)
class Ticket:
    """One support ticket of a customer, from its ``ticket_opened``/``ticket_closed`` events.

    Any arrival order gives the same ticket: ``opened_at`` is the earliest
    open; queue and subject come from the latest open (by occurred_at, then
    event_id), so a second open moves the ticket; any close closes it for good
    (a close that arrives before its open leaves nothing open).
    """

    opened_at: int | None = None  # the earliest ticket_opened; None: no open seen yet
    last_open: int = NEVER  # the latest ticket_opened (queue and subject are its)
    last_open_id: str = ""
    queue: str = ""
    subject: str = ""
    closed_at: int | None = None  # the latest ticket_closed; None: not closed

    @property
    def is_open(self) -> bool:
        """Opened and never closed: it waits in its queue."""
        return self.opened_at is not None and self.closed_at is None


@dataclass(slots=True)
class TierState:
    """A customer's tier under one policy."""

    tier: str
    score: tuple[int, int]
    sequence: int
    changed_at: int  # as_of (us) of the last change
    pinned: bool


@dataclass(slots=True)
class Risk:
    """A customer's tier at risk under one policy (GRADING.md section 4), as last computed
    (grader.core.risk.refresh_risk): the drop date and the tier then, and the drop dates
    already warned about (tier-warnings, once per date; only those after as_of's date)."""

    drops_on: int | None = None  # a local day (date.toordinal()); None: never drops
    to_tier: str | None = None
    warned: list[int] = field(default_factory=list)  # local days (ordinals), ascending


@dataclass(slots=True)
class CustomerState:
    """Everything grader keeps about one customer."""

    customer_id: str
    as_of: int = NEVER  # before 1970 is a time like any other, so "none yet" is NEVER, not 0
    horizon: int = NEVER
    horizon_until: int = NEVER  # as_of may grow up to here before the horizon must be recomputed
    seen: dict[str, int] = field(default_factory=dict)  # event_id -> occurred_at (us)
    digests: dict[str, int] = field(default_factory=dict)  # event_id -> content_digest
    first_activity: int | None = None
    last_sale: int | None = None
    lifetime_sales: int = 0
    months: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    interactions: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    assessments: dict[str, tuple[int, str, int, int]] = field(default_factory=dict)
    pins: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)
    blacklist: tuple[int, str, bool] | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)
    tiers: dict[str, TierState] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    # policy name -> (version, digest) of the policies it was last graded under
    graded_under: dict[str, tuple[str, str]] = field(default_factory=dict)
    # policy name -> its tier at risk, refreshed after the customer's state changed
    risk: dict[str, Risk] = field(default_factory=dict)
    # True: changed since ``risk`` was refreshed (the worker defers refreshes while behind)
    risk_stale: bool = False
    # Not persisted (codec): revisions of the details metrics read, bumped by record()
    # and prune() on every change, and the scoring memo keyed by them (grader.core.scoring).
    # A state loaded from bytes starts with an empty memo, so its revisions restart at 0.
    # The record's revision in the customers table: +1 each time the worker stores it
    # (kept in the record's header, grader.core.step, not in the codec); the first
    # number of the version Redis compares (grader.sinks.redis).
    revision: int = field(default=0, compare=False, repr=False)
    buckets_rev: int = field(default=0, compare=False, repr=False)
    invoices_rev: int = field(default=0, compare=False, repr=False)
    interactions_rev: int = field(default=0, compare=False, repr=False)
    assessments_rev: int = field(default=0, compare=False, repr=False)
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def blacklisted(self) -> bool:
        """Whether the latest blacklist/unblacklist says blacklisted."""
        return self.blacklist is not None and self.blacklist[2]

    @property
    def graded(self) -> bool:
        """A customer is graded from its first activity event on."""
        return self.first_activity is not None

    def pinned_tier(self, policy: str) -> str | None:
        """The tier pinned under ``policy``, if the latest pin/unpin is a pin."""
        pin = self.pins.get(policy)
        return pin[2] if pin is not None else None


def record(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    """Add one new (not duplicate, not expired) event to the state."""
    state.seen[event.event_id] = event.ts
    state.digests[event.event_id] = content_digest(event)
    _RECORDERS[event.type](state, event, tzs)


def _activity(state: CustomerState, ts: int) -> None:
    if state.first_activity is None or ts < state.first_activity:
        state.first_activity = ts


def _bucket(state: CustomerState, tz: str, ts: int) -> list[int]:
    by_month = state.months.setdefault(tz, {})
    month = local_month(ts, tz)
    bucket = by_month.get(month)
    if bucket is None:
        bucket = by_month[month] = [0, 0, 0, 0, 0]
    return bucket


def _sale(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    amount = event.amount or 0
    for tz in tzs:
        bucket = _bucket(state, tz, event.ts)
        bucket[SALES] += amount
        bucket[COUNT] += 1
        if event.gross_profit is not None:
            bucket[GP] += event.gross_profit
            bucket[GP_COUNT] += 1
    state.buckets_rev += 1
    state.lifetime_sales += amount
    if state.last_sale is None or event.ts > state.last_sale:
        state.last_sale = event.ts
    if event.invoice_id is not None:
        invoice = state.invoices.get(event.invoice_id)
        if invoice is None:
            invoice = state.invoices[event.invoice_id] = Invoice()
        invoice.sales.append((event.ts, event.event_id, amount))
        invoice.refresh()
        state.invoices_rev += 1
    _activity(state, event.ts)


def _refund(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    amount = event.amount or 0
    for tz in tzs:
        _bucket(state, tz, event.ts)[REFUNDS] += amount
    state.buckets_rev += 1
    state.lifetime_sales -= amount
    _activity(state, event.ts)


def _payment(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    assert event.invoice_id is not None
    invoice = state.invoices.get(event.invoice_id)
    if invoice is None:
        invoice = state.invoices[event.invoice_id] = Invoice()
    invoice.payments.append((event.ts, event.event_id, event.amount or 0))
    invoice.refresh()
    state.invoices_rev += 1
    _activity(state, event.ts)


def _interaction(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    assert event.kind is not None
    for tz in tzs:
        counts = state.interactions.setdefault(tz, {}).setdefault(event.kind, {})
        month = local_month(event.ts, tz)
        counts[month] = counts.get(month, 0) + 1
    state.interactions_rev += 1
    _activity(state, event.ts)


def _assessment(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    assert event.indicator is not None and event.score is not None
    current = state.assessments.get(event.indicator)
    if current is None or (event.ts, event.event_id) > current[:2]:
        score = event.score
        state.assessments[event.indicator] = (
            event.ts,
            event.event_id,
            score.numerator,
            score.denominator,
        )
        state.assessments_rev += 1
    _activity(state, event.ts)


def _override(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    key = (event.ts, event.event_id)
    if event.action in ("pin", "unpin"):
        assert event.policy is not None
        current = state.pins.get(event.policy)
        if current is None or key > current[:2]:
            # An unpin is remembered too, so an older pin arriving later loses.
            state.pins[event.policy] = (*key, event.tier if event.action == "pin" else None)
    elif state.blacklist is None or key > state.blacklist[:2]:
        state.blacklist = (*key, event.action == "blacklist")
    state.audit.append(
        {
            "ts": event.ts,
            "event_id": event.event_id,
            "occurred_at": event.occurred_at,
            "action": event.action,
            "policy": event.policy,
            "tier": event.tier,
            "reason": event.reason,
            "actor": event.actor,
        }
    )
    state.audit.sort(key=lambda a: (a["ts"], a["event_id"]))


def _ticket_opened(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    ticket = state.tickets.get(event.ticket_id or "")
    if ticket is None:
        ticket = state.tickets[event.ticket_id or ""] = Ticket()
    if ticket.opened_at is None or event.ts < ticket.opened_at:
        ticket.opened_at = event.ts
    if (event.ts, event.event_id) > (ticket.last_open, ticket.last_open_id):
        ticket.last_open, ticket.last_open_id = event.ts, event.event_id
        ticket.queue, ticket.subject = event.queue or "default", event.subject or ""


def _ticket_closed(state: CustomerState, event: Event, tzs: tuple[str, ...]) -> None:
    ticket = state.tickets.get(event.ticket_id or "")
    if ticket is None:
        ticket = state.tickets[event.ticket_id or ""] = Ticket()
    if ticket.closed_at is None or event.ts > ticket.closed_at:
        ticket.closed_at = event.ts


_RECORDERS = {
    "sale": _sale,
    "refund": _refund,
    "payment": _payment,
    "interaction": _interaction,
    "assessment": _assessment,
    "override": _override,
    "ticket_opened": _ticket_opened,
    "ticket_closed": _ticket_closed,
}


def prune(state: CustomerState, horizon: int) -> None:
    """Forget details dated wholly before ``horizon`` (lifetime aggregates stay).

    Every detail kept comes from an event whose id is in ``seen``, so when the
    oldest of those is inside the horizon there is nothing to forget.
    """
    if not state.seen or min(state.seen.values()) >= horizon:
        return
    state.seen = {eid: ts for eid, ts in state.seen.items() if ts >= horizon}
    state.digests = {eid: d for eid, d in state.digests.items() if eid in state.seen}
    state.buckets_rev += 1
    state.invoices_rev += 1
    state.interactions_rev += 1
    for tz, by_month in state.months.items():
        for month in [m for m in by_month if month_start(m + 1, tz) <= horizon]:
            del by_month[month]
    for tz, kinds in state.interactions.items():
        for counts in kinds.values():
            for month in [m for m in counts if month_start(m + 1, tz) <= horizon]:
                del counts[month]
    for invoice_id in [i for i, inv in state.invoices.items() if inv.latest_ts() < horizon]:
        del state.invoices[invoice_id]
    for ticket_id in [t for t, ticket in state.tickets.items() if ticket.closed_at is not None
                      and ticket.closed_at < horizon and ticket.last_open < horizon]:
        del state.tickets[ticket_id]  # closed before the horizon: a late open of it is expired
