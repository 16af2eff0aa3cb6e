"""Deterministic generator of a synthetic JSON-lines events file for grader.

Usable as a script::

    python bench/generate_events.py --customers 30000 --events 200000 --seed 1 \\
        --as-of 2026-11-22T00:00:00+08:00 --out /tmp/events.jsonl

or as a library (for tests that need small files)::

    from bench.generate_events import generate
    lines = list(generate(50, 400, seed=7, as_of="2026-11-22T00:00:00+08:00"))

``generate`` yields one JSON object per line as ``bytes`` WITHOUT a trailing
newline; the script joins them with ``b"\\n"`` and ends the file with one.

The output is a pure function of the arguments (one seeded ``random.Random``,
no wall clock, no hash-order dependence), so it is reproducible byte for byte.
Exactly ``events`` lines are produced: ``round(events * duplicates)`` of them
are exact re-sends of an earlier valid line, ``round(events * bad)`` are bad
lines (one defect each), the rest are distinct valid events.  Event dates lie
in ``[as_of - months, as_of]``.  Customer sizes are log-normal, so a few
customers are big (monthly sales > 20000 CNY) and most are small.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import orjson

DAY = 86_400
CST_OFFSET = 8 * 3600
CURRENCY = "CNY"
PAYMENT_TERMS = 30 * DAY

#: Share of distinct events per type; ``ticket`` is split into opened/closed
#: lines and ``sale`` takes whatever the others leave.
TYPE_SHARES: dict[str, float] = {
    "payment": 0.08,
    "refund": 0.03,
    "interaction": 0.10,
    "assessment": 0.05,
    "override": 0.005,
    "ticket": 0.035,
}
INTERACTION_KINDS = ("visit", "call", "complaint", "referral", "survey")
INTERACTION_CUM = (35, 70, 80, 88, 100)
INDICATORS = ("C1", "C2", "C3", "D1", "D2", "D3")
ASSESSORS = ("li.wei", "zhang.min", "wang.fang", "auditor:03", "auditor:07", "chen_jie")
POLICY_TIERS: dict[str, tuple[str, ...]] = {
    "abc-100": ("A", "B", "C"),
    "stars": ("7-star", "6-star", "5-star", "4-star", "3-star", "quasi-star", "unrated"),
}
OVERRIDE_REASONS = (
    "strategic account",
    "contract renegotiation",
    "fraud suspicion",
    "unpaid invoices",
    "management decision",
    "data correction",
)
ACTORS = ("ops:alice", "ops:bob", "sales-director", "risk.team")
QUEUES = ("billing", "support", "delivery", "returns")
SUBJECTS = (
    "invoice amount wrong",
    "late delivery",
    "damaged goods",
    "request for credit terms",
    "price inquiry",
    "account access",
)
UNKNOWN_TYPES = ("upgrade", "purchase", "loyalty_bonus")
#: Fields a bad "missing field" line may lose (only those present are used).
REQUIRED_FIELDS = (
    "event_id",
    "type",
    "customer_id",
    "occurred_at",
    "amount",
    "currency",
    "kind",
    "indicator",
    "score",
    "assessor",
    "action",
    "ticket_id",
)

Event = tuple[int, str, str, dict[str, object]]
"""(instant in epoch seconds, type, customer_id, type-specific fields)."""
Item = dict[str, object] | bytes
"""A valid record still to be serialized, or an already-made bad line."""
RECENT_LINES = 2000
"""Re-sends copy one of this many most recent valid lines."""


@dataclass(frozen=True, slots=True)
class Customer:
    """A synthetic customer: size, typical ticket and active window."""

    cid: str
    weight: float
    ticket: float
    start: int
    end: int
    credit: float
    quality: float


@dataclass(slots=True)
class Sale:
    """A generated sale, kept so payments and refunds can refer to it."""

    t: int
    customer: Customer
    cents: int
    invoice: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """The generation window in epoch seconds, both ends inclusive."""

    lo: int
    hi: int


# --------------------------------------------------------------------------
# time and money helpers


def parse_as_of(as_of: str | datetime) -> datetime:
    """``as_of`` as an aware datetime; raises ValueError without an offset."""
    moment = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("as_of must carry a UTC offset, e.g. 2026-11-22T00:00:00+08:00")
    return moment


def months_before(moment: datetime, months: int) -> datetime:
    """``moment`` moved back by ``months`` calendar months (day clamped)."""
    index = moment.year * 12 + moment.month - 1 - months
    year, month0 = divmod(index, 12)
    day = moment.day
    while True:
        try:
            return moment.replace(year=year, month=month0 + 1, day=day)
        except ValueError:
            day -= 1


def format_ts(instant: int, utc: bool) -> str:
    """Epoch seconds as RFC 3339, either ``...Z`` or China time ``...+08:00``."""
    if utc:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant))
    return time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(instant + CST_OFFSET))


def business_instant(rng: random.Random, lo: int, hi: int) -> int:
    """A random instant in ``[lo, hi]``, mostly in China business hours."""
    raw = rng.randint(lo, hi)
    if rng.random() < 0.06:
        return raw
    midnight = (raw + CST_OFFSET) // DAY * DAY - CST_OFFSET
    moment = midnight + rng.randrange(8 * 3600, 21 * 3600)
    if moment > hi:
        moment -= DAY
    return moment if lo <= moment <= hi else raw


def money(rng: random.Random, cents: int) -> str | int | float:
    """Cents as a JSON money value: mostly a string, sometimes a number."""
    whole, frac = divmod(cents, 100)
    if rng.random() < 0.6:
        return str(whole) if frac == 0 and rng.random() < 0.3 else f"{whole}.{frac:02d}"
    return whole if frac == 0 else cents / 100


def lognormal_cents(rng: random.Random, median: float, sigma: float) -> int:
    """A positive log-normal amount in cents, rounded to whole CNY 30% of the time."""
    amount = min(rng.lognormvariate(math.log(median), sigma), 5_000_000.0)
    cents = max(1, round(amount * 100))
    if cents >= 1000 and rng.random() < 0.3:
        cents = round(cents, -2)
    return cents


# --------------------------------------------------------------------------
# customers


def customer_id(rng: random.Random, index: int) -> str:
    """A unique customer id: mostly ``C000123``, a few other legal spellings."""
    if rng.random() < 0.93:
        return f"C{index:06d}"
    pattern = rng.choice(("cn.sz:{:06d}", "B2B-{:06d}", "crm_{:06d}.hk", "ext:{:06d}-x"))
    return pattern.format(index)


def make_customer(rng: random.Random, index: int, win: Window) -> Customer:
    """One customer with a log-normal size and an active sub-window."""
    weight = rng.lognormvariate(0.0, 1.6)
    ticket = rng.lognormvariate(math.log(150.0), 0.7) * weight**0.55
    latest_start = max(win.lo, win.hi - 30 * DAY)
    start = win.lo if rng.random() < 0.55 else rng.randint(win.lo, latest_start)
    churn_from = min(start + 90 * DAY, win.hi)
    end = win.hi if rng.random() < 0.85 else rng.randint(churn_from, win.hi)
    credit = min(1.0, 0.05 + weight / 15.0)
    quality = rng.uniform(3.0, 9.0)
    return Customer(customer_id(rng, index), weight, ticket, start, end, credit, quality)


def pick_customers(
    rng: random.Random, customers: Sequence[Customer], cum: Sequence[float], k: int
) -> list[Customer]:
    """``k`` customers drawn with replacement by cumulative weights ``cum``."""
    return rng.choices(customers, cum_weights=cum, k=k)


def cumulative(values: Sequence[float]) -> list[float]:
    """Running sums of ``values``."""
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


# --------------------------------------------------------------------------
# sales, payments, refunds


def make_sales(rng: random.Random, buyers: Sequence[Customer], n_payments: int) -> list[Sale]:
    """Sales in time order; enough are on credit to back ``n_payments`` payments."""
    sales = [Sale(0, c, lognormal_cents(rng, c.ticket, 0.6)) for c in buyers]
    for sale in sales:
        sale.t = business_instant(rng, sale.customer.start, sale.customer.end)
    sales.sort(key=lambda s: s.t)
    propensity = sum(s.customer.credit for s in sales) or 1.0
    scale = n_payments * 0.82 / propensity
    number = 0
    for sale in sales:
        if rng.random() < sale.customer.credit * scale:
            number += 1
            sale.invoice = f"INV-{number:07d}"
    return sales


def sale_event(rng: random.Random, sale: Sale) -> Event:
    """The ``sale`` event of ``sale``, with an optional gross profit."""
    fields: dict[str, object] = {"amount": money(rng, sale.cents), "currency": CURRENCY}
    if sale.invoice is not None:
        fields["invoice_id"] = sale.invoice
    if rng.random() < 0.5:
        margin = 0.0 if rng.random() < 0.08 else rng.uniform(0.05, 0.4)
        fields["gross_profit"] = money(rng, int(sale.cents * margin))
    return (sale.t, "sale", sale.customer.cid, fields)


def split_cents(rng: random.Random, cents: int, parts: int) -> list[int]:
    """``cents`` split into ``parts`` positive pieces (fewer if too small)."""
    parts = max(1, min(parts, cents))
    cuts = sorted(rng.sample(range(1, cents), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, cents]
    return [b - a for a, b in itertools.pairwise(bounds)]


def instalments(rng: random.Random, cents: int) -> list[tuple[int, int]]:
    """2-3 instalments a month or so apart, the later ones sometimes late."""
    plan, offset = [], 0
    for piece in split_cents(rng, cents, rng.randint(2, 3)):
        offset += rng.randint(1 * DAY, 35 * DAY)
        if rng.random() < 0.15:
            offset += rng.randint(10 * DAY, 90 * DAY)
        plan.append((offset, piece))
    return plan


def payment_plan(rng: random.Random, cents: int) -> list[tuple[int, int]]:
    """(offset from the sale in seconds, cents) of one credit invoice's payments."""
    r = rng.random()
    if r < 0.50:
        plan = [(rng.randint(0, PAYMENT_TERMS), cents)]
    elif r < 0.72:
        plan = instalments(rng, cents)
    elif r < 0.87:
        plan = [(PAYMENT_TERMS + rng.randint(10 * DAY, 90 * DAY), cents)]
    elif r < 0.93:
        plan = instalments(rng, cents)[:-1]
    else:
        plan = []
    if plan and rng.random() < 0.02:
        plan[0] = (-rng.randint(3600, 5 * DAY), plan[0][1])
    return plan


def make_payments(
    rng: random.Random, sales: Sequence[Sale], budget: int, win: Window
) -> list[Event]:
    """Up to ``budget`` payments of credit invoices, oldest invoices first."""
    events: list[Event] = []
    for sale in sales:
        if sale.invoice is None:
            continue
        for offset, cents in payment_plan(rng, sale.cents):
            moment = max(sale.t + offset, win.lo)
            if moment > win.hi or len(events) >= budget:
                continue
            fields: dict[str, object] = {
                "invoice_id": sale.invoice,
                "amount": money(rng, cents),
                "currency": CURRENCY,
            }
            events.append((moment, "payment", sale.customer.cid, fields))
        if len(events) >= budget:
            break
    return events


def refund_event(rng: random.Random, sale: Sale, win: Window) -> Event:
    """A full or partial refund of ``sale`` within 45 days (never after as_of)."""
    cents = sale.cents if rng.random() < 0.45 else rng.randint(1, sale.cents)
    moment = sale.t + rng.randint(3600, 45 * DAY)
    if moment > win.hi:
        moment = rng.randint(sale.t, win.hi)
    fields: dict[str, object] = {"amount": money(rng, cents), "currency": CURRENCY}
    if sale.invoice is not None:
        fields["invoice_id"] = sale.invoice
    return (moment, "refund", sale.customer.cid, fields)


# --------------------------------------------------------------------------
# interactions, assessments, overrides, tickets


def interaction_event(rng: random.Random, customer: Customer) -> Event:
    """A visit, call, complaint, referral or survey, sometimes with a value."""
    kind = INTERACTION_KINDS[bisect_left(INTERACTION_CUM, rng.randint(1, 100))]
    fields: dict[str, object] = {"kind": kind}
    if kind == "survey" and rng.random() < 0.9:
        fields["value"] = rng.randint(1, 5)
    elif kind in ("visit", "call") and rng.random() < 0.3:
        fields["value"] = round(rng.uniform(2.0, 90.0), 1)
    elif kind in ("complaint", "referral") and rng.random() < 0.5:
        fields["value"] = rng.randint(1, 3)
    moment = business_instant(rng, customer.start, customer.end)
    return (moment, "interaction", customer.cid, fields)


def assessment_event(rng: random.Random, customer: Customer) -> Event:
    """A 0..10 score on one indicator, centred on the customer's quality."""
    score: float = min(10.0, max(0.0, rng.gauss(customer.quality, 1.5)))
    score = round(score) if rng.random() < 0.4 else round(score, 1)
    fields: dict[str, object] = {
        "indicator": rng.choice(INDICATORS),
        "score": score,
        "assessor": rng.choice(ASSESSORS),
    }
    moment = business_instant(rng, customer.start, customer.end)
    return (moment, "assessment", customer.cid, fields)


def override_episode(rng: random.Random, customer: Customer, win: Window) -> list[Event]:
    """A pin or blacklist, sometimes lifted later by an unpin or unblacklist."""
    start = business_instant(rng, customer.start, win.hi)
    base = {"reason": rng.choice(OVERRIDE_REASONS), "actor": rng.choice(ACTORS)}
    if rng.random() < 0.65:
        policy = rng.choice(tuple(POLICY_TIERS))
        first = {"action": "pin", "policy": policy, "tier": rng.choice(POLICY_TIERS[policy])}
        undo: dict[str, object] = {"action": "unpin", "policy": policy}
    else:
        first, undo = {"action": "blacklist"}, {"action": "unblacklist"}
    events: list[Event] = [(start, "override", customer.cid, {**first, **base})]
    lifted = start + rng.randint(7 * DAY, 300 * DAY)
    if rng.random() < 0.35 and lifted <= win.hi:
        undo |= {"reason": "review completed", "actor": rng.choice(ACTORS)}
        events.append((lifted, "override", customer.cid, undo))
    return events


def ticket_episode(rng: random.Random, customer: Customer, number: int, win: Window) -> list[Event]:
    """A ticket opened and, unless still open at as_of, closed 0-20 days later."""
    opened = business_instant(rng, customer.start, customer.end)
    fields: dict[str, object] = {"ticket_id": f"T-{number:06d}"}
    if rng.random() < 0.8:
        fields["queue"] = rng.choice(QUEUES)
    fields["subject"] = rng.choice(SUBJECTS)
    events: list[Event] = [(opened, "ticket_opened", customer.cid, fields)]
    closed = opened + rng.randint(600, 20 * DAY)
    if rng.random() < 0.85 and closed <= win.hi:
        events.append((closed, "ticket_closed", customer.cid, dict(fields)))
    return events


def fill(budget: int, episode: Callable[[int], list[Event]]) -> list[Event]:
    """Call ``episode(n)`` for n = 1, 2, ... until ``budget`` events are collected."""
    events: list[Event] = []
    number = 0
    while len(events) < budget:
        number += 1
        events.extend(episode(number))
    return events[:budget]


# --------------------------------------------------------------------------
# assembling the distinct events


def type_counts(n: int) -> dict[str, int]:
    """Number of distinct events per type; sales take the remainder."""
    counts = {etype: int(n * share) for etype, share in TYPE_SHARES.items()}
    counts["sale"] = n - sum(counts.values())
    return counts


def money_events(
    rng: random.Random, people: Sequence[Customer], counts: dict[str, int], win: Window
) -> list[Event]:
    """Sales, payments and refunds; unfilled payment slots become cash sales."""
    cum = cumulative([c.weight for c in people])
    sales = make_sales(rng, pick_customers(rng, people, cum, counts["sale"]), counts["payment"])
    payments = make_payments(rng, sales, counts["payment"], win)
    extra = pick_customers(rng, people, cum, counts["payment"] - len(payments))
    sales += make_sales(rng, extra, 0)
    refunded = rng.sample(sales, min(counts["refund"], len(sales)))
    refunds = [refund_event(rng, s, win) for s in refunded]
    return [sale_event(rng, s) for s in sales] + payments + refunds


def other_events(
    rng: random.Random, people: Sequence[Customer], counts: dict[str, int], win: Window
) -> list[Event]:
    """Interactions, assessments, overrides and tickets (sqrt-of-size weighted)."""
    cum = cumulative([math.sqrt(c.weight) for c in people])

    def pick(k: int) -> list[Customer]:
        """``k`` customers drawn by square-rooted size."""
        return pick_customers(rng, people, cum, k)

    events = [interaction_event(rng, c) for c in pick(counts["interaction"])]
    events += [assessment_event(rng, c) for c in pick(counts["assessment"])]
    events += fill(counts["override"], lambda _n: override_episode(rng, pick(1)[0], win))
    events += fill(counts["ticket"], lambda n: ticket_episode(rng, pick(1)[0], n, win))
    return events


def to_record(rng: random.Random, number: int, width: int, event: Event) -> dict[str, object]:
    """An event as the JSON object of one line (common fields first)."""
    moment, etype, cid, fields = event
    record: dict[str, object] = {
        "event_id": f"e-{number:0{width}d}",
        "type": etype,
        "customer_id": cid,
        "occurred_at": format_ts(moment, rng.random() < 0.35),
    }
    record.update(fields)
    return record


# --------------------------------------------------------------------------
# bad lines: each takes a valid record and returns one defective line


def bad_json(rng: random.Random, record: dict[str, object]) -> bytes:
    """Invalid JSON: the line cut off part way (a proper prefix of an object)."""
    line = orjson.dumps(record)
    return line[: rng.randint(len(line) // 3, len(line) - 1)]


def missing_field(rng: random.Random, record: dict[str, object]) -> bytes:
    """A required field (common or type-specific) removed."""
    required = [k for k in REQUIRED_FIELDS if k in record]
    if record["type"] == "payment":
        required.append("invoice_id")
    dropped = rng.choice(required)
    return orjson.dumps({k: v for k, v in record.items() if k != dropped})


def unknown_type(rng: random.Random, record: dict[str, object]) -> bytes:
    """A ``type`` the grader does not know."""
    return orjson.dumps({**record, "type": rng.choice(UNKNOWN_TYPES)})


def wrong_currency(_rng: random.Random, record: dict[str, object]) -> bytes:
    """A money event in USD."""
    return orjson.dumps({**record, "currency": "USD"})


def three_decimals(rng: random.Random, record: dict[str, object]) -> bytes:
    """An amount with three decimals, as a string or a number."""
    text = f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}{rng.randint(1, 9)}"
    return orjson.dumps({**record, "amount": text if rng.random() < 0.5 else float(text)})


def negative_amount(rng: random.Random, record: dict[str, object]) -> bytes:
    """A negative amount, as a string or a number."""
    text = f"-{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}"
    return orjson.dumps({**record, "amount": text if rng.random() < 0.5 else float(text)})


def naive_timestamp(_rng: random.Random, record: dict[str, object]) -> bytes:
    """``occurred_at`` without its offset."""
    return orjson.dumps({**record, "occurred_at": str(record["occurred_at"])[:19]})


def spaced_customer(rng: random.Random, record: dict[str, object]) -> bytes:
    """A ``customer_id`` containing a space."""
    cid = str(record["customer_id"])
    cut = rng.randint(1, len(cid) - 1)
    return orjson.dumps({**record, "customer_id": f"{cid[:cut]} {cid[cut:]}"})


Defect = Callable[[random.Random, dict[str, object]], bytes]
GENERIC_DEFECTS: tuple[Defect, ...] = (
    bad_json,
    missing_field,
    unknown_type,
    naive_timestamp,
    spaced_customer,
)
MONEY_DEFECTS: tuple[Defect, ...] = (
    *GENERIC_DEFECTS,
    wrong_currency,
    three_decimals,
    negative_amount,
)


def corrupt(rng: random.Random, record: dict[str, object]) -> bytes:
    """One bad line made from ``record`` (money defects only for money events)."""
    defects = MONEY_DEFECTS if "amount" in record else GENERIC_DEFECTS
    return rng.choice(defects)(rng, record)


# --------------------------------------------------------------------------
# the public API


def line_budget(events: int, duplicates: float, bad: float) -> tuple[int, int]:
    """(duplicate lines, bad lines) out of ``events`` lines in total."""
    if events < 0 or not 0 <= duplicates < 1 or not 0 <= bad < 1 or duplicates + bad >= 1:
        raise ValueError("need events >= 0, 0 <= duplicates, bad and duplicates + bad < 1")
    n_dup = min(round(events * duplicates), max(events - 1, 0))
    n_bad = min(round(events * bad), events - n_dup)
    return n_dup, n_bad


def distinct_items(
    rng: random.Random, people: Sequence[Customer], n: int, n_bad: int, win: Window
) -> list[Item]:
    """``n`` distinct items in time order: valid records, and ``n_bad`` bad lines."""
    counts = type_counts(n)
    events = money_events(rng, people, counts, win)
    events += other_events(rng, people, counts, win)
    events.sort(key=lambda e: e[0])
    width = max(6, len(str(n)))
    records = [to_record(rng, i, width, e) for i, e in enumerate(events, 1)]
    bad_at = set(rng.sample(range(len(records)), min(n_bad, len(records))))
    return [corrupt(rng, r) if i in bad_at else r for i, r in enumerate(records)]


def interleave(rng: random.Random, items: Sequence[Item], n_dup: int) -> Iterator[bytes]:
    """Serialize ``items`` lazily, adding ``n_dup`` re-sends of recent valid lines.

    Lines are produced one at a time on purpose: keeping ~10^5 separate bytes
    objects alive is several times slower than the serialization itself.
    """
    total = len(items) + n_dup
    dup_at = set(rng.sample(range(1, total), n_dup)) if n_dup else set()
    recent: deque[bytes] = deque(maxlen=RECENT_LINES)
    source = iter(items)
    line = b""
    for position in range(total):
        if position in dup_at:
            back = min(int(rng.expovariate(1 / 300)), len(recent) - 1)
            yield recent[-1 - back] if recent else line
            continue
        item = next(source)
        line = item if isinstance(item, bytes) else orjson.dumps(item)
        if not isinstance(item, bytes):
            recent.append(line)
        yield line


def generate(
    customers: int,
    events: int,
    seed: int,
    as_of: str | datetime,
    *,
    duplicates: float = 0.02,
    bad: float = 0.005,
    shuffle: bool = True,
    months: int = 36,
) -> Iterator[bytes]:
    """Yield exactly ``events`` JSON lines (bytes, no trailing newline).

    Deterministic for equal arguments.  Dates lie in ``[as_of - months, as_of]``;
    ``duplicates`` and ``bad`` are fractions of all lines; with ``shuffle`` the
    lines are in random order, otherwise in time order (re-sends come later).
    Raises ValueError for impossible arguments (checked on call, not on iteration).
    """
    if customers < 1 or months < 1:
        raise ValueError("need customers >= 1 and months >= 1")
    n_dup, n_bad = line_budget(events, duplicates, bad)
    end = parse_as_of(as_of)
    win = Window(int(months_before(end, months).timestamp()), int(end.timestamp()))
    rng = random.Random(seed)
    people = [make_customer(rng, i, win) for i in range(1, customers + 1)]
    items = distinct_items(rng, people, events - n_dup, n_bad, win)
    if shuffle:
        rng.shuffle(items)
    return interleave(rng, items, n_dup)


# --------------------------------------------------------------------------
# command line

CLI_OPTIONS: tuple[tuple[str, type, object, str], ...] = (
    ("--customers", int, 30_000, "number of customers"),
    ("--events", int, 200_000, "number of lines in total, re-sends and bad lines included"),
    ("--seed", int, 1, "random seed"),
    ("--as-of", str, "2026-11-22T00:00:00+08:00", "latest instant, RFC 3339 with offset"),
    ("--months", int, 36, "months of history before --as-of"),
    ("--duplicates", float, 0.02, "fraction of lines that re-send an earlier line"),
    ("--bad", float, 0.005, "fraction of bad lines"),
    ("--out", str, "-", "output file, '-' for stdout"),
)
"""(flag, type, default, help) of the plain command-line options."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options (see ``CLI_OPTIONS``)."""
    parser = argparse.ArgumentParser(description="Generate a synthetic grader events file.")
    for flag, kind, default, text in CLI_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    parser.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lines in random order rather than time order (default on)",
    )
    return parser.parse_args(argv)


def write_lines(lines: Iterator[bytes], handle: BinaryIO) -> tuple[int, int]:
    """Write ``lines`` newline-terminated to ``handle``; return (lines, bytes)."""
    count = size = 0
    for line in lines:
        handle.write(line)
        handle.write(b"\n")
        count += 1
        size += len(line) + 1
    return count, size


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the file and print a one-line summary to stderr."""
    args = parse_args(argv)
    started = time.perf_counter()
    options = {k: getattr(args, k) for k in ("duplicates", "bad", "shuffle", "months")}
    try:
        lines = generate(args.customers, args.events, args.seed, args.as_of, **options)
    except ValueError as exc:
        print(f"generate_events: {exc}", file=sys.stderr)
        return 2
    if args.out == "-":
        count, size = write_lines(lines, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with open(args.out, "wb") as handle:
            count, size = write_lines(lines, handle)
    elapsed = time.perf_counter() - started
    summary = f"{count} lines, {size} bytes, {elapsed:.2f} s -> {args.out}"
    print(f"generate_events: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
