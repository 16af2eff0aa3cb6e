"""The tier at risk kept with a customer: drops_on/to_tier per policy, and tier warnings.

refresh_risk() is called once a customer's state has changed (by `grader
replay` after the final tick, by the worker once per batch for each customer
the batch stored): it computes drops_on (grader.core.atrisk) under every active
policy, keeps it in ``state.risk`` (the codec stores it), and returns the
tier warnings due (GRADING.md section 5, ``tier-warnings``): one when the
drop date is at most ``warn_days`` local days after the local date of
``as_of``, once per (customer, policy, drops_on). The drop dates warned
about are kept in the state (``Risk.warned``), so a warning survives a crash
or a rebalance of the worker exactly as the state does; a date on or before
as_of's date can never be a drop date again and is forgotten.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

from grader.core.atrisk import kept_drops_on
from grader.core.clock import format_instant, local_day
from grader.core.grading import Grading
from grader.core.metrics import Window
from grader.core.policy import Policy
from grader.core.state import CustomerState, Risk

WARNING_NAMESPACE = uuid.UUID("0b7d5f0e-2f4e-4b9a-8d51-6a3c1e9f4d27")


def refresh_risk(state: CustomerState, grading: Grading, warn_days: int,
                 now_us: int) -> tuple[bool, list[dict[str, Any]]]:
    """Compute the customer's drops_on and to_tier under every policy into ``state.risk``.

    Returns whether any of them changed (so its customer-tiers record changes) and
    the tier-warning records due. ``warn_days`` 0: no warnings.
    """
    changed = False
    warnings: list[dict[str, Any]] = []
    for name in [p for p in state.risk if p not in state.tiers]:
        del state.risk[name]  # a policy no longer active (or never graded under)
        changed = True
    windows: dict[str, dict[int, dict[int, Window]]] = {}  # by timezone: shared by the walks
    for policy in grading.policies:
        if policy.name not in state.tiers:
            continue
        shared = windows.get(policy.timezone)
        if shared is None:
            shared = windows[policy.timezone] = {}
        day, to_tier = kept_drops_on(state, policy, shared)
        drop = None if day is None else day.toordinal()
        risk = state.risk.get(policy.name)
        if risk is None:
            risk = state.risk[policy.name] = Risk()
            changed = True
        if risk.drops_on != drop or risk.to_tier != to_tier:
            risk.drops_on, risk.to_tier = drop, to_tier
            changed = True
        if warn_days:
            warning = _warning(state, policy, risk, warn_days, now_us)
            if warning is not None:
                warnings.append(warning)
    return changed, warnings


def _warning(state: CustomerState, policy: Policy, risk: Risk, warn_days: int,
             now_us: int) -> dict[str, Any] | None:
    """The warning due for ``risk`` (and it is noted as warned), else None."""
    today = local_day(state.as_of, policy.timezone)
    if risk.warned and risk.warned[0] <= today:
        risk.warned = [d for d in risk.warned if d > today]
    drop = risk.drops_on
    if drop is None or drop - today > warn_days or drop in risk.warned:
        return None
    risk.warned.append(drop)
    risk.warned.sort()
    on = date.fromordinal(drop).isoformat()
    return {
        "event_id": warning_id(state.customer_id, policy.name, on),
        "customer_id": state.customer_id,
        "policy": policy.name,
        "tier": state.tiers[policy.name].tier,
        "to_tier": risk.to_tier,
        "drops_on": on,
        "as_of": format_instant(state.as_of),
        "emitted_at": format_instant(now_us),
    }


def warning_id(customer_id: str, policy: str, drops_on: str) -> str:
    """The id of a tier warning: a UUIDv5 of (customer, policy, drops_on "YYYY-MM-DD")."""
    return str(uuid.uuid5(WARNING_NAMESPACE, f"{customer_id}\x1f{policy}\x1f{drops_on}"))


