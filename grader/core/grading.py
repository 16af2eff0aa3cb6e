"""The one step: apply an event or a clock tick to one customer -> outputs.

apply_event() and apply_tick() are what `grader replay` and the streaming
worker both call; nothing about grading lives anywhere else. They update the
CustomerState they are given (and return it) and produce tier changes. No I/O.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

from grader.core.clock import format_instant, local_month, month_start
from grader.core.events import TICKET_TYPES, Event, ParseContext, content_digest
from grader.core.metrics import MetricView
from grader.core.policy import Policy
from grader.core.rational import Ratio, display
from grader.core.scoring import ScoreMemo, rescore
from grader.core.state import CustomerState, TierState, prune, record
from grader.core.tiering import decide

TIER_CHANGE_NAMESPACE = uuid.UUID("6f1c2b0e-6a43-4d0c-9a57-3f1f0c2d7e11")
_NAMESPACE_BYTES = TIER_CHANGE_NAMESPACE.bytes


@dataclass(frozen=True)
class Grading:
    """The active policies and what follows from them; built once at start-up."""

    policies: tuple[Policy, ...]
    currency: str = field(init=False)
    timezones: tuple[str, ...] = field(init=False)
    longest_window_by_tz: tuple[tuple[str, int], ...] = field(init=False)
    tiers_by_policy: dict[str, tuple[str, ...]] = field(init=False, compare=False)
    signature: dict[str, tuple[str, str]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("at least one policy must be active")
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must be unique, got {', '.join(names)}")
        currencies = sorted({p.currency for p in self.policies})
        if len(currencies) > 1:
            raise ValueError(
                f"active policies must share one currency, got {', '.join(currencies)}"
            )
        object.__setattr__(self, "currency", currencies[0])
        object.__setattr__(self, "timezones", tuple(sorted({p.timezone for p in self.policies})))
        # What a customer graded under these policies records (state.graded_under): a
        # customer whose record differs is graded again (a roll-out, docs/policies.md).
        object.__setattr__(self, "signature",
                           {p.name: (p.version, p.digest) for p in self.policies})
        longest = {
            tz: max(p.longest_window for p in self.policies if p.timezone == tz)
            for tz in self.timezones
        }
        object.__setattr__(self, "longest_window_by_tz", tuple(longest.items()))
        object.__setattr__(self, "tiers_by_policy", {p.name: p.tier_names for p in self.policies})

    def parse_context(self, now_us: int | None = None) -> ParseContext:
        """What event validation needs; ``now_us`` set in live mode."""
        return ParseContext(self.currency, self.tiers_by_policy, now_us)

    def horizon(self, as_of: int) -> tuple[int, int]:
        """The horizon as of ``as_of``, and the instant until which it stays the same.

        The horizon is the first instant of the longest window any policy
        uses; it moves only when as_of enters a new local month in some
        policy's timezone.
        """
        horizon = until = None
        for tz, longest in self.longest_window_by_tz:
            month = local_month(as_of, tz)
            start = month_start(month - longest + 1, tz)
            next_month = month_start(month + 1, tz)
            horizon = start if horizon is None else min(horizon, start)
            until = next_month if until is None else min(until, next_month)
        assert horizon is not None and until is not None
        return horizon, until


@dataclass(slots=True)
class StepResult:
    """What one step did: ``status`` and the tier changes it produced."""

    state: CustomerState
    status: str  # "applied" | "duplicate" | "expired" | "ignored"
    changes: list[dict[str, Any]] = field(default_factory=list)
    snapshot_changed: bool = False
    conflict: bool = False  # a duplicate whose content differs from the event applied
    support_changed: bool = False  # write the customer's support-queue keys (Redis) again


def new_state(customer_id: str) -> CustomerState:
    """A customer never seen before."""
    return CustomerState(customer_id)


def apply_event(state: CustomerState, event: Event, grading: Grading, now_us: int) -> StepResult:
    """Apply one valid event (``now_us`` is the wall clock, for ``emitted_at``)."""
    if event.event_id in state.seen:
        known = state.digests.get(event.event_id)
        conflict = known is not None and known != content_digest(event)
        return StepResult(state, "duplicate", conflict=conflict)
    if event.ts < state.horizon:
        return StepResult(state, "expired")
    if event.type in TICKET_TYPES:  # tickets order support queues: no grade, no as_of
        record(state, event, grading.timezones)
        return StepResult(state, "applied", support_changed=True)
    blacklisted = state.blacklisted
    record(state, event, grading.timezones)
    _advance(state, event.ts, grading)
    kind = "override" if event.type == "override" else "event"
    changes, changed = regrade(state, grading, {"kind": kind, "event_id": event.event_id}, now_us)
    # Every customer with a state has its Redis keys (as redis-sync writes them): so any
    # applied event writes its customer, not only one that changed a tier.
    changed = changed or blacklisted != state.blacklisted
    return StepResult(state, "applied", changes, changed, support_changed=True)


def apply_tick(state: CustomerState, as_of: int, grading: Grading, now_us: int) -> StepResult:
    """Re-grade as of ``as_of`` (a clock tick); as_of never moves backwards."""
    _advance(state, as_of, grading)
    changes, changed = regrade(state, grading, {"kind": "clock"}, now_us)
    return StepResult(state, "applied", changes, changed, support_changed=changed)


def policy_stale(state: CustomerState, grading: Grading) -> bool:
    """Whether the customer was graded under other policies (versions, contents) than these."""
    return state.graded and state.graded_under != grading.signature


def apply_policy(state: CustomerState, grading: Grading, now_us: int) -> StepResult:
    """Grade again under the active policies after a roll-out; as_of does not move.

    Tiers of policies no longer active leave the state (so the snapshot and
    Redis); a tier that changes is a tier change with cause ``policy``.
    """
    removed = [name for name in state.tiers if name not in grading.signature]
    for name in removed:
        del state.tiers[name]
    changes, changed = regrade(state, grading, {"kind": "policy"}, now_us)
    changed = changed or bool(removed)
    return StepResult(state, "applied", changes, changed, support_changed=changed)


def _advance(state: CustomerState, ts: int, grading: Grading) -> None:
    if ts <= state.as_of:
        return
    state.as_of = ts
    if ts < state.horizon_until:
        return
    horizon, state.horizon_until = grading.horizon(ts)
    if horizon > state.horizon:
        state.horizon = horizon
        prune(state, horizon)


def regrade(
    state: CustomerState, grading: Grading, cause: dict[str, Any], now_us: int
) -> tuple[list[dict[str, Any]], bool]:
    """Score the customer under every policy and decide its tiers.

    Returns the tier changes and whether the customer's snapshot (any tier or
    pinned flag) changed.
    """
    if not state.graded:
        return [], False
    if state.graded_under != grading.signature:
        state.graded_under = dict(grading.signature)
    views = {tz: MetricView(state, tz) for tz in grading.timezones}
    changes: list[dict[str, Any]] = []
    snapshot_changed = False
    for policy in grading.policies:
        view = views[policy.timezone]
        memo = _memo(state, policy)
        value = rescore(policy, view, memo)
        current = state.tiers.get(policy.name)
        change = _decide(state, policy, current, value, memo.tier, view)
        if change is None:
            assert current is not None
            current.score = value
            continue
        new, direction = change
        snapshot_changed = True
        if direction is not None:
            changes.append(
                _change_record(state, policy, current, new, direction, memo, cause, now_us)
            )
        state.tiers[policy.name] = new
    return changes, snapshot_changed


def _memo(state: CustomerState, policy: Policy) -> ScoreMemo:
    """The customer's scoring memo for ``policy`` (a new one for a new policy object)."""
    memo: ScoreMemo | None = state.memo.get(policy.name)
    if memo is None or memo.policy is not policy:
        memo = state.memo[policy.name] = ScoreMemo(policy)
    return memo


def _decide(
    state: CustomerState,
    policy: Policy,
    current: TierState | None,
    value: Ratio,
    earned: str,
    view: MetricView,
) -> tuple[TierState, str | None] | None:
    """The new TierState and direction, or None when nothing but the score moved.

    ``earned`` is the tier ``value`` earns.
    """
    pin = state.pinned_tier(policy.name)
    if current is not None and pin is None and not current.pinned and earned == current.tier:
        return None  # the usual case, what decide() says too: the score still earns the tier
    previous = current
    if current is not None and current.tier not in policy.tier_names:
        current = None  # a new policy version dropped this tier: grade afresh
    # The days since the last change matter only to a minimum number of days in a tier.
    days = (
        view.days_since(current.changed_at)
        if current is not None and policy.min_days_in_tier
        else 0
    )
    decision = decide(policy, current, value, pin, days)
    if decision.direction is None:
        assert previous is not None
        if decision.pinned == previous.pinned:
            return None
        return TierState(
            previous.tier, value, previous.sequence, previous.changed_at, decision.pinned
        ), None
    sequence = previous.sequence + 1 if previous is not None else 1
    return TierState(
        decision.tier, value, sequence, state.as_of, decision.pinned
    ), decision.direction


def _change_record(
    state: CustomerState,
    policy: Policy,
    previous: TierState | None,
    new: TierState,
    direction: str,
    memo: ScoreMemo,
    cause: dict[str, Any],
    now_us: int,
) -> dict[str, Any]:
    keys = policy.line_keys
    return {
        "event_id": tier_change_id(state.customer_id, policy.name, new.sequence),
        "customer_id": state.customer_id,
        "policy": policy.name,
        "policy_version": policy.version,
        "from_tier": previous.tier if previous is not None else None,
        "to_tier": new.tier,
        "direction": direction,
        "score": display(new.score),
        "previous_score": display(previous.score) if previous is not None else None,
        "breakdown": dict(zip(keys, map(display, memo.points), strict=True)),
        "metrics": dict(zip(keys, map(_shown, memo.values), strict=True)),
        "cause": cause,
        "as_of": format_instant(state.as_of),
        "emitted_at": _emitted_at(now_us),
        "sequence": new.sequence,
    }


@lru_cache(maxsize=4)
def _emitted_at(now_us: int) -> str:
    return format_instant(now_us)  # one wall-clock instant for many changes


def _shown(value: Ratio | None) -> float | int | None:
    return None if value is None else display(value)


def tier_change_id(customer_id: str, policy: str, sequence: int) -> str:
    """The deterministic id of a tier change: a UUIDv5 of (customer, policy, sequence).

    Computed as RFC 4122 section 4.3 says (what uuid.uuid5 does, without its overhead).
    """
    name = f"{customer_id}\x1f{policy}\x1f{sequence}".encode()
    h = hashlib.sha1(_NAMESPACE_BYTES + name).hexdigest()
    # The version nibble becomes 5; the variant bits of the next group's first nibble 10.
    variant = "89ab"[int(h[16], 16) & 0x3]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def snapshot(state: CustomerState) -> dict[str, Any]:
    """The customer-tiers message: every current tier and the blacklist flag."""
    return {
        "customer_id": state.customer_id,
        "blacklisted": state.blacklisted,
        "as_of": format_instant(state.as_of),
        "tiers": {
            name: {
                "tier": t.tier,
                "score": display(t.score),
                "sequence": t.sequence,
                "pinned": t.pinned,
                **risk_fields(state, name),
            }
            for name, t in sorted(state.tiers.items())
        },
    }


def risk_fields(state: CustomerState, policy: str) -> dict[str, str | None]:
    """``{"drops_on": "YYYY-MM-DD" | None, "to_tier": ...}`` of one policy, as last computed
    (grader.core.risk.refresh_risk); both None before that."""
    risk = state.risk.get(policy)
    if risk is None or risk.drops_on is None:
        return {"drops_on": None, "to_tier": None}
    return {"drops_on": date.fromordinal(risk.drops_on).isoformat(), "to_tier": risk.to_tier}
