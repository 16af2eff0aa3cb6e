"""The body of ``GET /customers/{customer_id}``: one customer's grades, from its state (pure).

For each active policy: the tier, its score rounded to 2 decimals as
GRADING.md section 5 reports scores (half away from zero, like the
tier-change records) and the exact score that decided it (a fraction
string, ``"1703/20"``), the
points per line and the metric values behind them as of the customer's
``as_of``, whether the tier is pinned, its sequence, and its tier at risk
(``drops_on``, ``to_tier``: as the worker last computed them, grader.core.risk). Then the blacklist
flag, the override audit trail and ``as_of``. Amounts and scores are
confidential (GRADING.md section 7): they leave only through this endpoint,
never through a log line.
"""

from __future__ import annotations

import re
from typing import Any

from grader.core.clock import NEVER, format_instant
from grader.core.grading import Grading, risk_fields
from grader.core.metrics import MetricView
from grader.core.rational import display, to_fraction
from grader.core.scoring import ScoreMemo, rescore
from grader.core.state import CustomerState

#: What a caller of scope ``tier`` sees (GRADING.md section 7), a whitelist: of the body,
#: and of each policy's entry. Scores, breakdown, metrics and the override trail are
#: never in it; a field the body gains is not shown to a tier caller until named here.
TIER_SCOPE_FIELDS = ("customer_id", "graded", "blacklisted", "as_of", "policies")
TIER_SCOPE_POLICY_FIELDS = ("tier", "pinned", "drops_on", "to_tier")

#: GRADING.md section 1: 1..64 chars of [A-Za-z0-9._:-].
CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)


def customer_document(state: CustomerState, grading: Grading) -> dict[str, Any]:
    """The JSON object served for ``state``'s customer."""
    policies: dict[str, Any] = {}
    if state.graded:
        views = {tz: MetricView(state, tz) for tz in grading.timezones}
        for policy in grading.policies:
            tier = state.tiers.get(policy.name)
            if tier is None:
                continue
            memo = ScoreMemo(policy)
            rescore(policy, views[policy.timezone], memo)
            keys = policy.line_keys
            policies[policy.name] = {
                "policy_version": policy.version,
                "tier": tier.tier,
                "score": display(tier.score),
                "score_exact": str(to_fraction(tier.score)),
                "breakdown": dict(zip(keys, map(display, memo.points), strict=True)),
                "metrics": {k: None if v is None else display(v)
                            for k, v in zip(keys, memo.values, strict=True)},
                "pinned": tier.pinned,
                "sequence": tier.sequence,
                "changed_at": format_instant(tier.changed_at),
                **risk_fields(state, policy.name),
            }
    return {
        "customer_id": state.customer_id,
        "graded": state.graded,
        "blacklisted": state.blacklisted,
        "as_of": None if state.as_of == NEVER else format_instant(state.as_of),
        "policies": policies,
        "overrides": [
            {"action": a["action"], "policy": a["policy"], "tier": a["tier"],
             "actor": a["actor"], "reason": a["reason"], "occurred_at": a["occurred_at"],
             "event_id": a["event_id"]}
            for a in state.audit
        ],
    }


def tier_scope(document: dict[str, Any]) -> dict[str, Any]:
    """The part of a customer document that a caller of scope ``tier`` sees: the fields of
    TIER_SCOPE_FIELDS and, per policy, those of TIER_SCOPE_POLICY_FIELDS that it has."""
    shown = {key: document[key] for key in TIER_SCOPE_FIELDS if key in document}
    shown["policies"] = {
        name: {key: grade[key] for key in TIER_SCOPE_POLICY_FIELDS if key in grade}
        for name, grade in document.get("policies", {}).items()
    }
    return shown
