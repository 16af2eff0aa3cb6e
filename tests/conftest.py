"""Shared helpers: build events and gradings without files or services."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from grader import core_kind
from grader.core.clock import parse_instant
from grader.core.events import Event, validate
from grader.core.grading import Grading
from grader.core.policy import Policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "grader" / "policies"  # the presets shipped as package data
_ids = itertools.count(1)
#: The common fields of a valid event, and the other fields of a valid event of each type
#: (under abc-100, currency CNY), for tests that change one field at a time.
BASE = {"event_id": "e1", "customer_id": "C1", "occurred_at": "2026-03-01T09:30:00+08:00"}
VALID = {
    "sale": {"amount": "100.50", "currency": "CNY", "invoice_id": "I1", "gross_profit": "10"},
    "refund": {"amount": 5, "currency": "CNY", "invoice_id": "I1"},
    "payment": {"amount": "100.50", "currency": "CNY", "invoice_id": "I1"},
    "interaction": {"kind": "referral", "value": 2},
    "assessment": {"indicator": "C1", "score": 7.5, "assessor": "kam"},
    "override": {"action": "pin", "policy": "abc-100", "tier": "A", "reason": "r", "actor": "a"},
    "ticket_opened": {"ticket_id": "T1", "queue": "vip", "subject": "s"},
    "ticket_closed": {"ticket_id": "T1"},
}


def pytest_report_header() -> str:
    """Which core this run tests: this checkout's, pure Python unless built with GRADER_MYPYC=1
    (the installed wheel's compiled core is tested in tests/integration/test_installed.py)."""
    return f"grader core: {core_kind()}"


def preset(name: str) -> Policy:
    """A shipped preset policy."""
    return load_policy(PRESETS / f"{name}.toml")


def policy_text(text: str, name: str = "test") -> Policy:
    """A policy from TOML text."""
    return parse_policy(text, source=f"{name}.toml", default_name=name)


def grading(*names: str) -> Grading:
    """A Grading of presets (default abc-100)."""
    return Grading(tuple(preset(n) for n in names or ("abc-100",)))


def event(
    etype: str, when: str, customer: str = "C1", grading_: Grading | None = None, **fields: Any
) -> Event:
    """A valid event of ``etype`` at local Shanghai time ``when`` (or a full timestamp)."""
    occurred = when if ("+" in when[10:] or when.endswith("Z")) else f"{when}+08:00"
    if len(occurred) == len("2026-01-01+08:00"):
        occurred = occurred.replace("+08:00", "T12:00:00+08:00")
    obj: dict[str, Any] = {
        "event_id": fields.pop("event_id", f"e{next(_ids):06d}"),
        "type": etype,
        "customer_id": customer,
        "occurred_at": occurred,
    }
    if etype in ("sale", "refund", "payment"):
        obj["currency"] = fields.pop("currency", "CNY")
    obj.update(fields)
    g = grading_ or grading("abc-100", "sabcd-weighted", "stars")
    return validate(obj, g.parse_context())


def at(text: str) -> int:
    """Microseconds of a timestamp; a bare date means local noon in Shanghai."""
    if len(text) == 10:
        text += "T12:00:00+08:00"
    return parse_instant(text)


@pytest.fixture
def make_event() -> Callable[..., Event]:
    return event


def in_ci() -> bool:
    """Whether this is a CI run: ``CI`` set to anything non-empty (``true``, ``1``, ...).

    In CI a test that needs a service or tool it cannot have fails; elsewhere it
    is skipped saying why (STYLE.md: never silently skipped in CI). Every such
    guard asks this function; tests/unit/test_ci_guards.py checks that none
    reads ``CI`` itself.
    """
    return bool(os.environ.get("CI"))


@contextmanager
def mounted(folder: Path, options: str) -> Iterator[None]:
    """A tmpfs on ``folder`` (mounting needs root: skipped saying why elsewhere, a
    failure under CI), unmounted lazily afterwards whatever happens (a process the
    test killed may still hold files there)."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
