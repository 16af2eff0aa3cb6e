"""`grader whatif`: what a candidate policy would do to the population, before it goes live.

The events file is graded by `grader replay`'s own code under each policy
separately (the candidate is typically the next version of the current
policy, with the same name, so the two cannot be one Grading). From the
two sets of tiers:

- ``matrix.csv``: ``current_tier,candidate_tier,customers``, one row per pair
  with at least one customer, in the current policy's tier order, then the
  candidate's;
- ``movers.csv``: ``customer_id,current_tier,candidate_tier,current_score,
  candidate_score`` for every customer whose tier differs, by customer id;
- ``at-risk.csv``: the candidate's tiers that would drop, as `grader replay`
  writes them (GRADING.md section 4);
- on the terminal: the matrix, each tier's population under each policy,
  how many customers go up, down or stay, and how many customers' tiers
  would drop within 30 and 90 days under each policy. Where both policies have the
  same tier names a move is judged by the candidate's tier order (best
  first); otherwise by each tier's rank in its own policy's support
  priority (docs/whatif.md).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from grader.core.atrisk import drops_on
from grader.core.clock import local_day
from grader.core.eventfile import Line
from grader.core.grading import Grading
from grader.core.metrics import MetricView
from grader.core.policy import Policy
from grader.core.rational import round2
from grader.core.scoring import ScoreMemo, earned_tier, rescore
from grader.core.state import CustomerState, TierState
from grader.offline.outputs import write_whole
from grader.offline.replay import AT_RISK_HEADER, ReplayResult, at_risk_row, replay

Row = tuple[str, str, str, str]  # customer_id, policy, tier, score
OUTPUTS = ("matrix.csv", "movers.csv", "at-risk.csv")  # in --out
RISK_DAYS = (30, 90)  # the report counts the tiers that would drop within these days


@dataclass(frozen=True)
class WhatIf:
    """The two gradings side by side."""

    current: Policy
    candidate: Policy
    tiers: dict[str, tuple[str, str, str, str]]  # customer -> cur tier, cand tier, scores
    results: tuple[ReplayResult, ...] | None = None  # None: from live state
    notes: tuple[str, ...] = ()  # what the terminal must say up front
    at_risk: bytes = b""  # the candidate's at-risk.csv rows (without header)
    # For each tier that would drop, under the current policy and under the candidate:
    # the days from the customer's as_of date to its drops_on.
    days_ahead: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def at_risk_within(self) -> tuple[dict[int, int], dict[int, int]]:
        """How many customers' tiers would drop within each of RISK_DAYS days, under
        the current policy and under the candidate."""
        cur, cand = ({n: sum(d <= n for d in ahead) for n in RISK_DAYS}
                     for ahead in self.days_ahead)
        return cur, cand

    def matrix(self) -> list[tuple[str, str, int]]:
        counts = Counter((cur, cand) for cur, cand, _s, _t in self.tiers.values())
        order_cur = {t: i for i, t in enumerate(self.current.tier_names)}
        order_cand = {t: i for i, t in enumerate(self.candidate.tier_names)}
        return [(cur, cand, n) for (cur, cand), n in
                sorted(counts.items(), key=lambda kv: (order_cur.get(kv[0][0], 99),
                                                       order_cand.get(kv[0][1], 99)))]

    def movers(self) -> list[tuple[str, str, str, str, str]]:
        return [(c, cur, cand, s_cur, s_cand)
                for c, (cur, cand, s_cur, s_cand) in sorted(self.tiers.items()) if cur != cand]

    def populations(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        cur = Counter(t[0] for t in self.tiers.values())
        cand = Counter(t[1] for t in self.tiers.values())
        return ([(t, cur.get(t, 0)) for t in self.current.tier_names],
                [(t, cand.get(t, 0)) for t in self.candidate.tier_names])

    def directions(self) -> dict[str, int]:
        """How many customers go up, down or stay under the candidate."""
        shared = set(self.current.tier_names) == set(self.candidate.tier_names)
        if shared:
            order = {t: i for i, t in enumerate(self.candidate.tier_names)}

            def ranks(cur: str, cand: str) -> tuple[int, int]:
                return order[cur], order[cand]
        else:
            cur_rank = {t: i for i, t in enumerate(self.current.support_priority)}
            cand_rank = {t: i for i, t in enumerate(self.candidate.support_priority)}

            def ranks(cur: str, cand: str) -> tuple[int, int]:
                return cur_rank[cur], cand_rank[cand]
        out = {"up": 0, "down": 0, "same": 0}
        for cur, cand, _s, _t in self.tiers.values():
            before, after = ranks(cur, cand)
            out["up" if after < before else "down" if after > before else "same"] += 1
        return out


def what_if(lines: list[Line], as_of: int, current: Policy, candidate: Policy,
            now_us: int, workers: int | None = None) -> WhatIf:
    """Grade ``lines`` under each policy, as `grader replay` does.

    One pass (the lines parsed once, each customer graded under each policy)
    unless both policies have one name and different tiers: an override's
    tier is then valid under one only, so each gets a replay of its own.
    """
    grading, other = Grading((current,)), Grading((candidate,))
    if current.name == candidate.name and current.tier_names != candidate.tier_names:
        results = (replay(lines, as_of, grading, now_us, workers=workers),
                   replay(lines, as_of, other, now_us, workers=workers))
        cur = {c: (t, s) for c, _p, t, s in results[0].tiers}
        cand = {c: (t, s) for c, _p, t, s in results[1].tiers}
        tiers = {c: (cur[c][0], cand[c][0], cur[c][1], cand[c][1]) for c in cur if c in cand}
        return WhatIf(current, candidate, tiers, results, at_risk=results[1].at_risk,
                      days_ahead=(_days_ahead(results[0].at_risk, as_of, current),
                                  _days_ahead(results[1].at_risk, as_of, candidate)))
    both = replay(lines, as_of, grading, now_us, workers=workers, also=(other,))
    rows = both.tiers  # per customer: its row under current, then under candidate
    tiers = {c: (t, t2, s, s2) for (c, _p, t, s), (c2, _p2, t2, s2) in zip(rows[::2], rows[1::2],
                                                                          strict=True)
             if c == c2}
    assert len(tiers) * 2 == len(rows), "each graded customer has one row under each policy"
    return WhatIf(current, candidate, tiers, (both,), at_risk=both.also_at_risk,
                  days_ahead=(_days_ahead(both.at_risk, as_of, current),
                              _days_ahead(both.also_at_risk, as_of, candidate)))


def _days_ahead(rows: bytes, as_of: int, policy: Policy) -> tuple[int, ...]:
    """The days from the as_of date to drops_on of each at-risk.csv row."""
    today = date.fromordinal(local_day(as_of, policy.timezone))
    return tuple((date.fromisoformat(row[3]) - today).days
                 for row in csv.reader(io.StringIO(rows.decode("utf-8"), newline="")))


def live_refusal(current: Policy, candidate: Policy, active: Grading) -> str | None:
    """Why the live state cannot grade ``candidate`` exactly, if it cannot at all."""
    kept = dict(active.longest_window_by_tz)
    if current.name not in active.signature:
        return f"--current {current.name} is not one of the workers' policies (policies setting)"
    if candidate.timezone not in kept:
        return (f"--candidate {candidate.name} counts months in {candidate.timezone}, which "
                "the workers' state does not keep (their policies' time zones: "
                f"{', '.join(kept)})")
    if candidate.longest_window > kept[candidate.timezone]:
        return (f"--candidate {candidate.name} looks back {candidate.longest_window} months; "
                f"the workers' state keeps {kept[candidate.timezone]}: use a history file")
    return None


def live_what_if(states: list[CustomerState], current: Policy,
                 candidate: Policy) -> WhatIf:
    """The candidate's tiers from each customer's current state, as of its own ``as_of``:
    the tier the score earns (or a pin), next to the live tier under ``current``."""
    tiers = {}
    rows: list[str] = []
    ahead: tuple[list[int], list[int]] = ([], [])
    for state in sorted(states, key=lambda s: s.customer_id):
        live = state.tiers.get(current.name)
        if live is None:
            continue  # not graded
        view = MetricView(state, candidate.timezone)
        memo = ScoreMemo(candidate)
        value = rescore(candidate, view, memo)
        pinned = state.pinned_tier(candidate.name)
        tier = pinned if pinned in candidate.tier_names else earned_tier(candidate, value)
        tiers[state.customer_id] = (live.tier, tier or "", str(round2(live.score)),
                                    str(round2(value)))
        _live_risk(state, current, candidate, TierState(tier or "", value, 0, state.as_of,
                                                        pinned is not None), rows, ahead)
    notes: tuple[str, ...] = ()
    if candidate.downgrade_margin[0] != 0 or candidate.min_days_in_tier:
        notes = (f"note: {candidate.name} v{candidate.version} has downgrade rules; from the "
                 "state, each customer gets the tier its score earns, not the tier the rules' "
                 "path would keep",)
    return WhatIf(current, candidate, tiers, None, notes, "".join(rows).encode("utf-8"),
                  (tuple(ahead[0]), tuple(ahead[1])))


def _live_risk(state: CustomerState, current: Policy, candidate: Policy, held: TierState,
               rows: list[str], ahead: tuple[list[int], list[int]]) -> None:
    """Add the customer's at-risk figures: under ``current`` from its live tier, under
    ``candidate`` from the tier ``held`` it would have (as if it had just been given)."""
    live = state.tiers
    for i, (policy, tiers) in enumerate(((current, live), (candidate, {candidate.name: held}))):
        state.tiers = tiers
        try:
            day, to_tier = drops_on(state, policy)
        finally:
            state.tiers = live
        if day is None or to_tier is None:
            continue
        ahead[i].append(day.toordinal() - local_day(state.as_of, policy.timezone))
        if i:
            rows.append(at_risk_row(state.customer_id, policy.name, held.tier, day, to_tier))


def write(result: WhatIf, out: Path) -> None:
    """``matrix.csv``, ``movers.csv`` and (from a file) ``at-risk.csv`` in ``out``
    (created if needed), each whole or not at all (grader.offline.outputs)."""
    matrix = _csv([("current_tier", "candidate_tier", "customers"), *result.matrix()])
    movers = _csv([("customer_id", "current_tier", "candidate_tier", "current_score",
                    "candidate_score"), *result.movers()])
    files: dict[str, tuple[bytes, ...]] = {"matrix.csv": (matrix.encode(),),
                                           "movers.csv": (movers.encode(),)}
    files["at-risk.csv"] = (AT_RISK_HEADER, result.at_risk)
    write_whole(out, files)


def _csv(rows: list[tuple[object, ...]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows(rows)
    return text.getvalue()


def report(result: WhatIf) -> str:
    """What the terminal shows: the matrix, the populations, the moves."""
    from rich.console import Console
    from rich.table import Table

    cur, cand = result.current, result.candidate
    name_cur = f"{cur.name} v{cur.version}"
    name_cand = f"{cand.name} v{cand.version}"
    counts = {(a, b): n for a, b, n in result.matrix()}
    table = Table(title=f"customers: {name_cur} (rows) -> {name_cand} (columns)",
                  title_justify="left")
    table.add_column(name_cur)
    for tier in cand.tier_names:
        table.add_column(tier, justify="right")
    for tier in cur.tier_names:
        table.add_row(tier, *(str(counts.get((tier, t), "")) for t in cand.tier_names))
    populations = result.populations()
    moves = result.directions()
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    for note in result.notes:
        console.print(note)
    console.print(table)
    console.print(f"population {name_cur}: " + ", ".join(f"{t} {n}" for t, n in populations[0]))
    console.print(f"population {name_cand}: "
                  + ", ".join(f"{t} {n}" for t, n in populations[1]))
    console.print(f"up {moves['up']}, down {moves['down']}, same {moves['same']} "
                  f"({len(result.tiers)} customers)")
    for name, within in zip((name_cur, name_cand), result.at_risk_within(), strict=True):
        console.print(f"at risk {name}: " + ", ".join(
            f"{within[n]} within {n} days" for n in RISK_DAYS))
    output: io.StringIO = console.file  # type: ignore[assignment]
    return output.getvalue()
