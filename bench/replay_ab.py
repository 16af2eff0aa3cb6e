"""Time `grader replay` of two source trees alternately, for A/B comparisons on a noisy machine.

    python bench/replay_ab.py OLD_TREE NEW_TREE EVENTS.jsonl [--runs 6]

Each tree is a checkout of this repository (e.g. `git worktree add /tmp/old
HEAD~3`); its code is run with `python -m grader` from that directory, with
this interpreter. Prints each tree's wall times, sorted, and their median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AS_OF = "2026-11-22T00:00:00+08:00"
PRESETS = ("abc-100", "sabcd-weighted", "stars")


def run(tree: Path, events: Path, out: Path) -> float:
    """Wall seconds of one replay with ``tree``'s code."""
    cmd = [sys.executable, "-m", "grader", "replay", str(events), "--as-of", AS_OF,
           "--out", str(out)]
    for name in PRESETS:
        cmd += ["--policy", name]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    """Alternate, then print."""
    parser = argparse.ArgumentParser(description="A/B timing of grader replay.")
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("events", type=Path)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    times: dict[Path, list[float]] = {args.old: [], args.new: []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.runs):
            for tree in times:
                times[tree].append(run(tree.resolve(), args.events.resolve(), Path(out)))
    for tree, walls in times.items():
        shown = " ".join(f"{t:.2f}" for t in sorted(walls))
        print(f"{tree}: {shown}  median {statistics.median(walls):.2f} s")


if __name__ == "__main__":
    main()
