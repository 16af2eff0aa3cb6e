"""Benchmark `grader replay` as a whole process on a realistic synthetic file.

    python bench/replay_bench.py [--events 200000] [--customers 30000] [--runs 3]
                                 [--grader PATH]

Generates the events file once (bench/generate_events.py, seeded), then runs
`grader replay` with all three presets as a separate process, several times,
and prints events/s (best and median), wall time and peak memory (the largest
max RSS of the replay process or its forked graders). Figures depend on the
machine: report them with its name, or as ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
PRESETS = ("abc-100", "sabcd-weighted", "stars")


def run_once(grader: list[str], events: Path, out: Path,
             workers: int | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `grader replay` process."""
    cmd = [
        *grader,
        "replay",
        str(events),
        "--as-of",
        AS_OF,
        "--out",
        str(out),
    ]
    for name in PRESETS:
        cmd += ["--policy", name]
    if workers:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main() -> None:
    """Generate, run, print."""
    parser = argparse.ArgumentParser(description="Benchmark grader replay.")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    graderexe.add_argument(parser)
    args = parser.parse_args()
    grader = graderexe.command(args.grader)
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        with events.open("wb") as handle:
            for line in generate(args.customers, args.events, seed=1, as_of=AS_OF):
                handle.write(line + b"\n")
        walls, peak = [], 0
        for i in range(args.runs):
            wall, rss = run_once(grader, events, Path(tmp) / f"out{i}", args.workers)
            walls.append(wall)
            peak = max(peak, rss)
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
    print(f"grader: {' '.join(grader)}, core: {graderexe.core(args.grader)}")
    print(
        f"replay {args.events} events, {args.customers} customers, "
        f"presets {', '.join(PRESETS)}, workers {args.workers or cpus}"
    )
    print(
        f"wall s: best {min(walls):.2f} median {statistics.median(walls):.2f} over {args.runs} runs"
    )
    print(
        f"events/s: best {args.events / min(walls):,.0f} "
        f"median {args.events / statistics.median(walls):,.0f}"
    )
    print(f"peak RSS: {peak / 1024:.0f} MiB (largest single process of the runs)")


if __name__ == "__main__":
    main()
