"""The size of a customer's stored state (issue 22), as the worker stores it.

    python bench/state_bench.py [--customers 20000] [--events-per-customer 8.5]
                                [--months 12] [--policies abc-100,sabcd-weighted,stars]

1. Events: bench/generate_events.py (about a year of retail activity, about
   ``--events-per-customer`` distinct events per customer on average, log-normal
   sizes; some customers get none, so about 10 a customer with a state), no
   re-sends, no bad lines; each event id replaced by a UUID (as
   producers make them: ``str(uuid.uuid4())``, drawn from a seeded generator).
2. The worker's path: each event, in arrival order, through
   ``grader.core.step.handle_event`` (one partition), a tick at the end
   (``handle_tick``), then the tier-at-risk refresh (``with_risk``).
3. Each final state encoded by the codec: the one the worker writes now
   (``grader.codec.dump_state``) and, for the contrast, the previous one
   (version 5, ``grader.codec.dump_state_v5``), in the same run.

Prints the distribution of the encoded size (mean, median, p90, p99, max) and
a breakdown of the mean: what each part of the state adds (the size of the
whole state minus the size of the state with that part empty).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from copy import copy
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate_events import generate  # noqa: E402
from grader.core import codec  # noqa: E402
from grader.core.clock import NEVER, parse_instant  # noqa: E402
from grader.core.events import TOPIC_OF_TYPE  # noqa: E402
from grader.core.grading import Grading  # noqa: E402
from grader.core.state import CustomerState  # noqa: E402
from grader.core.step import Incoming, handle_event, handle_tick, with_risk  # noqa: E402
from grader.settings import resolve_policy  # noqa: E402

AS_OF = "2026-11-22T00:00:00+08:00"
NOW_US = parse_instant(AS_OF) + 86_400_000_000  # the wall clock: a day after AS_OF


def uuid_events(customers: int, per_customer: float, months: int,
                seed: int) -> list[tuple[str, bytes]]:
    """The generated lines and their topics, each event id replaced by a UUID."""
    rng = random.Random(seed)
    ids: dict[str, str] = {}
    out = []
    for line in generate(customers, round(customers * per_customer), seed=seed, as_of=AS_OF,
                         months=months, duplicates=0.0, bad=0.0):
        record = orjson.loads(line)
        old = record["event_id"]
        if old not in ids:
            ids[old] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        record["event_id"] = ids[old]
        out.append((TOPIC_OF_TYPE[record["type"]], orjson.dumps(record)))
    return out


def final_states(lines: list[tuple[str, bytes]], grading: Grading) -> list[CustomerState]:
    """Every customer's state after the worker's path (module docstring, step 2)."""
    states: dict[bytes, CustomerState] = {}
    for offset, (topic, value) in enumerate(lines):
        msg = Incoming(topic, 0, offset, None, value)
        outcome = handle_event(msg, states.get, NEVER, grading, NOW_US, 1)
        if outcome.status not in ("applied", "expired", "duplicate"):
            raise SystemExit(f"event {offset}: {outcome.status} {outcome.code}")
        if outcome.state is not None:
            states[outcome.state.customer_id.encode()] = outcome.state
    as_of = parse_instant(AS_OF)
    for state in states.values():
        handle_tick(state, as_of, grading, NOW_US)
        with_risk(state, [], grading, 30, NOW_US)
    return list(states.values())


def _emptied(state: CustomerState, fields: tuple[str, ...]) -> CustomerState:
    other = copy(state)
    for name in fields:
        value = getattr(state, name)
        setattr(other, name, None if name == "blacklist" else type(value)())
    return other


PARTS: dict[str, tuple[str, ...]] = {
    "dedup (seen ids, their times and digests)": ("seen", "digests"),
    "invoices (for payment days)": ("invoices",),
    "monthly aggregates (sales, interactions)": ("months", "interactions"),
    "assessments, pins, blacklist, audit": ("assessments", "pins", "blacklist", "audit"),
    "tickets": ("tickets",),
    "tiers": ("tiers",),
    "tier at risk": ("risk",),
    "policies graded under (name, version, sha256)": ("graded_under",),
}


def percentile(sizes: list[int], q: float) -> int:
    return sizes[min(len(sizes) - 1, int(q * len(sizes)))]


def report(name: str, dump: Callable[[CustomerState], bytes], states: list[CustomerState]) -> float:
    """Print the distribution and breakdown of ``dump``'s sizes; return the mean."""
    started = time.process_time()
    sizes = sorted(len(dump(s)) for s in states)
    spent = time.process_time() - started
    mean = statistics.fmean(sizes)
    typical = [len(dump(s)) for s in states if 9 <= len(s.seen) <= 11]
    print(f"{name}: mean {mean:,.0f} bytes, median {percentile(sizes, 0.5):,}, "
          f"p90 {percentile(sizes, 0.9):,}, p99 {percentile(sizes, 0.99):,}, "
          f"max {sizes[-1]:,}; total {sum(sizes) / 1e6:,.2f} MB; "
          f"encode {spent / len(states) * 1e6:,.1f} us/state (CPU)")
    print(f"    customers with 9-11 event ids kept ({len(typical):,}): mean "
          f"{statistics.fmean(typical):,.0f} bytes")
    for part, fields in PARTS.items():
        without = statistics.fmean(len(dump(_emptied(s, fields))) for s in states)
        print(f"    {part:<48} {mean - without:7,.1f} bytes ({(mean - without) / mean:5.1%})")
    blobs = [dump(s) for s in states]
    started = time.process_time()
    for blob in blobs:
        codec.load_state(blob)
    spent = time.process_time() - started
    print(f"    decode {spent / len(states) * 1e6:,.1f} us/state (CPU)")
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description="Distribution of stored state sizes.")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--events-per-customer", type=float, default=8.5,
                        help="events generated per customer (some get none: about 10 "
                             "per customer with a state)")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--policies", default="abc-100,sabcd-weighted,stars")
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args()
    grading = Grading(tuple(resolve_policy(p, ROOT / "config")
                                 for p in args.policies.split(",")))
    lines = uuid_events(args.customers, args.events_per_customer, args.months, args.seed)
    states = final_states(lines, grading)
    kept = statistics.fmean(len(s.seen) for s in states)
    print(f"{len(lines):,} events (UUID ids), {len(states):,} customers with a state, "
          f"{kept:.1f} event ids kept per customer on average; policies {args.policies}; "
          f"{args.months} months as of {AS_OF}")
    now = report(f"codec v{codec.VERSION} (written now)", codec.dump_state, states)
    if hasattr(codec, "dump_state_v5") and codec.VERSION != 5:
        before = report("codec v5 (before)", codec.dump_state_v5, states)
        print(f"v{codec.VERSION} / v5: {now / before:.2f}")


if __name__ == "__main__":
    main()
