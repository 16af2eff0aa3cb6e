"""grader: a streaming customer tier grader. See README.md and docs/."""

from __future__ import annotations

__version__ = "0.1.0"


def core_kind() -> str:
    """How this process runs the grading core: "compiled" (mypyc, built into the wheel by
    setup.py) or "pure Python"."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from grader.core import grading as core

    where = core.__file__ or ""
    return "compiled" if where.endswith(tuple(EXTENSION_SUFFIXES)) else "pure Python"
