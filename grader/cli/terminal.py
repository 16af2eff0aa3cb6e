"""Progress on stderr for long commands: shown on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable


def progress(what: str) -> Callable[[int], None] | None:
    """A callback printing ``{what}: N lines ...`` over itself, or None if stderr is not a tty."""
    if not sys.stderr.isatty():
        return None

    def show(lines: int) -> None:
        sys.stderr.write(f"\r{what}: {lines:,} lines")
        sys.stderr.flush()

    return show


def clear_progress() -> None:
    """Erase the progress line (call only if ``progress`` returned a callback)."""
    sys.stderr.write("\r\033[K")
    sys.stderr.flush()
