"""Live sample events for `grader dev`: a few customers whose behaviour drifts.

A simulated clock starts ``days_back`` days ago and runs ``days_per_second``
times faster than real time until it reaches the wall clock (never past it),
so within minutes the windows fill, invoices age and tiers move. Each
customer has a spending level and a payment habit; some drift up or down.
Customers open support tickets in two queues (``billing``, ``tech``), closed
a few simulated days later. At the start, the second customer is
blacklisted and the third pinned (``pin``: a policy and one of its tiers).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from grader.core.clock import US_PER_SECOND, format_instant

DAY_US = 86_400 * US_PER_SECOND


@dataclass
class _Customer:
    customer_id: str
    monthly: float  # typical monthly spend, CNY
    pay_days: int  # typical days to pay an invoice
    drift: float  # monthly spend multiplier applied every simulated month
    open_invoices: list[tuple[int, str, int]] = field(default_factory=list)  # due_us, id, cents
    open_tickets: list[tuple[int, str, str]] = field(default_factory=list)  # close_us, id, queue


QUEUES = ("billing", "tech")
SUBJECTS = {"billing": ("invoice copy", "wrong amount", "payment terms"),
            "tech": ("login fails", "export broken", "slow reports")}


class LiveSample:
    """An endless, seeded stream of valid events (dicts) with a simulated clock."""

    def __init__(self, customers: int = 12, seed: int = 7, days_back: int = 330,
                 days_per_second: float = 4.0, pin: tuple[str, str] | None = None,
                 ticket_rate: float = 0.05) -> None:
        self.rng = random.Random(seed)
        self.days_per_second = days_per_second
        self.days_back = days_back
        self.customers = [self._customer(i) for i in range(customers)]
        self.serial = 0
        self.pin = pin
        self.ticket_rate = ticket_rate  # per customer and step
        self.started = False

    def _customer(self, i: int) -> _Customer:
        rng = self.rng
        return _Customer(f"DEV-{i + 1:03d}", monthly=rng.choice([800, 4000, 9000, 15000, 26000]),
                         pay_days=rng.choice([0, 10, 25, 40, 55, 80]),
                         drift=rng.choice([0.85, 0.95, 1.0, 1.0, 1.08, 1.2]))

    def events(self, start_us: int, now_us: int) -> Iterator[dict[str, Any]]:
        """Events up to simulated time for wall-clock ``now_us`` (started at ``start_us``)."""
        elapsed_days = (now_us - start_us) / US_PER_SECOND * self.days_per_second
        sim = min(now_us, start_us - self.days_back * DAY_US + int(elapsed_days * DAY_US))
        if not self.started:
            self.started = True
            yield from self._overrides(sim)
        yield from self._due_payments(sim)
        yield from self._due_closes(sim)
        for customer in self.customers:
            if self.rng.random() < 0.08:
                yield self._activity(customer, sim)
            if self.rng.random() < self.ticket_rate:
                yield self._ticket(customer, sim)

    def _overrides(self, sim: int) -> Iterator[dict[str, Any]]:
        if len(self.customers) > 1:
            yield self._event(self.customers[1], "override", sim, action="blacklist",
                              reason="unpaid since last year", actor="credit-dev")
        if len(self.customers) > 2 and self.pin is not None:
            policy, tier = self.pin
            yield self._event(self.customers[2], "override", sim, action="pin", policy=policy,
                              tier=tier, reason="strategic account", actor="kam-dev")

    def _ticket(self, c: _Customer, sim: int) -> dict[str, Any]:
        queue = self.rng.choice(QUEUES)
        self.serial += 1
        ticket_id = f"T-{self.serial:06d}"
        close = sim + int(self.rng.uniform(3, 20) * DAY_US)
        c.open_tickets.append((close, ticket_id, queue))
        return self._event(c, "ticket_opened", sim, ticket_id=ticket_id, queue=queue,
                           subject=self.rng.choice(SUBJECTS[queue]))

    def _due_closes(self, sim: int) -> Iterator[dict[str, Any]]:
        for c in self.customers:
            for due in [t for t in c.open_tickets if t[0] <= sim]:
                c.open_tickets.remove(due)
                yield self._event(c, "ticket_closed", due[0], ticket_id=due[1], queue=due[2])

    def _due_payments(self, sim: int) -> Iterator[dict[str, Any]]:
        for c in self.customers:
            for due in [inv for inv in c.open_invoices if inv[0] <= sim]:
                c.open_invoices.remove(due)
                yield self._event(c, "payment", due[0], invoice_id=due[1],
                                  amount=f"{due[2] // 100}.{due[2] % 100:02d}", currency="CNY")

    def _activity(self, c: _Customer, sim: int) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.7:
            return self._sale(c, sim)
        if roll < 0.85:
            kind = self.rng.choice(["visit", "call", "referral", "complaint"])
            return self._event(c, "interaction", sim, kind=kind)
        return self._event(c, "assessment", sim, indicator=self.rng.choice(["C1", "C2", "D1"]),
                           score=self.rng.randint(3, 10), assessor="kam-dev")

    def _sale(self, c: _Customer, sim: int) -> dict[str, Any]:
        c.monthly *= c.drift ** 0.1
        cents = max(100, int(self.rng.lognormvariate(0, 0.4) * c.monthly * 100 / 3))
        fields: dict[str, Any] = {"amount": f"{cents // 100}.{cents % 100:02d}", "currency": "CNY",
                                  "gross_profit": f"{cents // 500}.00"}
        if c.pay_days and self.rng.random() < 0.7:
            self.serial += 1
            invoice = f"{c.customer_id}-INV{self.serial}"
            fields["invoice_id"] = invoice
            due = sim + int(self.rng.gauss(c.pay_days, 5) * DAY_US)
            c.open_invoices.append((max(sim, due), invoice, cents))
        return self._event(c, "sale", sim, **fields)

    def _event(self, c: _Customer, etype: str, ts: int, **fields: Any) -> dict[str, Any]:
        self.serial += 1
        return {"event_id": f"dev-{self.serial:08d}", "type": etype,
                "customer_id": c.customer_id, "occurred_at": format_instant(ts), **fields}
