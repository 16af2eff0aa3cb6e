"""What the worker says about messages it did not apply, without flooding its log.

Each rejected message gets one warning line naming where it came from and why
(topic, partition, offset, code; never its payload or an amount), up to
``burst`` lines per interval. Past that, and for expired events and for
duplicates whose content differs from the event applied under the same id,
one summary line per interval gives the counts (docs/streaming.md, "Bad
input").
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

INTERVAL = 60.0  # seconds between two summary lines
BURST = 100  # rejection lines per interval before they are only counted


class Notices:
    """Rate-limited warnings about rejected, expired and conflicting messages."""

    def __init__(self, log: logging.Logger, *, interval: float = INTERVAL, burst: int = BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self._since = now
        self._lines = 0  # rejection lines logged in this interval
        self._unlogged: Counter[str] = Counter()  # rejections only counted, by code
        self._expired = 0
        self._conflicts = 0
        self._example: str | None = None  # one conflicting duplicate, for the summary

    def rejected(self, topic: str, partition: int, offset: int, code: str) -> None:
        """A message went to dead letters."""
        if self._lines < self._burst:
            self._lines += 1
            self._log.warning("rejected %s[%d]@%d: %s", topic, partition, offset, code)
        else:
            self._unlogged[code] += 1

    def expired(self) -> None:
        """An event older than its customer's horizon was not applied."""
        self._expired += 1

    def conflict(self, topic: str, partition: int, offset: int) -> None:
        """A duplicate event_id whose content differs from the event applied."""
        self._conflicts += 1
        if self._example is None:
            self._example = f"{topic}[{partition}]@{offset}"

    def flush(self) -> None:
        """Log the summary of the interval if it is over and anything happened."""
        now = self._clock()
        if now - self._since < self._interval:
            return
        parts = []
        if self._expired:
            parts.append(f"{self._expired} expired events not applied")
        if self._conflicts:
            parts.append(f"{self._conflicts} duplicates whose content differs from the event "
                         f"applied under their id (e.g. {self._example}), not applied")
        if self._unlogged:
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(self._unlogged.items()))
            parts.append(f"{self._unlogged.total()} more rejected messages ({codes})")
        if parts:
            self._log.warning("in the last %.0f s: %s", now - self._since, "; ".join(parts))
        self._reset(now)
