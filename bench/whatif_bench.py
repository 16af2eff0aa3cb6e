"""`grader whatif` against `grader replay` with the same two policies, on the replay bench file.

    python bench/whatif_bench.py [--events 200000] [--customers 30000] [--runs 3]

Generates bench/replay_bench.py's file (same seed), then runs, alternately,
`grader replay --policy abc-100 --policy stars` and `grader whatif
--current abc-100 --candidate stars` as separate processes, and prints
events/s of each (median over the runs) and their ratio (issue 14's target:
whatif no slower than replay). Report the ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import graderexe  # noqa: E402
from bench.generate_events import generate  # noqa: E402

AS_OF = "2026-11-22T00:00:00+08:00"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark grader whatif against replay.")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    graderexe.add_argument(parser)
    args = parser.parse_args()
    grader = graderexe.command(args.grader)
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        with events.open("wb") as handle:
            for line in generate(args.customers, args.events, seed=1, as_of=AS_OF):
                handle.write(line + b"\n")
        replay_cmd = [*grader, "replay", str(events), "--as-of", AS_OF, "--policy", "abc-100",
                      "--policy", "stars", "--out", str(Path(tmp) / "replay")]
        whatif_cmd = [*grader, "whatif", str(events), "--as-of", AS_OF, "--current",
                      "abc-100", "--candidate", "stars", "--out", str(Path(tmp) / "whatif")]
        replays, whatifs = [], []
        for _ in range(args.runs):
            replays.append(timed(replay_cmd))
            whatifs.append(timed(whatif_cmd))
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
    print(f"grader: {' '.join(grader)}, core: {graderexe.core(args.grader)}")
    print(f"{args.events} events, {args.customers} customers, policies abc-100 and stars, "
          f"{args.runs} runs each, alternating")
    replay_rate = args.events / statistics.median(replays)
    whatif_rate = args.events / statistics.median(whatifs)
    print(f"grader replay: {replay_rate:,.0f} events/s (median wall "
          f"{statistics.median(replays):.2f} s)")
    print(f"grader whatif: {whatif_rate:,.0f} events/s (median wall "
          f"{statistics.median(whatifs):.2f} s)")
    print(f"whatif / replay: {whatif_rate / replay_rate:.2f} (target >= 1.00)")


if __name__ == "__main__":
    main()
