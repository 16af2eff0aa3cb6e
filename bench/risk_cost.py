"""The CPU the tier at risk costs the worker, in-process: its Processor with and without.

    python bench/risk_cost.py [--events 40000] [--customers 3000] [--input FILE]
                              [--batch 1000] [--policies abc-100,sabcd-weighted,stars]
                              [--rounds 3] [--case steady|backlog|both] [--profile FILE]
                              [--callgrind [--parts]]

The worker's ``Processor`` (grader/stream/processor.py) grades the same generated
file (bench/generate_events.py, routed and partitioned as the worker reads
it) in batches of ``--batch`` messages, on a memory table store, into a sink
that drops the outputs: once with the tier at risk (``at_risk=True``) and
once without, alternated (with first in odd rounds), each in a fresh
Processor, and the CPU of each run is ``time.process_time()`` (this process
only: no broker, no Faust, no network). Two cases:

- ``steady``: no batch is behind (``Processor.behind`` answers False), each
  batch refreshes the tier at risk of the customers it stored (the worker
  keeping up with its input);
- ``backlog``: every message is stamped 1970, so every batch is behind and
  defers the refresh (risk_stale); the deferred refreshes are then run to the
  end (``refresh_stale`` until none is left) and counted.

Printed: each run's CPU seconds, and per case the median ratio with/without
and the cost (ratio - 1). The target (issue 23) is a cost of at most 10%.
``--profile FILE`` writes a cProfile of one run with the tier at risk
(``--case``, steady for both) to FILE, for ``python -m pstats``.

``--callgrind`` counts instructions instead (valgrind's callgrind, stable on a
loaded machine, about 50 times slower): one process per case and system, each
less a process that only reads and routes the lines; use a smaller input
(``--events 10000 --customers 1000``, or ``--input`` a file written by
bench/generate_events.py). ``--parts`` splits the cost: two more processes per
case with the tier at risk but a part of it left out, ``restored`` (the
refresh computes nothing: each deferred customer is only marked fresh and
stored again) and ``unwalked`` (every drops_on is answered "never" without a
walk: the refresh's bookkeeping, snapshot and store, no walk); so the walk is
with - unwalked, the bookkeeping unwalked - restored, the store again
restored - without. Set PYTHONHASHSEED (e.g. 0) for counts that repeat to the
instruction.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate_events import generate  # noqa: E402
from grader import core_kind  # noqa: E402
from grader.core import risk  # noqa: E402
from grader.core.atrisk import NO_RISK  # noqa: E402
from grader.core.grading import Grading  # noqa: E402
from grader.core.policy import load_policy  # noqa: E402
from grader.core.state import CustomerState  # noqa: E402
from grader.core.step import Incoming, Output  # noqa: E402
from grader.core.topology import partition_of  # noqa: E402
from grader.kafka.produce import route  # noqa: E402
from grader.stream.processor import Processor  # noqa: E402
from grader.stream.tables import MemoryTableStore  # noqa: E402

AS_OF = "2026-11-22T00:00:00+08:00"
PREFIX = "rc."
PARTITIONS = 4
PRESETS = ROOT / "grader" / "policies"


class DroppingSink:
    """Publishes nothing; counts the outputs."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, outputs: Sequence[Output]) -> None:
        self.count += len(outputs)


def messages(lines: list[bytes], stamp: float) -> list[Incoming]:
    """The routable lines as the worker would consume them (offsets per partition)."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for line in lines:
        where = route(line)
        if not isinstance(where, tuple):
            continue
        topic, key = PREFIX + where[0], where[1]
        partition = partition_of(key, PARTITIONS)
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(Incoming(topic, partition, offset, key, line, stamp))
    return out


def run(grading: Grading, msgs: list[Incoming], batch: int, at_risk: bool,
        backlog: bool) -> tuple[float, int]:
    """CPU seconds of one Processor grading ``msgs`` (and its deferred refreshes)."""
    sink = DroppingSink()
    proc = Processor(grading, MemoryTableStore(), MemoryTableStore(), sink,
                     PREFIX + "ticks", PARTITIONS, at_risk=at_risk)
    if not backlog:  # as if each batch were read as soon as it was written
        proc.behind = lambda _messages: False  # type: ignore[method-assign,assignment]

    async def go() -> None:
        for start in range(0, len(msgs), batch):
            await proc.on_batch(msgs[start:start + batch])
        proc.behind_at = -1e9  # the backlog is over: refresh what it deferred
        while await proc.refresh_stale():
            pass
        assert not proc.stale

    gc.collect()
    started = time.process_time()
    asyncio.run(go())
    return time.process_time() - started, sink.count


PARTS = ("restored", "unwalked")  # --parts: runs with a part of the tier at risk left out


def leave_out(part: str) -> None:
    """Leave a part of the tier at risk out of this process (--parts)."""
    if part == "restored":
        def marked(_self: Processor, state: CustomerState, outputs: list[Output], _now: int,
                   _force: bool = False) -> list[Output]:
            state.risk_stale = False
            return outputs
        Processor.with_risk = marked  # type: ignore[method-assign,assignment]
    else:
        risk.kept_drops_on = lambda *_args: NO_RISK  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--input", help="read the lines from this file (e.g. written by "
                        "bench/generate_events.py) instead of generating them")
    parser.add_argument("--policies", default="abc-100,sabcd-weighted,stars")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", choices=("steady", "backlog", "both"), default="both")
    parser.add_argument("--profile", help="write a cProfile of a run with it here")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions (valgrind) instead of CPU seconds")
    parser.add_argument("--parts", action="store_true",
                        help="with --callgrind: split the cost into the store again, the "
                        "bookkeeping and the walk")
    parser.add_argument("--single", choices=("setup", "with", "without", *PARTS),
                        help=argparse.SUPPRESS)  # one run of --case, for --callgrind
    args = parser.parse_args()
    if args.callgrind:
        callgrind(args)
        return
    logging.basicConfig(level=logging.ERROR)  # not the notices of rejected lines
    grading = Grading(tuple(load_policy(PRESETS / f"{n}.toml")
                            for n in args.policies.split(",")))
    if args.input:
        lines = Path(args.input).read_bytes().splitlines()
    else:
        lines = list(generate(args.customers, args.events, 1, AS_OF))
    msgs = messages(lines, 0.0)
    print(f"machine: {platform.platform()}, {platform.python_implementation()} "
          f"{platform.python_version()}, core {core_kind()}")
    source = args.input or f"{args.events:,} lines, {args.customers:,} customers"
    print(f"{len(msgs):,} input messages ({source}), policies {args.policies}, "
          f"batches of {args.batch:,}")
    if args.single:
        if args.single in PARTS:
            leave_out(args.single)
        if args.single != "setup":
            run(grading, msgs, args.batch, args.single != "without", args.case == "backlog")
        return
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(grading, msgs, args.batch, True, args.case == "backlog")
        profiler.disable()
        profiler.dump_stats(args.profile)
        print(f"profile written to {args.profile}")
        return
    cases = ("steady", "backlog") if args.case == "both" else (args.case,)
    for case in cases:
        backlog = case == "backlog"
        run(grading, msgs, args.batch, True, backlog)  # warm-up (imports, caches), not counted
        withs: list[float] = []
        withouts: list[float] = []
        for n in range(args.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for at_risk in order:
                cpu, outputs = run(grading, msgs, args.batch, at_risk, backlog)
                (withs if at_risk else withouts).append(cpu)
                print(f"  {case} round {n + 1} {'with' if at_risk else 'without'}: "
                      f"{cpu:.3f} s CPU, {outputs:,} outputs", flush=True)
        ratios = [w / o for w, o in zip(withs, withouts, strict=True)]
        ratio = statistics.median(ratios)
        print(f"{case}: with {statistics.median(withs):.3f} s, without "
              f"{statistics.median(withouts):.3f} s (medians); ratio per round "
              f"{' / '.join(f'{r:.3f}' for r in ratios)}; median {ratio:.3f}: "
              f"the tier at risk costs {100 * (ratio - 1):+.1f}% CPU", flush=True)


def instructions(args: argparse.Namespace, case: str, single: str) -> int:
    """The instructions (callgrind's "Collected") of one process: set-up, one run."""
    command = [sys.executable, __file__, "--events", str(args.events), "--customers",
               str(args.customers), "--batch", str(args.batch), "--policies", args.policies,
               "--case", case, "--single", single]
    if args.input:
        command += ["--input", args.input]
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["valgrind", "--tool=callgrind",
                               f"--callgrind-out-file={tmp}/callgrind.out", *command],
                              capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def callgrind(args: argparse.Namespace) -> None:
    """--callgrind: per case, the instructions of a run with and without the tier at
    risk, each less those of the set-up alone (generating and routing the lines)."""
    print(f"machine: {platform.platform()}, {platform.python_implementation()} "
          f"{platform.python_version()}, core {core_kind()}; instructions counted by "
          f"callgrind, {args.input or f'{args.events:,} lines, {args.customers:,} customers'}"
          f", policies {args.policies}, batches of {args.batch:,}", flush=True)
    setup = instructions(args, "steady", "setup")
    print(f"  set-up alone (reading and routing the lines): {setup:,} instructions",
          flush=True)
    cases = ("steady", "backlog") if args.case == "both" else (args.case,)
    for case in cases:
        counts = {}
        for single in ("with", "without", *(PARTS if args.parts else ())):
            counts[single] = instructions(args, case, single) - setup
            print(f"  {case} {single}: {counts[single]:,} instructions", flush=True)
        without = counts["without"]
        ratio = counts["with"] / without
        print(f"{case}: ratio {ratio:.4f}: the tier at risk costs {100 * (ratio - 1):+.1f}% "
              f"instructions", flush=True)
        if args.parts:
            parts = {"storing again": counts["restored"] - without,
                     "bookkeeping and snapshot": counts["unwalked"] - counts["restored"],
                     "the walks": counts["with"] - counts["unwalked"]}
            print(f"{case}: of which " + ", ".join(
                f"{name} {100 * n / without:+.1f}%" for name, n in parts.items()), flush=True)


if __name__ == "__main__":
    main()
