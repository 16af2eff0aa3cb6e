"""Which `grader` a bench runs, and which grading core that one has.

Every bench that starts grader processes takes ``--grader PATH``: the `grader`
script of an installed copy (e.g. a venv with the compiled wheel: ``pip wheel .``
then ``pip install -c constraints.txt grader-*.whl``). Without it the bench runs
this checkout (``python -m grader``, pure Python unless built with GRADER_MYPYC=1).
Each bench prints the core it measured, as that command's ``--version`` says it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--grader`` option."""
    parser.add_argument("--grader", type=Path, default=None,
                        help="the grader script to measure (an installed copy); "
                             "default: this checkout's (python -m grader)")


def command(given: Path | None) -> list[str]:
    """The command that starts grader: the given script, or this checkout's module."""
    return [str(given)] if given else [sys.executable, "-m", "grader"]


def core(given: Path | None) -> str:
    """Which core that grader runs, "compiled" or "pure Python", from its --version."""
    out = subprocess.run([*command(given), "--version"], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"\(core: ([^)]*)\)", out)
    if found is None:
        raise SystemExit(f"{' '.join(command(given))} --version did not say its core: {out!r}")
    return found.group(1)
