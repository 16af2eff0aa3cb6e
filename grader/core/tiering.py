"""Tier decisions: initial, up, down (with margin and minimum days), pins.

decide() is the whole state machine. Upgrades are immediate; a demotion
happens only when the score is below the current tier's minimum minus the
downgrade margin and at least ``min_days_in_tier`` local days have passed
since the last change, and then goes straight to the tier the score earns.
A pin sets the tier until unpinned; after an unpin the tier is what the score
earns, at once (the margin protects an earned tier, not a pinned one).
"""

from __future__ import annotations

from dataclasses import dataclass

from grader.core.policy import Policy
from grader.core.rational import Ratio
from grader.core.scoring import admits, earned_tier
from grader.core.state import TierState


@dataclass(frozen=True, slots=True)
class Decision:
    """The tier to hold now, whether it is pinned, and the change's direction."""

    tier: str
    pinned: bool
    direction: str | None  # "initial" | "up" | "down", None when the tier stays


def decide(
    policy: Policy, current: TierState | None, score: Ratio, pin: str | None, days_since_change: int
) -> Decision:
    """Decide the tier under ``policy`` for ``score``."""
    if pin is not None:
        tier, pinned = pin, True
    else:
        tier, pinned = _unpinned(policy, current, score, days_since_change), False
    if current is None:
        return Decision(tier, pinned, "initial")
    if tier == current.tier:
        return Decision(tier, pinned, None)
    up = policy.rank(tier) < policy.rank(current.tier)
    return Decision(tier, pinned, "up" if up else "down")


def _unpinned(
    policy: Policy, current: TierState | None, score: Ratio, days_since_change: int
) -> str:
    earned = earned_tier(policy, score)
    if current is None or current.pinned or policy.rank(earned) <= policy.rank(current.tier):
        return earned
    minimum = policy.tiers[policy.rank(current.tier)].minimum
    assert minimum is not None  # a worse tier exists, so the current one has a minimum
    if admits(minimum, score, policy.downgrade_margin):
        return current.tier
    if days_since_change < policy.min_days_in_tier:
        return current.tier
    return earned
